//! A real Home Assistant core for the interop suite: [`HomeAssistant::start`] runs
//! `hass` from the venv that `tests/ha/install.sh` makes, against an MQTT broker on
//! 127.0.0.1, and its REST API answers the test's questions (states, services,
//! templates).
//!
//! Each instance gets a fresh configuration directory written before the start, so HA
//! comes up without the browser: onboarding is marked done, an owner with a long-lived
//! access token exists (the token is an HS256 JWT signed here with the refresh token's
//! `jwt_key`), and the MQTT integration's config entry points at the broker with
//! discovery on under `homeassistant/` and the default birth message
//! (`homeassistant/status` = `online`). `configuration.yaml` is minimal (no
//! `default_config`); its `http:` binds 127.0.0.1 on a port picked here.
//!
//! Where the venv is: `FIELDLINK_HA_VENV`, else `/opt/fieldlink-ha`. Without it the test
//! skips with a message, except under CI (`CI` set), where it fails: `.ci/run` installs
//! it.
//!
//! The API blocks (plain HTTP/1.1 over a `TcpStream`, one connection per request). In an
//! async test use `#[tokio::test(flavor = "multi_thread")]`: the test body runs on its own
//! thread, so blocking it here leaves the gateway's and the MQTT clients' tasks running.
//!
//! HA's log is kept ([`HomeAssistant::log`]); `FIELDLINK_HA_LOG=1` also echoes it to
//! standard error as it comes, and a test that panics prints its last lines.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::free_port;

/// The MQTT config entry's id (fixed: one per configuration directory).
const MQTT_ENTRY_ID: &str = "01fieldlinkmqttentry0000000000";

/// How long HA may take to be ready (it takes a few seconds; CI runs other suites too).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Ports tried before [`HomeAssistant::start`] gives up (another is tried only when the
/// picked one was taken meanwhile).
const START_ATTEMPTS: usize = 10;

/// Where the venv with Home Assistant is, or decide the test cannot run: `None` skips
/// (off CI, with a message), under CI it panics.
pub fn venv() -> Option<PathBuf> {
    let dir = std::env::var_os("FIELDLINK_HA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/fieldlink-ha"));
    if dir.join("bin/hass").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "Home Assistant is not installed in {} (no bin/hass), and CI is set: the interop \
         suite must run (bash tests/ha/install.sh)",
        dir.display()
    );
    eprintln!(
        "SKIPPED: Home Assistant is not installed in {} (bash tests/ha/install.sh; \
         FIELDLINK_HA_VENV picks another venv)",
        dir.display()
    );
    None
}

/// How HA connects to the broker.
#[derive(Clone, Debug)]
pub struct Options {
    /// The broker's port on 127.0.0.1.
    pub mqtt_port: u16,
    /// Login, if the broker wants one.
    pub username: Option<String>,
    /// Password for [`Options::username`].
    pub password: Option<String>,
    /// Discovery prefix (HA's default: `homeassistant`).
    pub discovery_prefix: String,
    /// Appended to `configuration.yaml`: other integrations' sections (not `logger:`,
    /// `http:` or `homeassistant:`, which are written here).
    pub extra_yaml: String,
    /// Log the MQTT integration at debug level (every message HA receives).
    pub debug_mqtt: bool,
}

impl Options {
    /// The defaults for a broker on 127.0.0.1:`mqtt_port` without login.
    pub fn new(mqtt_port: u16) -> Options {
        Options {
            mqtt_port,
            username: None,
            password: None,
            discovery_prefix: "homeassistant".to_string(),
            extra_yaml: String::new(),
            debug_mqtt: false,
        }
    }
}

/// An answer of HA's REST API that was not a success.
#[derive(Debug)]
pub struct HttpError {
    /// HTTP status (0: no answer at all).
    pub status: u16,
    /// The body, or what went wrong.
    pub body: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

impl std::error::Error for HttpError {}

/// A Home Assistant core process on 127.0.0.1 and its configuration directory.
pub struct HomeAssistant {
    /// Its HTTP port on 127.0.0.1 (the REST API is under `/api/`).
    pub http_port: u16,
    /// How long the last start took, from spawning `hass` to ready.
    pub last_start: Duration,
    opts: Options,
    hass: PathBuf,
    token: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// Where the current run's log begins in `log`.
    run_from: usize,
    dir: tempfile::TempDir,
}

/// How one launch of `hass` ended.
enum Launch {
    Ready,
    /// The HTTP port was taken (by another process since it was picked).
    PortTaken,
}

impl HomeAssistant {
    /// Start HA against the broker on 127.0.0.1:`mqtt_port` and wait until it is ready:
    /// the REST API answers, HA runs (not in recovery mode), the MQTT config entry is
    /// loaded and its client has connected. `None` when HA is not installed and CI is not
    /// set ([`venv`]).
    pub fn start(mqtt_port: u16) -> Option<HomeAssistant> {
        Self::start_with(Options::new(mqtt_port))
    }

    /// [`HomeAssistant::start`] with [`Options`].
    pub fn start_with(opts: Options) -> Option<HomeAssistant> {
        let venv = venv()?;
        let dir = tempfile::Builder::new()
            .prefix("fieldlink-ha-")
            .tempdir()
            .expect("tempdir");
        let token = write_storage(dir.path(), &opts);
        let mut ha = HomeAssistant {
            http_port: 0,
            last_start: Duration::ZERO,
            opts,
            hass: venv.join("bin/hass"),
            token,
            child: None,
            log: Arc::default(),
            run_from: 0,
            dir,
        };
        for _ in 0..START_ATTEMPTS {
            ha.http_port = free_port();
            write_configuration(ha.dir.path(), &ha.opts, ha.http_port);
            match ha.launch() {
                Launch::Ready => return Some(ha),
                Launch::PortTaken => {
                    eprintln!("hass: port {} taken meanwhile; another", ha.http_port);
                }
            }
        }
        panic!("Home Assistant found no free HTTP port in {START_ATTEMPTS} attempts");
    }

    /// Stop it cleanly (SIGTERM: HA saves its registries and disconnects from the broker)
    /// and start it again with the same configuration directory, waiting until it is
    /// ready as [`HomeAssistant::start`] does.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stop it cleanly (SIGTERM), waiting up to 60 s before it is killed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = c.try_wait() {
                    eprintln!("hass: stopped ({status})");
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("hass: still running 60 s after SIGTERM; killed");
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again after [`HomeAssistant::stop`] (same directory, port and token).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "Home Assistant is still running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Launch::Ready => return,
                // The old process's socket, or someone else's: the port is ours to keep.
                Launch::PortTaken => {
                    assert!(
                        Instant::now() < deadline,
                        "Home Assistant's port {} stayed taken for 10 s",
                        self.http_port
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Whether the process runs (it may have exited by itself).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Its configuration directory (`.storage/core.entity_registry` and
    /// `core.device_registry` are there once HA has saved them: at the latest when it
    /// stops).
    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The long-lived access token (`Authorization: Bearer …`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Everything HA has logged, over all its runs.
    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// What HA has logged since it last started.
    pub fn run_log(&self) -> String {
        self.log.lock().expect("lock")[self.run_from..].to_string()
    }

    /// The lines of this run's log at level ERROR or WARNING that contain `text` (each
    /// record's first line: tracebacks follow on lines of their own).
    pub fn problems(&self, text: &str) -> Vec<String> {
        self.run_log()
            .lines()
            .filter(|l| l.contains(" ERROR (") || l.contains(" WARNING ("))
            .filter(|l| l.contains(text))
            .map(str::to_string)
            .collect()
    }

    /// The ERROR and WARNING lines of this run's log from the MQTT integration: a
    /// discovery payload HA refuses shows here (2024.3.3: an invalid value is an ERROR
    /// "Error '…' when processing MQTT discovery message topic: '…', message: '…'",
    /// a payload that is not JSON a WARNING "Unable to parse JSON"; keys it does not know
    /// are dropped without a word).
    pub fn mqtt_problems(&self) -> Vec<String> {
        self.problems("[homeassistant.components.mqtt")
    }

    /// Every entity's state: `GET /api/states`.
    pub fn states(&self) -> Vec<Value> {
        match self.get("/api/states") {
            Ok(Value::Array(a)) => a,
            Ok(other) => panic!("GET /api/states: not a list: {other}"),
            Err(e) => panic!("GET /api/states: {e}"),
        }
    }

    /// One entity's state (`GET /api/states/<entity_id>`), `None` if HA does not know it.
    pub fn state(&self, entity_id: &str) -> Option<Value> {
        match self.get(&format!("/api/states/{entity_id}")) {
            Ok(v) => Some(v),
            Err(HttpError { status: 404, .. }) => None,
            Err(e) => panic!("GET /api/states/{entity_id}: {e}"),
        }
    }

    /// Poll [`HomeAssistant::states`] every 100 ms until `pred` holds, for at most
    /// `timeout`; the states it held for, or `None`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[Value]) -> bool,
    ) -> Option<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let states = self.states();
            if pred(&states) {
                return Some(states);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until `entity_id` exists and `pred` holds for its state object; that object,
    /// or `None` after `timeout`.
    pub fn wait_for_entity(
        &self,
        entity_id: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.state(entity_id) {
                if pred(&s) {
                    return Some(s);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Call a service: `POST /api/services/<domain>/<service>` with `data` (e.g.
    /// `{"entity_id": "switch.x"}`); HA answers with the states that changed meanwhile.
    pub fn call_service(
        &self,
        domain: &str,
        service: &str,
        data: &Value,
    ) -> Result<Value, HttpError> {
        self.post(&format!("/api/services/{domain}/{service}"), data)
    }

    /// Render a template (`POST /api/template`): the way to ask about the device registry
    /// over REST, e.g. `{{ device_attr(device_id('sensor.x'), 'manufacturer') }}`.
    pub fn render_template(&self, template: &str) -> Result<String, HttpError> {
        let (status, body) = self.request(
            "POST",
            "/api/template",
            Some(&json!({ "template": template })),
        )?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            Err(HttpError { status, body: text })
        }
    }

    /// `GET <path>` as JSON (`path` starts with `/api/`).
    pub fn get(&self, path: &str) -> Result<Value, HttpError> {
        json_answer(self.request("GET", path, None)?)
    }

    /// `POST <path>` with a JSON body, the answer as JSON.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, HttpError> {
        json_answer(self.request("POST", path, Some(body))?)
    }

    /// One HTTP/1.1 request with the token (`Connection: close`): status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        http(self.http_port, &self.token, method, path, body).map_err(|e| HttpError {
            status: 0,
            body: format!("{method} {path}: {e}"),
        })
    }

    /// Spawn `hass` and wait until it is ready (or its HTTP port turned out taken).
    fn launch(&mut self) -> Launch {
        let started = Instant::now();
        self.run_from = self.log.lock().expect("lock").len();
        let mut child = Command::new(&self.hass)
            .arg("-c")
            .arg(self.dir.path())
            .args(["--skip-pip", "--log-no-color"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.hass.display()));
        let echo = std::env::var_os("FIELDLINK_HA_LOG").is_some_and(|v| v == "1");
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = self.log.clone();
            // Read to the end, so that HA never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("hass: {line}");
                    }
                    let mut l = log.lock().expect("lock");
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        self.child = Some(child);
        let deadline = started + READY_TIMEOUT;
        loop {
            let log = self.run_log();
            if log.contains("Failed to create HTTP server at port") {
                self.kill();
                return Launch::PortTaken;
            }
            if log.contains("Activating recovery mode") || log.contains("Starting in recovery mode")
            {
                self.fail(
                    "started in recovery mode (an integration it always sets up could not \
                     be imported: is the venv from tests/ha/install.sh complete?)",
                );
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.fail(&format!("exited while starting ({status})"));
            }
            if self.ready(&log) {
                self.last_start = started.elapsed();
                eprintln!(
                    "hass: ready on 127.0.0.1:{} in {:.1} s (MQTT broker 127.0.0.1:{})",
                    self.http_port,
                    self.last_start.as_secs_f64(),
                    self.opts.mqtt_port
                );
                return Launch::Ready;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("not ready within {} s", READY_TIMEOUT.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the API answers, HA runs with MQTT set up, the MQTT entry is loaded and its
    /// client connected (in this run).
    fn ready(&self, log: &str) -> bool {
        if !log.contains("Connected to MQTT server") {
            return false;
        }
        let Ok(config) = self.get("/api/config") else {
            return false;
        };
        let running = config["state"] == "RUNNING";
        let mqtt = config["components"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "mqtt"));
        if !(running && mqtt) {
            return false;
        }
        let Ok(Value::Array(entries)) = self.get("/api/config/config_entries/entry") else {
            return false;
        };
        entries
            .iter()
            .any(|e| e["entry_id"] == MQTT_ENTRY_ID && e["state"] == "loaded")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill it and panic with `why` and its log.
    fn fail(&mut self, why: &str) -> ! {
        self.kill();
        // Let the readers drain what it wrote last.
        std::thread::sleep(Duration::from_millis(200));
        panic!(
            "Home Assistant {why}; its log:\n{}",
            tail(&self.run_log(), 200)
        );
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "hass: the test failed; HA's last log lines (config dir {}):\n{}",
                self.dir.path().display(),
                tail(&self.log(), 80)
            );
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn json_answer((status, body): (u16, Vec<u8>)) -> Result<Value, HttpError> {
    let text = || String::from_utf8_lossy(&body).into_owned();
    if !(200..300).contains(&status) {
        return Err(HttpError {
            status,
            body: text(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| HttpError {
        status,
        body: format!("not JSON ({e}): {}", text()),
    })
}

/// A minimal HTTP/1.1 client: one request per connection, read to EOF.
fn http(
    port: u16,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\
         Accept: application/json\r\nConnection: close\r\n"
    );
    if method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        payload = dechunk(&payload).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok((status, payload))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("getrandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An HS256 JWT `{iss, iat, exp}` signed with `key` (as HA's access tokens are).
fn access_token(issuer: &str, key: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64
        .encode(json!({ "iss": issuer, "iat": now, "exp": now + 10 * 365 * 86_400 }).to_string());
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(signing_input.as_bytes());
    let sig = b64.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// Write `.storage/` (onboarding done, an owner with a long-lived access token, the MQTT
/// config entry) and return the access token.
fn write_storage(dir: &Path, opts: &Options) -> String {
    let storage = dir.join(".storage");
    std::fs::create_dir_all(&storage).expect("mkdir .storage");
    let write = |key: &str, version: u32, data: Value| {
        let doc = json!({ "version": version, "minor_version": 1, "key": key, "data": data });
        std::fs::write(
            storage.join(key),
            serde_json::to_string_pretty(&doc).expect("json"),
        )
        .expect("write .storage");
    };
    write(
        "onboarding",
        4,
        json!({ "done": ["user", "core_config", "analytics", "integration"] }),
    );
    let user_id = random_hex(16);
    let refresh_id = random_hex(16);
    let jwt_key = random_hex(64);
    write(
        "auth",
        1,
        json!({
            "users": [{
                "id": user_id, "group_ids": ["system-admin"], "is_owner": true,
                "is_active": true, "name": "fieldlink-tests", "system_generated": false,
                "local_only": false
            }],
            "groups": [
                { "id": "system-admin", "name": "Administrators" },
                { "id": "system-users", "name": "Users" },
                { "id": "system-read-only", "name": "Read Only" }
            ],
            "credentials": [],
            "refresh_tokens": [{
                "id": refresh_id, "user_id": user_id, "client_id": null,
                "client_name": "fieldlink-tests", "client_icon": null,
                "token_type": "long_lived_access_token",
                "created_at": "2024-01-01T00:00:00+00:00",
                "access_token_expiration": 315_360_000.0,
                "token": random_hex(64), "jwt_key": jwt_key,
                "last_used_at": null, "last_used_ip": null, "expire_at": null,
                "credential_id": null, "version": "2024.3.3"
            }]
        }),
    );
    let mut mqtt = json!({
        "broker": "127.0.0.1",
        "port": opts.mqtt_port,
        "discovery": true,
        "discovery_prefix": opts.discovery_prefix,
    });
    if let Some(u) = &opts.username {
        mqtt["username"] = json!(u);
    }
    if let Some(p) = &opts.password {
        mqtt["password"] = json!(p);
    }
    write(
        "core.config_entries",
        1,
        json!({ "entries": [{
            "entry_id": MQTT_ENTRY_ID, "version": 1, "minor_version": 1, "domain": "mqtt",
            "title": "127.0.0.1", "data": mqtt, "options": {},
            "pref_disable_new_entities": false, "pref_disable_polling": false,
            "source": "user", "unique_id": null, "disabled_by": null
        }]}),
    );
    access_token(&refresh_id, &jwt_key)
}

/// `configuration.yaml`: the core settings (metric, so that °C stays °C), HTTP on
/// 127.0.0.1:`http_port`, and log levels that show MQTT's connection and discovery.
fn write_configuration(dir: &Path, opts: &Options, http_port: u16) {
    let mqtt_level = if opts.debug_mqtt { "debug" } else { "info" };
    let yaml = format!(
        "homeassistant:\n  name: fieldlink-tests\n  unit_system: metric\n  time_zone: UTC\n  \
         latitude: 0\n  longitude: 0\n  elevation: 0\n  country: DE\n  currency: EUR\n\
         http:\n  server_host: 127.0.0.1\n  server_port: {http_port}\n\
         logger:\n  default: warning\n  logs:\n    homeassistant.bootstrap: info\n    \
         homeassistant.core: info\n    homeassistant.components.http: info\n    \
         homeassistant.components.mqtt: {mqtt_level}\n{}",
        opts.extra_yaml
    );
    std::fs::write(dir.join("configuration.yaml"), yaml).expect("write configuration.yaml");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_is_hs256_signed_with_the_key() {
        let t = access_token("abc", "k");
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: Value =
            serde_json::from_slice(&b64.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(claims["iss"], "abc");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").expect("key");
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&b64.decode(parts[2]).expect("b64"))
            .expect("signature");
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").as_deref(),
            Some(&b"Wikipedia"[..])
        );
        assert_eq!(dechunk(b"4\r\nWi"), None);
    }
}
