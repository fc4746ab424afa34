//! Commissioning requests in the bus task (`Request::Commission`, issue #24).
//!
//! A request runs in a task of its own ([`Job::run`](crate::commission::gateway::Job)),
//! with the same work functions as direct mode, over a [`ModbusTransport`] whose every
//! exchange (one Modbus request and its reply) is sent back to the bus task
//! ([`Exchange`]). The bus task performs one exchange per turn of its loop, after the
//! polls that are due (its select is biased: they go first), so a long probe or scan is
//! split into single requests between the polls and the devices keep their cadence; the
//! port keeps its one owner. A few jobs may run on a bus at once; their exchanges take
//! turns.

use std::sync::{
    atomic::{AtomicUsize, Ordering::Relaxed},
    Arc,
};

use fieldlink_drivers::modbus::{DriverError, Identification, ModbusTransport, ReadData, Table};
use tokio::sync::{mpsc, oneshot};

use crate::{commission::gateway::Job, model::Bus};

/// Most commissioning requests running on one bus at once; more are refused (busy).
pub(crate) const MAX_JOBS: usize = 4;

/// One Modbus request of a job, for the bus task to perform.
pub(crate) struct Exchange {
    op: Op,
    reply: oneshot::Sender<Result<Done, DriverError>>,
}

enum Op {
    Read {
        unit: u8,
        table: Table,
        addr: u16,
        count: u16,
    },
    Registers {
        unit: u8,
        addr: u16,
        values: Vec<u16>,
        multiple: bool,
    },
    Coils {
        unit: u8,
        addr: u16,
        values: Vec<bool>,
        multiple: bool,
    },
    Identify {
        unit: u8,
    },
}

enum Done {
    Read(ReadData),
    Written,
    Identified(Identification),
}

impl Exchange {
    /// Perform it on the bus's transport and hand the reply to its job.
    pub(crate) async fn run<T: ModbusTransport>(self, t: &mut T) {
        let done = match self.op {
            Op::Read {
                unit,
                table,
                addr,
                count,
            } => t.read(unit, table, addr, count).await.map(Done::Read),
            Op::Registers {
                unit,
                addr,
                values,
                multiple,
            } => t
                .write_registers(unit, addr, &values, multiple)
                .await
                .map(|()| Done::Written),
            Op::Coils {
                unit,
                addr,
                values,
                multiple,
            } => t
                .write_coils(unit, addr, &values, multiple)
                .await
                .map(|()| Done::Written),
            Op::Identify { unit } => t.read_identification(unit).await.map(Done::Identified),
        };
        // The faults of a commissioning exchange are nobody's: the next poll must not
        // count them for its device.
        let _ = t.take_faults();
        let _ = self.reply.send(done);
    }

    /// Answer it without performing it (a bus kind that has no Modbus transport).
    pub(crate) fn refuse(self) {
        let _ = self
            .reply
            .send(Err(DriverError::Protocol("not a Modbus bus".into())));
    }
}

/// The jobs of a bus task and the queue of their exchanges.
pub(crate) struct Jobs {
    tx: mpsc::Sender<Exchange>,
    rx: mpsc::Receiver<Exchange>,
    running: Arc<AtomicUsize>,
}

impl Default for Jobs {
    fn default() -> Jobs {
        // One exchange waits per job at most.
        let (tx, rx) = mpsc::channel(MAX_JOBS);
        Jobs {
            tx,
            rx,
            running: Arc::default(),
        }
    }
}

impl Jobs {
    /// Start `jobs` on `bus` (each in a task of its own); beyond [`MAX_JOBS`] running,
    /// refuse them.
    pub(crate) fn start(&self, jobs: Vec<Job>, bus: &Arc<Bus>, endpoint: impl FnOnce() -> String) {
        if jobs.is_empty() {
            return;
        }
        let endpoint = endpoint();
        for job in jobs {
            if self.running.load(Relaxed) >= MAX_JOBS {
                job.refuse(
                    &format!(
                        "bus `{}` is busy with {MAX_JOBS} commissioning requests; try again",
                        bus.id
                    ),
                    69,
                );
                continue;
            }
            let running = Running::new(&self.running);
            let mut t = Remote {
                tx: self.tx.clone(),
                endpoint: endpoint.clone(),
            };
            let bus = bus.clone();
            tokio::spawn(async move {
                job.run(&mut t, &bus).await;
                drop(running);
            });
        }
    }

    /// The next exchange to perform (never ends: the task holds a sender).
    pub(crate) async fn next(&mut self) -> Exchange {
        loop {
            if let Some(ex) = self.rx.recv().await {
                return ex;
            }
        }
    }
}

/// Counts a job as running while it lives.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(n: &Arc<AtomicUsize>) -> Running {
        n.fetch_add(1, Relaxed);
        Running(n.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Answer the jobs still queued when the bus task ends (shutdown or a reload).
pub(crate) fn refuse(job: Box<Job>, shutdown: bool) {
    let why = if shutdown {
        "the gateway is stopping; not run"
    } else {
        "the bus is restarting for a reload; not run, try again"
    };
    job.refuse(why, 69);
}

/// The transport a job talks through: each request is an [`Exchange`] the bus task
/// performs.
struct Remote {
    tx: mpsc::Sender<Exchange>,
    endpoint: String,
}

impl Remote {
    async fn ask(&self, op: Op) -> Result<Done, DriverError> {
        let gone = || DriverError::NotConnected("the bus task stopped".into());
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Exchange { op, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn unexpected() -> DriverError {
    DriverError::Protocol("unexpected answer from the bus task".into())
}

impl ModbusTransport for Remote {
    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<ReadData, DriverError> {
        match self
            .ask(Op::Read {
                unit,
                table,
                addr,
                count,
            })
            .await?
        {
            Done::Read(d) => Ok(d),
            _ => Err(unexpected()),
        }
    }

    async fn write_registers(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[u16],
        multiple: bool,
    ) -> Result<(), DriverError> {
        let values = values.to_vec();
        match self
            .ask(Op::Registers {
                unit,
                addr,
                values,
                multiple,
            })
            .await?
        {
            Done::Written => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn write_coils(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[bool],
        multiple: bool,
    ) -> Result<(), DriverError> {
        let values = values.to_vec();
        match self
            .ask(Op::Coils {
                unit,
                addr,
                values,
                multiple,
            })
            .await?
        {
            Done::Written => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn read_identification(&mut self, unit: u8) -> Result<Identification, DriverError> {
        match self.ask(Op::Identify { unit }).await? {
            Done::Identified(i) => Ok(i),
            _ => Err(unexpected()),
        }
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
}
