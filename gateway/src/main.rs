//! The `fieldlink` command line: run, check, demo, watch, the commissioning commands
//! probe, scan and write, and profiles.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fieldlink::{
    config::{self, Severity},
    shutdown,
};
use fieldlink_drivers::modbus::Planner;
use tracing::error;

/// Exit code for a configuration error (EX_CONFIG from sysexits.h).
const EX_CONFIG: u8 = 78;

/// Exit code for a command line that does not parse (EX_USAGE from sysexits.h).
const EX_USAGE: i32 = 64;

/// fieldlink: a gateway from Modbus/UART/GPIO field devices to MQTT.
#[derive(Parser)]
#[command(name = "fieldlink", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The gateway file.
        #[arg(long, short, default_value = "/etc/fieldlink/gateway.yaml")]
        config: PathBuf,
    },
    /// Validate the configuration, print every problem and a summary (exit 78 on error).
    Check {
        /// The gateway file.
        #[arg(long, short, default_value = "/etc/fieldlink/gateway.yaml")]
        config: PathBuf,
    },
    /// Run the example house against simulated devices and the embedded broker.
    Demo {
        /// Where the embedded broker listens.
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: SocketAddr,
    },
    /// Subscribe and print `topic payload` lines.
    Watch {
        /// Topic filter.
        #[arg(default_value = "#")]
        filter: String,
        /// Broker host.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Broker port.
        #[arg(long, default_value_t = 1883)]
        port: u16,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Log in as this user (a broker with `users_file`).
        #[arg(long, short = 'u')]
        username: Option<String>,
        /// Read the password from this file (first line), never from the command line.
        #[arg(long, requires = "username")]
        password_file: Option<std::path::PathBuf>,
    },
    /// Read a range of registers or bits and show every decoding of each address
    /// (commissioning a new device).
    Probe(fieldlink::commission::ProbeArgs),
    /// Find the unit ids that answer on a bus, and what they say they are.
    Scan(fieldlink::commission::ScanArgs),
    /// Write one value as a `/set` on such a point would, and read it back.
    Write(fieldlink::commission::WriteArgs),
    /// Print the JSON Schema of a file, for editors (README "Editor support").
    Schema {
        /// Which file.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(
            config::schema::SCHEMAS.iter().map(|(name, _)| *name)
        ))]
        file: String,
    },
    /// List the device profiles (shipped, and with --config your own), or show one.
    Profiles(fieldlink::profiles_cmd::ProfilesArgs),
}

/// The log filter when `RUST_LOG` is not set. rmqtt logs (through `log`) every ordinary
/// disconnect at INFO and more at DEBUG; the gateway logs connects, disconnects and
/// refusals itself (broker::policy).
const LOG_FILTER: &str = "info,rmqtt=warn,rmqtt_net=warn,rmqtt_retainer=error,rmqtt_codec=warn";

fn init_logs(default_filter: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    // Colours only on a terminal; under systemd's journal (it sets JOURNAL_STREAM for the
    // streams it connects) no timestamp either: the journal stamps every line itself.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    // Every field escaped: what clients send (ids, user names, topics) never writes a
    // line of its own or a terminal escape (`fieldlink::logs`), rmqtt's lines included.
    let layer = tracing_subscriber::fmt::layer()
        .fmt_fields(fieldlink::logs::EscapedFields)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(true);
    let registry = tracing_subscriber::registry().with(filter);
    if journal {
        registry.with(layer.without_time()).init();
    } else {
        registry.with(layer).init();
    }
    fieldlink::broker::panic_policy();
}

/// Keep glibc from creating one malloc arena per thread: the gateway does little
/// concurrent allocation, and per-thread arenas cost ~9 MiB of RSS at 10 000 points/s
/// (BENCHMARKS.md). An explicit `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only adjusts glibc's malloc parameters; it is called once at
        // start-up, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Give the heap that reading the configuration used back to the system: glibc keeps
/// freed memory below its top chunk, and a large mapping's parse would otherwise stay in
/// the resident set for the life of the process.
fn trim_heap() {
    fieldlink::trim_heap();
}

/// `fieldlink schema <file>`: the schema as pretty JSON on stdout.
fn print_schema(file: &str) -> ExitCode {
    match config::schema::schema(file) {
        Some(schema) => {
            println!("{schema:#}");
            ExitCode::SUCCESS
        }
        None => ExitCode::from(EX_USAGE as u8),
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        if e.use_stderr() {
            let _ = e.print();
            std::process::exit(EX_USAGE);
        }
        e.exit() // --help, --version
    });
    // The commissioning commands print what they found; the transport's own log lines
    // (a port opened, a connection refused) would only repeat their one line.
    let commissioning = matches!(
        cli.command,
        Command::Probe(_) | Command::Scan(_) | Command::Write(_) | Command::Profiles(_)
    );
    init_logs(if commissioning { "error" } else { LOG_FILTER });
    match cli.command {
        Command::Probe(a) => commission(fieldlink::commission::Commission::Probe(a)),
        Command::Scan(a) => commission(fieldlink::commission::Commission::Scan(a)),
        Command::Write(a) => commission(fieldlink::commission::Commission::Write(a)),
        Command::Profiles(a) => ExitCode::from(fieldlink::profiles_cmd::run(
            &a,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        Command::Check { config } => check(&config),
        Command::Schema { file } => print_schema(&file),
        Command::Run { config } => {
            let checked = match config::load(&config) {
                Ok(c) => c,
                Err(diags) => return report(&diags),
            };
            let config::Checked {
                model, warnings, ..
            } = checked;
            for w in &warnings {
                eprintln!("{w}");
            }
            drop(warnings);
            trim_heap();
            exit(runtime().and_then(|rt| {
                rt.block_on(async {
                    let (trigger, shutdown) = shutdown::channel();
                    let (reload, requests) = tokio::sync::mpsc::channel(1);
                    tokio::spawn(signals(trigger, Some(reload)));
                    let path = config.clone();
                    let hooks = fieldlink::Hooks {
                        reloads: Some(fieldlink::Reloads {
                            requests,
                            load: std::sync::Arc::new(move || config::load(&path)),
                        }),
                        ..fieldlink::Hooks::default()
                    };
                    fieldlink::run_with(model, shutdown, hooks).await?;
                    Ok(())
                })
            }))
        }
        Command::Demo { listen } => exit(runtime().and_then(|rt| {
            rt.block_on(async {
                let (trigger, shutdown) = shutdown::channel();
                tokio::spawn(signals(trigger, None));
                // Printed once the broker listens: with `--listen 127.0.0.1:0` the port is
                // only known then.
                let (bound, mut at) = tokio::sync::watch::channel::<Option<fieldlink::broker::Bound>>(None);
                tokio::spawn(async move {
                    if let Ok(b) = at.wait_for(Option::is_some).await {
                        if let Some(b) = *b {
                            eprintln!(
                                "fieldlink demo: simulated house on the embedded broker at {}.\n\
                                 Watch it with:  cargo run --release -p fieldlink -- watch --port {}   (Ctrl-C stops)",
                                b.mqtt,
                                b.mqtt.port()
                            );
                        }
                    }
                });
                fieldlink::demo::run(listen, shutdown, Some(bound)).await?;
                Ok(())
            })
        })),
        Command::Watch {
            filter,
            host,
            port,
            count,
            username,
            password_file,
        } => exit(runtime().and_then(|rt| {
            let login = login(username, password_file)?;
            rt.block_on(watch(filter, host, port, count, login))
        })),
    }
}

/// Run a commissioning command: its results on standard output, or one line on standard
/// error and a sysexits code (a `--config` that does not load: its diagnostics, 78).
fn commission(cmd: fieldlink::commission::Commission) -> ExitCode {
    use fieldlink::commission::CommissionError;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(71); // EX_OSERR
        }
    };
    match rt.block_on(fieldlink::commission::run(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CommissionError::Config(diags)) => report(&diags),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "Stopped.");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM stop the gateway; SIGHUP asks for a reload (`reload`; the demo
/// has no configuration file, so there it is only logged). SIGHUP would end the process
/// by default, and `systemctl reload` with it.
async fn signals(
    trigger: shutdown::ShutdownTrigger,
    reload: Option<tokio::sync::mpsc::Sender<()>>,
) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    trigger.trigger();
                    return;
                }
            };
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = term.recv() => break,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    match &reload {
                        // One request waiting is enough: it reads the files as they are then.
                        Some(r) => { let _ = r.try_send(()); }
                        None => tracing::warn!("SIGHUP: the demo has no configuration file to reload."),
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    trigger.trigger();
}

fn report(diags: &[config::Diagnostic]) -> ExitCode {
    for d in diags {
        eprintln!("{d}");
    }
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    eprintln!("{errors} error(s); the configuration was not loaded.");
    ExitCode::from(EX_CONFIG)
}

fn check(config: &std::path::Path) -> ExitCode {
    use fieldlink::model::BusKind;
    let checked = match config::load(config) {
        Ok(c) => c,
        Err(diags) => return report(&diags),
    };
    for w in &checked.warnings {
        println!("{w}");
    }
    let m = &checked.model;
    let devices = m.devices().count();
    let points: usize = m.devices().map(|d| d.points.len()).sum();
    let mut lines = 0usize;
    let mut uart = 0usize;
    for bus in &m.buses {
        match bus.kind {
            BusKind::Gpio { .. } => {
                lines += bus.devices.iter().map(|d| d.points.len()).sum::<usize>();
            }
            BusKind::Uart { .. } => uart += bus.devices.len(),
            BusKind::ModbusTcp { .. }
            | BusKind::ModbusRtu { .. }
            | BusKind::ModbusRtuOverTcp { .. } => {}
        }
    }
    let (requests, per_second, cadences) = modbus_requests(m);
    let mut gpio = if lines > 0 {
        format!(", {lines} GPIO line(s)")
    } else {
        String::new()
    };
    if uart > 0 {
        gpio.push_str(&format!(", {uart} UART device(s)"));
    }
    println!(
        "OK: {} file(s), {} bus(es), {devices} device(s), {points} point(s), {requests} Modbus request(s) per poll cycle ({per_second:.1} requests/s){gpio}.",
        checked.files.len(),
        m.buses.len(),
    );
    if !cadences.is_empty() {
        println!("Modbus requests per minute, by cadence:");
        for line in &cadences {
            println!("  {line}");
        }
    }
    print_discovery(m);
    if let Some(e) = &m.mqtt.embedded {
        println!(
            "Embedded broker: {}, {}, {}, anonymous clients {}.",
            e.listen,
            e.users
                .as_ref()
                .map_or("no users file".to_string(), |u| format!(
                    "{} user(s)",
                    u.len()
                )),
            if e.acl.is_some() {
                "rights from the acl file"
            } else {
                "every admitted client may write all but the gateway's topics"
            },
            if e.allow_anonymous {
                "admitted"
            } else {
                "refused"
            },
        );
        if m.commissioning {
            println!(
                "Commissioning through the gateway: on, requests on `{}` from {}.",
                m.topics().bus_request("<bus>"),
                if e.acl.is_some() {
                    "clients the acl file lets write there"
                } else {
                    "clients on this machine (loopback)"
                }
            );
        }
    }
    if let Some(s) = &m.modbus_server {
        println!("{}", modbus_server_line(s));
    }
    if let Some(u) = &m.mqtt.upstream {
        println!(
            "Upstream: {} as `{}`{}, queue {} (at most {} MiB, written every {}).",
            u.url,
            u.client_id,
            if u.prefix.is_empty() {
                String::new()
            } else {
                format!(", topics under `{}`", u.prefix)
            },
            u.queue.dir.display(),
            u.queue.max_size >> 20,
            humantime::format_duration(u.queue.flush_interval),
        );
    }
    ExitCode::SUCCESS
}

/// `check`'s line on the Modbus server: `Modbus server: 127.0.0.1:5020 (loopback
/// clients), units 1 → meter, 3 → inverter; writes off.`
fn modbus_server_line(s: &fieldlink::model::ModbusServer) -> String {
    let clients = if s.allow == fieldlink::model::Allow::loopback() {
        "loopback clients".to_string()
    } else {
        let nets: Vec<String> = s.allow.0.iter().map(ToString::to_string).collect();
        format!("clients from {}", nets.join(", "))
    };
    let units = if s.units.is_empty() {
        "no units".to_string()
    } else {
        let list: Vec<String> = s.units.iter().map(|(u, d)| format!("{u} → {d}")).collect();
        format!("units {}", list.join(", "))
    };
    let age = s.max_age.map_or("3 × their cadence".to_string(), |a| {
        humantime::format_duration(a).to_string()
    });
    format!(
        "Modbus server: {} ({clients}), {units}; writes {}; values at most {age} old.",
        s.listen,
        if s.writes { "on" } else { "off" },
    )
}

/// `check`'s count of Modbus requests: per poll cycle (every point due), per second, and
/// a line per device with its requests per minute by cadence.
fn modbus_requests(m: &fieldlink::Model) -> (usize, f64, Vec<String>) {
    use fieldlink::model::BusKind;
    let mut requests = 0usize;
    let mut per_second = 0f64;
    let mut cadences = Vec::new();
    let modbus = m
        .buses
        .iter()
        .filter(|b| {
            matches!(
                b.kind,
                BusKind::ModbusTcp { .. }
                    | BusKind::ModbusRtu { .. }
                    | BusKind::ModbusRtuOverTcp { .. }
            )
        })
        .flat_map(|b| b.devices.iter());
    for d in modbus {
        let mut items: Vec<_> = d
            .points
            .iter()
            // A write_only point is never read (#23).
            .filter(|p| !p.write_only)
            .filter_map(|p| {
                p.modbus().map(|m| fieldlink_drivers::modbus::PlanItem {
                    table: m.table,
                    address: m.address,
                    count: m.count(p.ty),
                })
            })
            .collect();
        // Scale factor registers are read too (#25).
        let read: Vec<_> = d
            .points
            .iter()
            .filter(|p| !p.write_only)
            .filter_map(|p| p.modbus().copied())
            .collect();
        items.extend(fieldlink::buses::scale_registers(&read).0);
        let limits = d.modbus().map(|m| m.read_limits()).unwrap_or_default();
        requests += Planner::with_limits(items, limits).plan().len();
        let (line, per_minute) = cadence_line(d);
        per_second += per_minute / 60.0;
        cadences.push(line);
    }
    (requests, per_second, cadences)
}

/// `check`'s line on a Modbus device's requests by cadence (points at their own cadence):
/// `meter: 1s → 2 reads (120/min), 1m → 1 read (1/min); 121 requests/min`, and its
/// requests per minute.
fn cadence_line(d: &fieldlink::model::Device) -> (String, f64) {
    // 120, 60.5, 0.02: two decimals at most, none that are zero.
    let num = |x: f64| {
        let digits = if x >= 100.0 {
            0
        } else if x >= 10.0 {
            1
        } else {
            2
        };
        let s = format!("{x:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if d.points.is_empty() {
        return (format!("{}: no points", d.id), 0.0);
    }
    let rates = fieldlink::buses::requests_per_minute(d);
    let total: f64 = rates.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = rates
        .iter()
        .map(|(every, n)| {
            let every_text = humantime::format_duration(*every);
            let polls = 60.0 / every.as_secs_f64();
            let reads = num(n / polls);
            if *n < 1e-9 {
                format!("{every_text} → rides along (0/min)")
            } else {
                let s = if reads == "1" { "" } else { "s" };
                format!("{every_text} → {reads} read{s} ({}/min)", num(*n))
            }
        })
        .collect();
    let line = if parts.len() > 1 {
        format!(
            "{}: {}; {} requests/min",
            d.id,
            parts.join(", "),
            num(total)
        )
    } else {
        format!("{}: {}", d.id, parts.join(", "))
    };
    (line, total)
}

/// `check`'s line on Home Assistant discovery: how many entities of each kind.
fn print_discovery(m: &fieldlink::Model) {
    let Some(ha) = &m.homeassistant else {
        println!("Home Assistant discovery: off.");
        return;
    };
    let entities = fieldlink::homeassistant::counts(m);
    let total: usize = entities.values().sum();
    let list: Vec<String> = entities.iter().map(|(c, n)| format!("{n} {c}")).collect();
    println!(
        "Home Assistant discovery on `{}/`: {total} entit{} ({}).",
        ha.discovery_prefix,
        if total == 1 { "y" } else { "ies" },
        list.join(", ")
    );
}

/// The user name and the password read from its file, for `watch`.
fn login(
    username: Option<String>,
    password_file: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<(String, String)>> {
    let Some(user) = username else {
        return Ok(None);
    };
    let password = match password_file {
        Some(f) => std::fs::read_to_string(&f)
            .with_context(|| format!("cannot read the password file {}", f.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    };
    Ok(Some((user, password)))
}

async fn watch(
    filter: String,
    host: String,
    port: u16,
    count: Option<u64>,
    login: Option<(String, String)>,
) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let id = format!("fieldlink-watch-{}", std::process::id());
    let mut o = MqttOptions::new(id, host.clone(), port);
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    let mut seen = 0u64;
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                client
                    .subscribe(filter.clone(), QoS::AtMostOnce)
                    .await
                    .context("subscribe")?;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{} {}", p.topic, String::from_utf8_lossy(&p.payload))
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return Ok(()); // stdout closed (e.g. piped into `head`)
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    eprintln!("cannot reach the broker at {host}:{port}: {e}; retrying");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
