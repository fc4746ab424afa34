//! The gateway as a child process (the `fieldlink` binary), for the tests that need what
//! only a process has: signals (SIGHUP, SIGTERM), its own environment (`NOTIFY_SOCKET`),
//! its standard error. The embedded broker may listen on port 0: the port is read from
//! the `Embedded broker listening. listen=…` log line.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

/// The `fieldlink` binary of this target directory, built (once per test binary) with
/// `cargo build -p fieldlink --bin fieldlink`: `cargo test -p fieldlink-tests` builds the
/// library only, so a binary left from an older build would otherwise be tested. Cargo
/// does nothing when it is up to date. When cargo cannot be run at all, an existing
/// binary is used as it is.
pub fn fieldlink_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test> → target/<profile>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let bin = dir.join("fieldlink");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "fieldlink", "--bin", "fieldlink"]);
        // Without what cargo set for this test (CARGO_PKG_NAME=fieldlink-tests...): build
        // scripts that watch such variables (ring's does) would otherwise be rerun, and
        // half the dependency tree rebuilt, on every test run.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_BIN_NAME",
                    "LD_LIBRARY_PATH",
                ]
                .contains(&k.as_ref())
            {
                cmd.env_remove(k.as_ref());
            }
        }
        if dir.file_name() == Some(OsStr::new("release")) {
            cmd.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cmd.arg("--target-dir").arg(target);
        }
        match cmd.status() {
            Ok(st) => assert!(st.success(), "cargo build -p fieldlink failed: {st}"),
            Err(e) if bin.exists() => {
                eprintln!(
                    "cannot run cargo ({e}); testing the existing {}",
                    bin.display()
                );
            }
            Err(e) => panic!("cannot run cargo to build {}: {e}", bin.display()),
        }
        bin
    })
    .clone()
}

/// A running `fieldlink` process. Its standard error is read by a thread, passed on to
/// ours and kept line by line (without colour codes) for the test to wait on. Dropping
/// it kills the process (SIGKILL).
pub struct Fieldlink {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    ended: Arc<AtomicBool>,
}

impl Fieldlink {
    /// `fieldlink run --config <config>`, logging at INFO (`CHILD_LOG` overrides the
    /// filter), without the systemd variables of the test's own environment.
    pub fn run(config: &Path) -> Fieldlink {
        Self::run_with_env(config, &[])
    }

    /// [`Fieldlink::run`] with extra environment variables for the child only.
    pub fn run_with_env(config: &Path, env: &[(&str, &OsStr)]) -> Fieldlink {
        Self::spawn(
            &[
                OsStr::new("run"),
                OsStr::new("--config"),
                config.as_os_str(),
            ],
            env,
        )
    }

    /// `fieldlink demo --listen 127.0.0.1:0`: the demo house with its simulated devices.
    pub fn demo() -> Fieldlink {
        Self::spawn(
            &[
                OsStr::new("demo"),
                OsStr::new("--listen"),
                OsStr::new("127.0.0.1:0"),
            ],
            &[],
        )
    }

    /// The `fieldlink` binary with `args` and extra environment variables.
    fn spawn(args: &[&OsStr], env: &[(&str, &OsStr)]) -> Fieldlink {
        let filter = std::env::var("CHILD_LOG").unwrap_or_else(|_| {
            "info,rmqtt=warn,rmqtt_net=warn,rmqtt_retainer=error,rmqtt_codec=warn".into()
        });
        let mut cmd = Command::new(fieldlink_bin());
        cmd.args(args)
            .env("RUST_LOG", filter)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn fieldlink");
        let stderr = child.stderr.take().expect("child's stderr");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let ended = Arc::new(AtomicBool::new(false));
        let (l2, e2) = (lines.clone(), ended.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[fieldlink] {line}");
                l2.lock().expect("lock").push(strip_ansi(&line));
            }
            e2.store(true, Ordering::SeqCst);
        });
        Fieldlink {
            child,
            lines,
            ended,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Number of lines of standard error so far (a mark for [`Fieldlink::wait_log`]).
    pub fn log_len(&self) -> usize {
        self.lines.lock().expect("lock").len()
    }

    /// The lines of standard error from line `from` on.
    pub fn log_since(&self, from: usize) -> Vec<String> {
        let l = self.lines.lock().expect("lock");
        l.get(from..).map(<[String]>::to_vec).unwrap_or_default()
    }

    /// Wait until a line at index `from` or later contains `text`; its index, or `None`
    /// at the deadline or when the process closed its standard error without it.
    pub async fn wait_log(&self, from: usize, text: &str, within: Duration) -> Option<usize> {
        self.wait_log_matching(from, |l| l.contains(text), within)
            .await
    }

    /// Wait until a line at index `from` or later satisfies `pred`; its index, or `None` at
    /// the deadline or when the process closed its standard error without one.
    pub async fn wait_log_matching(
        &self,
        from: usize,
        mut pred: impl FnMut(&str) -> bool,
        within: Duration,
    ) -> Option<usize> {
        let deadline = Instant::now() + within;
        loop {
            let ended = self.ended.load(Ordering::SeqCst);
            {
                let l = self.lines.lock().expect("lock");
                if let Some(i) = l
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find_map(|(i, line)| pred(line).then_some(i))
                {
                    return Some(i);
                }
            }
            if ended || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`Fieldlink::wait_log`] that panics, with the log since `from`, when the line does
    /// not come.
    pub async fn expect_log(&self, from: usize, text: &str, within: Duration) -> usize {
        match self.wait_log(from, text, within).await {
            Some(i) => i,
            None => panic!(
                "fieldlink did not log `{text}` within {within:?}; its log since then:\n{}",
                self.log_since(from).join("\n")
            ),
        }
    }

    /// The embedded broker's port, from the `Embedded broker listening. listen=…` line.
    pub async fn broker_port(&self, within: Duration) -> u16 {
        let i = self
            .expect_log(0, "Embedded broker listening.", within)
            .await;
        let line = self.lines.lock().expect("lock")[i].clone();
        line.split_once("listen=")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
            .unwrap_or_else(|| panic!("no address in `{line}`"))
    }

    /// Send `signal` (`"-HUP"`, `"-TERM"`…) with kill(1).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill {signal} {}", self.child.id());
    }

    /// Wait for the process to end; its exit status, or `None` at the deadline.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Fieldlink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `line` without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What `fieldlink check --config <config>` prints for a configuration with errors: its
/// diagnostic lines (standard error, without the closing `… error(s)` summary) and its
/// exit code.
pub fn check_diagnostics(config: &Path) -> (Vec<String>, Option<i32>) {
    let out = Command::new(fieldlink_bin())
        .args(["check", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run fieldlink check");
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("error(s); the configuration was not loaded"))
        .map(strip_ansi)
        .filter(|l| !l.trim().is_empty())
        .collect();
    (lines, out.status.code())
}
