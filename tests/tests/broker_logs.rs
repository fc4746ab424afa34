//! Logs an attacker cannot write: client ids and user names with a newline, a carriage
//! return or terminal escape codes, sent to the `fieldlink` binary's embedded broker
//! (with a wrong password and with the right one), never forge a line or reach the log
//! as raw control bytes. The binary's own standard error is read byte for byte, with
//! rmqtt's own lines switched on (`rmqtt=info`), as a user debugging would run it.

use std::{
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldlink_drivers::sim::{SimDevice, SimServer};
use fieldlink_tests::{eventually, mosquitto, process::fieldlink_bin, raw};
use tokio::io::AsyncWriteExt;

/// The `fieldlink run` child and everything it wrote on standard error, as bytes.
struct Child2 {
    child: Child,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Child2 {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().expect("lock")).into_owned()
    }
}

impl Drop for Child2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &Path) -> Child2 {
    let mut child = Command::new(fieldlink_bin())
        .args(["run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            "info,rmqtt=info,rmqtt_net=info,rmqtt_codec=info",
        )
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fieldlink");
    let mut stderr = child.stderr.take().expect("stderr");
    let err: Arc<Mutex<Vec<u8>>> = Arc::default();
    let e2 = err.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                return;
            }
            e2.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    Child2 { child, err }
}

/// Client ids and user names that would write a line of their own or a terminal escape.
const EVIL: [&str; 3] = [
    "evil\nERROR fieldlink: forged line",
    "\u{1b}[2J\u{1b}[1;31mred\u{1b}[0m",
    "cr\rERROR fieldlink: overwritten",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_and_user_names_cannot_write_log_lines() {
    let Some(passwd) = mosquitto::tool("mosquitto_passwd") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users");
    assert!(Command::new(passwd)
        .args(["-c", "-b"])
        .arg(&users)
        .args(["casa", "s3nha"])
        .status()
        .expect("mosquitto_passwd")
        .success());
    let server = SimServer::new();
    server.add(1, SimDevice::new());
    let sim = server.spawn_local().await.expect("sim");
    std::fs::write(
        dir.path().join("mapping.yaml"),
        format!(
            "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {sim} }}\n\
             devices:\n  - id: d\n    bus: b\n    points:\n\
             \x20     - {{ topic: casa/temp, table: holding, address: 0 }}\n"
        ),
    )
    .expect("mapping");
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "id: t\nmappings: mapping.yaml\nstate_dir: {}\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n    users_file: {}\n",
            dir.path().display(),
            users.display()
        ),
    )
    .expect("config");
    let gw = start(&config);
    let mut port = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            port = gw.text().lines().find_map(|l| {
                let at = l.find("Embedded broker listening.")?;
                l[at..]
                    .split("listen=127.0.0.1:")
                    .nth(1)?
                    .trim()
                    .parse::<u16>()
                    .ok()
            });
            port.is_some()
        })
        .await,
        "the broker listens: {}",
        gw.text()
    );
    let port = port.expect("port");

    for id in EVIL {
        // A wrong password, with the id also as the user name: refused and logged.
        assert_eq!(
            raw::try_login(port, id, 4, Some((id, "wrong"))).await,
            Some(5)
        );
        // The right password: connected, then gone without a DISCONNECT.
        let mut s = raw::open(port).await.expect("connect");
        assert_eq!(
            raw::handshake(&mut s, &raw::connect(id, 5, Some(("casa", "s3nha")))).await,
            Some(0)
        );
        // SUBSCRIBE `#` (MQTT 5, no properties), so rmqtt has more to say about it.
        let _ = s.write_all(&[0x82, 7, 0, 1, 0, 0, 1, b'#', 1]).await;
        raw::reset(s);
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            let text = gw.text();
            text.matches("Login refused.").count() >= EVIL.len()
                && text.matches("Client disconnected.").count() >= EVIL.len()
        })
        .await,
        "every refusal and disconnect is logged: {}",
        gw.text()
    );

    let bytes = gw.err.lock().expect("lock").clone();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !bytes.contains(&0x1b),
        "an escape code reached the log: {text}"
    );
    assert!(!bytes.contains(&b'\r'), "a carriage return reached the log");
    for l in text.lines() {
        assert!(
            !l.starts_with("ERROR fieldlink"),
            "a client forged a log line: {l:?}"
        );
    }
    // The lines are there, escaped.
    assert!(
        text.contains(r"evil\nERROR fieldlink: forged line"),
        "{text}"
    );
    assert!(text.contains(r"\u{1b}[2J"), "{text}");
}
