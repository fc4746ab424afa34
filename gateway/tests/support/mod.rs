//! For the tests and benchmarks that run the `fieldlink` binary with its embedded broker
//! on port 0: the address it bound, as the binary reports it. (Benchmarks include this
//! file with `#[path]`.)

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    time::Duration,
};

/// Read a `fieldlink` process's standard error until it tells where the embedded broker
/// listens: the `Embedded broker listening. listen=…` log line (`run`, logs at INFO for
/// `fieldlink::broker`), or `… on the embedded broker at ….` (`demo`). Everything is
/// passed on to our standard error, to the end, so the process never blocks on a full
/// pipe. Panics with what it printed when it ends first, or after `within`.
pub fn broker_addr(stderr: impl Read + Send + 'static, within: Duration) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        let mut found = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if found {
                continue;
            }
            let plain = strip_ansi(&line);
            if let Some(addr) = announced(&plain) {
                found = true;
                let _ = tx.send(Ok(addr));
            } else {
                log.push_str(&plain);
                log.push('\n');
            }
        }
        if !found {
            let _ = tx.send(Err(log));
        }
    });
    match rx.recv_timeout(within) {
        Ok(Ok(addr)) => addr,
        Ok(Err(log)) => panic!("fieldlink ended before its broker listened:\n{log}"),
        Err(_) => panic!("fieldlink's broker did not report its address within {within:?}"),
    }
}

/// The broker's address in one line of the binary's output, if it is the line that
/// announces it.
fn announced(line: &str) -> Option<SocketAddr> {
    let text = if let Some((_, rest)) = line.split_once("Embedded broker listening.") {
        rest.split_once("listen=")?.1
    } else {
        line.split_once("on the embedded broker at ")?.1
    };
    let addr = text.split_whitespace().next()?;
    addr.strip_suffix('.').unwrap_or(addr).parse().ok()
}

/// `line` without ANSI colour sequences (`ESC [ … m`), which the log may carry.
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
