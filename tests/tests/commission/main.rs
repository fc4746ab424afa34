//! Commissioning from the command line: the real `fieldlink` binary's `probe`, `scan` and
//! `write` against tokio-modbus servers with known registers, over Modbus TCP, RTU on a
//! pseudo-terminal pair and RTU through a simulated TCP converter.
//!
//! Every expected value is computed here from the registers the server holds, word by
//! word, not through the gateway's codec.

mod input;
mod probe;
mod scan;
mod write;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    sync::{mpsc, Arc},
    time::Duration,
};

use fieldlink_drivers::{
    modbus::{rtu::Parity, Table},
    sim::{pty_pair, SimDevice, SimServer},
};
use fieldlink_tests::{eventually, process::fieldlink_bin};
use serde_json::Value as Json;

/// `fieldlink <args>`, run to its end off the test's runtime (the simulators run on it).
async fn fieldlink(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(fieldlink_bin())
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run fieldlink")
    })
    .await
    .expect("join")
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON object a command printed, after checking that it succeeded.
fn json_of(o: &Output) -> Json {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

const ORDERS: [&str; 4] = ["ABCD", "CDAB", "BADC", "DCBA"];

/// The registers of a 32-bit value in a word order: `ABCD` high word first; `CDAB` low
/// word first; `BADC`, `DCBA` the same with the bytes of each word swapped.
fn regs32(bits: u32, order: &str) -> [u16; 2] {
    let (hi, lo) = ((bits >> 16) as u16, bits as u16);
    match order {
        "ABCD" => [hi, lo],
        "CDAB" => [lo, hi],
        "BADC" => [hi.swap_bytes(), lo.swap_bytes()],
        _ => [lo.swap_bytes(), hi.swap_bytes()],
    }
}

/// The same for a 64-bit value.
fn regs64(bits: u64, order: &str) -> [u16; 4] {
    let w = [
        (bits >> 48) as u16,
        (bits >> 32) as u16,
        (bits >> 16) as u16,
        bits as u16,
    ];
    match order {
        "ABCD" => w,
        "CDAB" => [w[3], w[2], w[1], w[0]],
        "BADC" => w.map(u16::swap_bytes),
        _ => [w[3], w[2], w[1], w[0]].map(u16::swap_bytes),
    }
}

/// The value a pair of registers holds as `ty` in `order`, computed from the words.
fn pair_value(w0: u16, w1: u16, ty: &str, order: &str) -> f64 {
    let bits = match order {
        "ABCD" => (u32::from(w0) << 16) | u32::from(w1),
        "CDAB" => (u32::from(w1) << 16) | u32::from(w0),
        "BADC" => (u32::from(w0.swap_bytes()) << 16) | u32::from(w1.swap_bytes()),
        _ => (u32::from(w1.swap_bytes()) << 16) | u32::from(w0.swap_bytes()),
    };
    match ty {
        "u32" => f64::from(bits),
        "i32" => f64::from(bits as i32),
        _ => f64::from(f32::from_bits(bits)),
    }
}

/// One line on standard error and the exit code.
fn refused(o: &Output) -> (Option<i32>, String) {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    (o.status.code(), lines[0].to_string())
}
