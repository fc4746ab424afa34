//! Real mosquitto brokers for the interop suite, started on loopback ports (retried on
//! another port when one was taken meanwhile), and the certificates they and the gateway
//! use (generated here with rcgen).
//!
//! When mosquitto is missing the suite skips with a message, except under CI (`CI` set),
//! where it fails: `.ci/run` installs it.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

use crate::free_port;

/// Find mosquitto, or decide the test cannot run: `None` skips (off CI), CI panics.
pub fn mosquitto() -> Option<PathBuf> {
    let found = [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("mosquitto"))
                .find(|p| p.exists())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto is not installed, and CI is set: the interop suite must run \
             (apt-get install -y mosquitto mosquitto-clients)"
        );
        eprintln!("SKIPPED: mosquitto is not installed (apt-get install -y mosquitto)");
    }
    found
}

/// Certificates for one test: a CA, a server certificate for 127.0.0.1/localhost, a client
/// certificate, and a second, unrelated CA.
pub struct Pki {
    /// CA certificate (PEM file).
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate (mutual TLS).
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca")
}

impl Pki {
    /// Generate everything into `dir`.
    pub fn generate(dir: &Path) -> Pki {
        let ca = ca("fieldlink test CA");
        let other = ca_other();
        let mut sp = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        sp.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        sp.distinguished_name.push(DnType::CommonName, "broker");
        let skey = KeyPair::generate().expect("key");
        let scert = sp.signed_by(&skey, &ca).expect("server cert");
        let mut cp = CertificateParams::new(Vec::<String>::new()).expect("params");
        cp.distinguished_name.push(DnType::CommonName, "gateway-t");
        let ckey = KeyPair::generate().expect("key");
        let ccert = cp.signed_by(&ckey, &ca).expect("client cert");
        let w = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write pem");
            p
        };
        Pki {
            ca: w("ca.pem", ca.pem()),
            server_cert: w("server.pem", scert.pem()),
            server_key: w("server.key", skey.serialize_pem()),
            client_cert: w("client.pem", ccert.pem()),
            client_key: w("client.key", ckey.serialize_pem()),
            other_ca: w("other-ca.pem", other.pem()),
        }
    }
}

fn ca_other() -> CertifiedIssuer<'static, KeyPair> {
    ca("some other CA")
}

/// How a broker is set up.
#[derive(Default, Clone)]
pub struct BrokerOpts {
    /// Users (name, password); anonymous clients are refused when there are any.
    pub users: Vec<(String, String)>,
    /// TLS with these files (CA, certificate, key).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// Clients must present a certificate signed by the CA.
    pub require_certificate: bool,
    /// Keep sessions and queued messages across a graceful restart (as cloud brokers do).
    pub persistence: bool,
}

/// A mosquitto process on 127.0.0.1.
pub struct Broker {
    /// Its plain port (observers use it; with users, they need to log in).
    pub port: u16,
    /// Its TLS port, with [`BrokerOpts::tls`].
    pub tls_port: Option<u16>,
    bin: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// How one launch of mosquitto ended.
enum Launch {
    /// It logged that it runs: every listener is open.
    Ready(Child),
    /// A port was taken (by another process since it was picked).
    InUse,
    /// Anything else: its log.
    Failed(String),
}

/// Run mosquitto on `conf` and wait until it reports that it runs (it logs that after
/// opening every listener) or exits. Its log goes on to our standard error.
fn launch(bin: &Path, conf: &Path) -> Launch {
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto");
    let stderr = child.stderr.take().expect("mosquitto's stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end, so that mosquitto never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = String::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("mosquitto version") && line.ends_with(" running") {
                    return Launch::Ready(child);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                return if log.contains("Address already in use") {
                    Launch::InUse
                } else {
                    Launch::Failed(log)
                };
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                log.push_str("(not running after 10 s)\n");
                return Launch::Failed(log);
            }
        }
    }
}

/// Ports tried before [`Broker::start`] gives up (each is taken only if another process
/// grabbed it between the pick and mosquitto's bind).
const START_ATTEMPTS: usize = 20;

impl Broker {
    /// Start mosquitto (`None` when it, or `mosquitto_passwd` for [`BrokerOpts::users`], is
    /// not installed and CI is not set: the reason is printed; under CI it panics).
    /// mosquitto cannot listen on port 0 (`listener 0` is a Unix socket), so it is started
    /// on candidate ports ([`free_port`]) and, when one was taken meanwhile, on others.
    pub fn start(opts: &BrokerOpts) -> Option<Broker> {
        let bin = mosquitto()?;
        let dir = tempfile::tempdir().expect("tempdir");
        // `information` carries the line that says mosquitto runs.
        let mut common = String::from(
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type information\nmax_queued_messages 100000\n",
        );
        if opts.persistence {
            // Started as root, mosquitto runs as the user `mosquitto`, which cannot write
            // the database into this private directory ("Error: Permission denied" at
            // shutdown, and no session survives the restart): it stays root here.
            common.push_str(&format!(
                "persistence true\npersistence_location {}/\nuser root\n",
                dir.path().display()
            ));
        } else {
            common.push_str("persistence false\n");
        }
        if opts.users.is_empty() {
            common.push_str("allow_anonymous true\n");
        } else {
            let passwd = tool("mosquitto_passwd")?;
            let pw = dir.path().join("passwd");
            std::fs::write(&pw, "").expect("passwd");
            for (u, p) in &opts.users {
                let ok = Command::new(&passwd)
                    .args(["-b"])
                    .arg(&pw)
                    .args([u, p])
                    .status()
                    .expect("mosquitto_passwd (package mosquitto)");
                assert!(ok.success(), "mosquitto_passwd failed");
            }
            common.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                pw.display()
            ));
        }
        let conf_path = dir.path().join("mosquitto.conf");
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let tls_port = opts.tls.as_ref().map(|_| free_port());
            let mut conf = format!("listener {port} 127.0.0.1\n{common}");
            if let (Some((ca, cert, key)), Some(tp)) = (&opts.tls, tls_port) {
                conf.push_str(&format!(
                    "listener {tp} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                    ca.display(),
                    cert.display(),
                    key.display(),
                    opts.require_certificate
                ));
            }
            std::fs::write(&conf_path, conf).expect("conf");
            match launch(&bin, &conf_path) {
                Launch::Ready(child) => {
                    return Some(Broker {
                        port,
                        tls_port,
                        bin,
                        conf: conf_path,
                        child: Some(child),
                        _dir: dir,
                    })
                }
                Launch::InUse => eprintln!("mosquitto: port {port} taken meanwhile; another"),
                Launch::Failed(log) => panic!("mosquitto did not start:\n{log}"),
            }
        }
        panic!("mosquitto found no free port in {START_ATTEMPTS} attempts");
    }

    /// Start it again on the same port (after [`Broker::stop`]); while another process
    /// holds the port, retried for up to 10 s.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match launch(&self.bin, &self.conf) {
                Launch::Ready(child) => {
                    self.child = Some(child);
                    return;
                }
                Launch::InUse => {
                    assert!(
                        Instant::now() < deadline,
                        "mosquitto's port {} stayed taken for 10 s",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Launch::Failed(log) => panic!("mosquitto did not start again:\n{log}"),
            }
        }
    }

    /// Stop it gracefully (SIGTERM: with persistence, sessions and queued messages are saved).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill it (SIGKILL: no goodbye to anyone).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Find one of Mosquitto's client tools (`mosquitto_pub`, `mosquitto_sub`,
/// `mosquitto_passwd`): `None` skips (off CI), CI panics.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/local/bin", "/usr/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed, and CI is set: the interop suite must run \
             (apt-get install -y mosquitto-clients)"
        );
        eprintln!("SKIPPED: {name} is not installed (apt-get install -y mosquitto-clients)");
    }
    found
}

/// Mosquitto's three client tools, found ([`tool`]).
pub struct Tools {
    /// `mosquitto_pub`.
    pub publ: PathBuf,
    /// `mosquitto_sub`.
    pub sub: PathBuf,
    /// `mosquitto_passwd`.
    pub passwd: PathBuf,
}

/// All three of Mosquitto's client tools, or `None` (off CI) when one is missing.
pub fn tools() -> Option<Tools> {
    Some(Tools {
        publ: tool("mosquitto_pub")?,
        sub: tool("mosquitto_sub")?,
        passwd: tool("mosquitto_passwd")?,
    })
}

/// One of Mosquitto's clients (`bin`) with `args` against the broker on 127.0.0.1:`port`,
/// run to its end.
pub fn run(bin: &Path, port: u16, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()))
}

/// A running `mosquitto_sub` (on 127.0.0.1:`port`) whose lines are read as they come; killed
/// when dropped.
pub struct Sub {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Sub {
    /// Start `mosquitto_sub` with `args` (topics, `-v`, login, ...).
    pub fn start(t: &Tools, port: u16, args: &[&str]) -> Sub {
        let mut child = Command::new(&t.sub)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Sub { child, lines }
    }

    /// The next line, waiting at most `within`.
    pub fn line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// Lines until one equal to `last` (included), or `None` after `within` without it.
    pub fn until(&self, last: &str, within: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let l = self.lines.recv_timeout(left).ok()?;
            let done = l == last;
            out.push(l);
            if done {
                return Some(out);
            }
        }
    }

    /// The process id of `mosquitto_sub` (to freeze it with a signal).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
