//! The real `mbpoll` (apt package `mbpoll`, libmodbus underneath) as another Modbus
//! master: one-shot reads and writes against a Modbus TCP server on 127.0.0.1.

use std::path::{Path, PathBuf};

/// `mbpoll`, or `None` off CI when it is not installed (under `CI` a missing mbpoll fails
/// the test: the suite must run).
pub fn mbpoll() -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join("mbpoll"))
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "mbpoll is not installed, and CI is set: the Modbus server's suite must run \
             (apt-get install -y mbpoll)"
        );
        eprintln!("SKIPPED: mbpoll is not installed (apt-get install -y mbpoll)");
    }
    found
}

/// mbpoll's name of a table (`-t`): 0 coils, 1 discrete inputs, 3 input registers, 4
/// holding registers.
pub fn table_arg(table: fieldlink_drivers::modbus::Table) -> &'static str {
    use fieldlink_drivers::modbus::Table;
    match table {
        Table::Coil => "0",
        Table::Discrete => "1",
        Table::Input => "3",
        Table::Holding => "4",
    }
}

/// mbpoll at `port` on 127.0.0.1, unit `unit`, `table` from `address` (0-based).
fn command(
    bin: &Path,
    port: u16,
    unit: u8,
    table: fieldlink_drivers::modbus::Table,
    address: u16,
) -> std::process::Command {
    let mut c = std::process::Command::new(bin);
    c.args([
        "-m",
        "tcp",
        "-p",
        &port.to_string(),
        "-a",
        &unit.to_string(),
    ])
    .args(["-t", table_arg(table), "-0", "-r", &address.to_string()]);
    c
}

/// Read `count` values of `table` at `address` (0-based, as on the wire) of `unit`; `Err`
/// carries mbpoll's error line (e.g. `... failed: Illegal data address`).
pub fn read(
    bin: &Path,
    port: u16,
    unit: u8,
    table: fieldlink_drivers::modbus::Table,
    address: u16,
    count: u16,
) -> Result<Vec<i64>, String> {
    let out = command(bin, port, unit, table, address)
        .args(["-c", &count.to_string(), "-o", "2", "-1", "127.0.0.1"])
        .output()
        .unwrap_or_else(|e| panic!("run mbpoll: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    // Lines `[<address>]: \t<value>`, a register above 32767 followed by its signed
    // reading: `40961 (-24575)`.
    let values: Vec<i64> = stdout
        .lines()
        .filter_map(|l| l.split_once("]:"))
        .map(|(_, v)| v.split_whitespace().next().unwrap_or_default())
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("mbpoll value {v:?}: {e}"))
        })
        .collect();
    assert_eq!(
        values.len(),
        usize::from(count),
        "mbpoll printed:\n{stdout}"
    );
    Ok(values)
}

/// Write `values` to holding registers (`Table::Holding`: FC06 for one, FC16 for more) or
/// coils (`Table::Coil`: FC05 / FC15) at `address` of `unit`; `Err` carries mbpoll's
/// error line.
pub fn write(
    bin: &Path,
    port: u16,
    unit: u8,
    table: fieldlink_drivers::modbus::Table,
    address: u16,
    values: &[i64],
) -> Result<(), String> {
    let out = command(bin, port, unit, table, address)
        .args(["-o", "5", "127.0.0.1", "--"])
        .args(values.iter().map(ToString::to_string))
        .output()
        .unwrap_or_else(|e| panic!("run mbpoll: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
