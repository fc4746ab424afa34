//! The bus task's side on tokio's paused clock: a long request takes turns with the polls.

use super::*;

/// A shared RS-485 line on tokio's paused clock: units 1 and 2 answer in 10 ms, every
/// other unit is silent (a try holds the line for twice the timeout, as on RTU).
struct Line {
    timeout: Duration,
    /// Every read: the unit and when it began.
    reads: Arc<std::sync::Mutex<Vec<(u8, tokio::time::Instant)>>>,
}

impl fieldlink_drivers::modbus::ModbusTransport for Line {
    async fn read(
        &mut self,
        unit: u8,
        _table: Table,
        _addr: u16,
        count: u16,
    ) -> Result<fieldlink_drivers::modbus::ReadData, fieldlink_drivers::modbus::DriverError> {
        if let Ok(mut r) = self.reads.lock() {
            r.push((unit, tokio::time::Instant::now()));
        }
        if unit > 2 {
            tokio::time::sleep(self.timeout * 2).await;
            return Err(fieldlink_drivers::modbus::DriverError::Timeout(
                self.timeout,
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(fieldlink_drivers::modbus::ReadData::Registers(vec![
            7;
            usize::from(count)
        ]))
    }

    async fn write_registers(
        &mut self,
        _unit: u8,
        _addr: u16,
        _values: &[u16],
        _multiple: bool,
    ) -> Result<(), fieldlink_drivers::modbus::DriverError> {
        Ok(())
    }

    async fn write_coils(
        &mut self,
        _unit: u8,
        _addr: u16,
        _values: &[bool],
        _multiple: bool,
    ) -> Result<(), fieldlink_drivers::modbus::DriverError> {
        Ok(())
    }

    fn endpoint(&self) -> String {
        "rs485 (test)".into()
    }
}

/// A long scan through the bus task (98 silent units, half a minute of timeouts) is split
/// into single requests between the polls: the two devices keep their 1 s cadence, late
/// by one exchange at most, and no poll fails.
#[tokio::test(start_paused = true)]
async fn a_long_scan_takes_turns_with_the_polls() {
    use fieldlink::{
        buses,
        commission::{
            gateway::{Job, Who},
            scan::ScanArgs,
            wire::Asked,
        },
        shutdown, Stats,
    };
    use tokio::sync::{mpsc, oneshot};
    let mapping = "buses:\n  - { id: rs485, kind: modbus_rtu, path: /dev/ttyUSB0, timeout: 150ms }\ndevices:\n\
         \x20 - { id: u1, bus: rs485, unit: 1, poll_interval: 1s, points: [{ topic: f/u1, table: holding, address: 0 }] }\n\
         \x20 - { id: u2, bus: rs485, unit: 2, poll_interval: 1s, points: [{ topic: f/u2, table: holding, address: 0 }] }\n";
    let model = Arc::new(fieldlink_tests::model(mapping, "commissioning: true\n"));
    let stats = Arc::new(Stats::new(&model));
    let (out, mut rx) = mpsc::channel(1024);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let (commands_tx, commands) = mpsc::channel(16);
    let (trigger, sd) = shutdown::channel();
    let io = buses::BusIo {
        out,
        commands,
        control: mpsc::channel(1).1,
        stats: stats.clone(),
        shutdown: sd,
        snapshots: None,
    };
    let reads: Arc<std::sync::Mutex<Vec<(u8, tokio::time::Instant)>>> = Arc::default();
    let line = Line {
        timeout: Duration::from_millis(150),
        reads: reads.clone(),
    };
    let task = tokio::spawn(buses::run_modbus(
        model.clone(),
        model.buses[0].clone(),
        0,
        line,
        io,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (answer, answered) = oneshot::channel();
    let job = Job {
        asked: Asked::Scan(ScanArgs {
            transport: Default::default(),
            units: "1-100".into(),
            json: true,
        }),
        who: Who {
            user: Some("installer".into()),
            client: "test".into(),
        },
        answer,
    };
    let began = tokio::time::Instant::now();
    commands_tx
        .send(buses::Request::Commission(Box::new(job)))
        .await
        .expect("bus task runs");
    let a = answered.await.expect("answered");
    let took = began.elapsed();
    // 98 silent units at 300 ms each, with the polls between them.
    assert!(took >= Duration::from_millis(98 * 300), "{took:?}");
    assert_eq!(
        a.error.as_ref().map(|(_, exit)| *exit),
        Some(69),
        "nobody answered: {a:?}"
    );
    let j = a.result.expect("the --json object");
    assert_eq!(j["found"], json!([]));
    assert_eq!(j["skipped"][1], json!({"unit": 2, "device": "u2"}));
    trigger.trigger();
    task.await.expect("bus task");
    let reads = reads.lock().expect("lock").clone();
    for u in [1u8, 2] {
        let polls: Vec<tokio::time::Instant> = reads
            .iter()
            .filter(|(unit, at)| *unit == u && *at >= began && *at <= began + took)
            .map(|(_, at)| *at)
            .collect();
        // One poll a second throughout the scan, each at most one silent try late.
        assert!(
            polls.len() as u128 >= took.as_millis() / 1000 - 1,
            "unit {u}: {} polls in {took:?}",
            polls.len()
        );
        for w in polls.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap <= Duration::from_millis(1000 + 300 + 20),
                "unit {u}: {gap:?}"
            );
        }
    }
    for d in stats.devices().iter() {
        assert_eq!(d.failed_polls.load(Relaxed), 0, "{}", d.id);
    }
    // The scan never asked the polled units.
    let scanned: Vec<u8> = reads
        .iter()
        .filter(|(_, at)| *at >= began)
        .map(|(u, _)| *u)
        .filter(|u| *u > 2)
        .collect();
    assert_eq!(scanned, (3..=100).collect::<Vec<u8>>());
}
