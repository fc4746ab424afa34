//! Reads on demand (`<topic>/get`) in the bus task.
//!
//! They take the commands' road: the router queues them on the bus task's channel, and
//! the actor takes everything queued as one batch as soon as the bus is free (after the
//! exchange in progress, ahead of the polls that are due: its select is biased). The
//! batch's commands run first; then its reads are served per device: every point asked
//! for once, however many requests wait for it, and all of a device's points in one
//! [`Driver::read`] (on Modbus, one merged read within the device's read limits). Each
//! reading is published even when unchanged, as a command's read-back is, and every
//! request is answered on `<topic>/get/result`. Requests still queued at shutdown or when
//! a reload stops the bus are answered too ([`refused`]).

use tracing::{debug, info};

use super::{actor::Cx, schedule::Devices, Driver};
use crate::{
    commands::{get_result_on, Command, Get, GetError, Request},
    publish::Outgoing,
};

/// A batch's commissioning requests (`commission`).
type Jobs = Vec<crate::commission::gateway::Job>;

/// A batch as the actor takes it: its commands, its reads and its commissioning
/// requests, each in the order queued.
pub(super) fn split(batch: Vec<Request>) -> (Vec<Command>, Vec<Get>, Jobs) {
    let mut sets = Vec::new();
    let mut gets = Vec::new();
    let mut jobs = Vec::new();
    for r in batch {
        match r {
            Request::Set(c) => sets.push(c),
            Request::Get(g) => gets.push(g),
            Request::Commission(j) => jobs.push(*j),
        }
    }
    (sets, gets, jobs)
}

/// A point of a device to read, and every request waiting for it.
type Wanted = (usize, Vec<Get>);

/// The reads of one batch, per device (in the order of each device's first request):
/// each point once, with every request waiting for it.
#[derive(Debug, Default)]
struct Pending {
    devices: Vec<(usize, Vec<Wanted>)>,
}

impl Pending {
    fn add(&mut self, g: Get) {
        let points = match self.devices.iter_mut().find(|(d, _)| *d == g.device) {
            Some((_, points)) => points,
            None => {
                self.devices.push((g.device, Vec::new()));
                match self.devices.last_mut() {
                    Some((_, points)) => points,
                    None => return,
                }
            }
        };
        match points.iter_mut().find(|(p, _)| *p == g.point) {
            Some((_, waiting)) => waiting.push(g),
            None => points.push((g.point, vec![g])),
        }
    }
}

/// Serve a batch's reads: one [`Driver::read`] per device, its readings published (even
/// unchanged) and every request answered.
pub(super) async fn serve<D: Driver>(driver: &mut D, cx: &mut Cx, devs: &Devices, gets: Vec<Get>) {
    let mut pending = Pending::default();
    for mut g in gets {
        match locate(&mut g, cx, devs) {
            Ok(()) => pending.add(g),
            Err(e) => cx.push(answer(&g, Err(e))),
        }
    }
    for (d, points) in pending.devices {
        // Shutdown came while an earlier device was read: read nothing more.
        if cx.shutdown.is_shutdown() {
            for g in points.iter().flat_map(|(_, waiting)| waiting) {
                cx.push(answer(g, Err(GetError::ShuttingDown)));
            }
            continue;
        }
        let asked: Vec<usize> = points.iter().map(|(p, _)| *p).collect();
        let device = cx.device(d).id.clone();
        debug!(device = %device, points = asked.len(), "Reading on demand.");
        let mut readings = driver.read(d, &asked, cx).await.into_iter();
        for (p, waiting) in points {
            let outcome = readings
                .next()
                .unwrap_or_else(|| Err(GetError::Decode("no reading".into())));
            match outcome {
                Ok(r) => {
                    let json = r.json();
                    cx.force(d, p, r);
                    for g in &waiting {
                        cx.push(answer(g, Ok(json.clone())));
                    }
                }
                Err(e) => {
                    let topic = cx
                        .point(d, p)
                        .map(|pt| pt.topic.clone())
                        .unwrap_or_default();
                    info!(device = %device, topic = %topic, error = %e, "Read on demand failed.");
                    for g in &waiting {
                        cx.push(answer(g, Err(e.clone())));
                    }
                }
            }
        }
    }
}

/// A request routed by an earlier configuration generation: the point it means now, by
/// its topic (a read needs no value checked against the old definition, so a changed
/// device is read as it is now). Then whether the point may be read at all.
fn locate(g: &mut Get, cx: &Cx, devs: &Devices) -> Result<(), GetError> {
    if g.generation != devs.generation {
        let now = cx.bus.devices.iter().enumerate().find_map(|(d, dev)| {
            let p = dev.points.iter().position(|p| p.topic == g.topic)?;
            Some((d, p))
        });
        (g.device, g.point) = now.ok_or(GetError::Removed)?;
    }
    let point = cx.point(g.device, g.point).ok_or(GetError::Removed)?;
    point
        .readable()
        .map_err(|why| GetError::NotReadable(why.into()))
}

fn answer(g: &Get, outcome: Result<serde_json::Value, GetError>) -> Outgoing {
    get_result_on(&g.topic, outcome, g.id.as_ref())
}

/// The answer to a read still queued when the bus task ends: at shutdown, or when a
/// reload replaces or removes its bus.
pub(super) fn refused(g: &Get, shutdown: bool) -> Outgoing {
    answer(
        g,
        Err(if shutdown {
            GetError::ShuttingDown
        } else {
            GetError::BusRestarting
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(device: usize, point: usize, id: u32) -> Get {
        Get {
            device,
            point,
            topic: format!("d{device}/p{point}"),
            generation: 0,
            id: Some(id.into()),
        }
    }

    #[test]
    fn one_read_per_device_and_each_point_once() {
        let mut pending = Pending::default();
        for (d, p, id) in [
            (0, 1, 1),
            (0, 2, 2),
            (1, 0, 3),
            (0, 1, 4),
            (0, 2, 5),
            (0, 1, 6),
        ] {
            pending.add(get(d, p, id));
        }
        type Shape = Vec<(usize, Vec<(usize, Vec<u64>)>)>;
        let shape: Shape = pending
            .devices
            .iter()
            .map(|(d, points)| {
                let points = points
                    .iter()
                    .map(|(p, w)| {
                        (
                            *p,
                            w.iter().filter_map(|g| g.id.as_ref()?.as_u64()).collect(),
                        )
                    })
                    .collect();
                (*d, points)
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, vec![(1, vec![1, 4, 6]), (2, vec![2, 5])]),
                (1, vec![(0, vec![3])]),
            ]
        );
    }

    #[test]
    fn a_batch_keeps_commands_and_reads_in_their_order() {
        let set = |point| {
            Request::Set(Command {
                device: 0,
                point,
                topic: "t".into(),
                generation: 0,
                value: fieldlink_drivers::value::Value::Int(1),
                id: None,
                reply: None,
            })
        };
        let batch = vec![
            Request::Get(get(0, 3, 1)),
            set(1),
            Request::Get(get(0, 4, 2)),
            set(2),
        ];
        let (sets, gets, _) = split(batch);
        assert_eq!(sets.iter().map(|c| c.point).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(gets.iter().map(|g| g.point).collect::<Vec<_>>(), [3, 4]);
        let m = refused(&gets[0], true);
        assert_eq!(m.topic, "d0/p3/get/result");
        let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"ok": false, "error": "gateway shutting down; not read", "id": 1})
        );
    }
}
