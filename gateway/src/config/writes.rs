//! How a point is written (#23): `write_address` (a separate write register),
//! `write_only` (never read) and `rewrite_every` (a kept-alive setpoint). Checked after
//! the point's own `writable`, with the source its bus kind gave it.

use std::time::Duration;

use super::{noun, Cx, PointFile, PublishName, Validator};
use crate::model::{GpioMode, Source, Table, ValueType};

/// What the write keys give a point (`write_address` goes into its Modbus source).
pub(super) struct Writes {
    /// Never read; implies writable.
    pub(super) write_only: bool,
    /// Period of the rewrite of the last value `/set` wrote.
    pub(super) rewrite_every: Option<Duration>,
}

/// The hint for a point that cannot be written, by what it is.
fn not_writable_hint(source: &Source) -> &'static str {
    match source {
        Source::Modbus(m) if m.table.is_bits() && m.table != Table::Coil => {
            "discrete inputs are read-only in Modbus; use `table: coil` for a writable bit"
        }
        Source::Modbus(m) if m.table == Table::Input => {
            "input registers are read-only in Modbus; use `table: holding` for a writable register"
        }
        Source::Modbus(_) => "add `writable: true`",
        Source::Gpio(_) => "only a `mode: output` line can be written",
        Source::Uart(_) => r#"add `command` (e.g. `command: "SET {value}\n"`) to make it writable"#,
    }
}

impl Validator {
    /// `write_address`, `write_only` and `rewrite_every` of point `p` (`cx`) of type `ty`;
    /// `writable` is what its own key and bus kind made it. Sets the Modbus source's
    /// `write_address`.
    pub(super) fn writes(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        source: &mut Source,
        ty: ValueType,
        writable: bool,
    ) -> Writes {
        let write_only = self.write_only(cx, p, source);
        let writable = writable || write_only;
        self.write_address(cx, p, source, ty, (writable, write_only));
        Writes {
            write_only,
            rewrite_every: self.rewrite_every(cx, p, source, writable),
        }
    }

    /// `write_only`: Modbus holding registers and coils that are written, never read.
    fn write_only(&mut self, cx: &Cx, p: &PointFile, source: &Source) -> bool {
        let Some(w) = p.write_only.as_ref().filter(|w| w.value) else {
            return false;
        };
        let wcx = cx.at("write_only");
        let before = self.error_count();
        match source {
            Source::Gpio(_) => self.error(
                &wcx,
                w,
                "`write_only` does not apply to a GPIO point: the gateway knows an output's \
                 level and publishes it at start and after every write",
                Some("remove `write_only`; `mode: output` makes the line writable".into()),
            ),
            Source::Uart(_) => self.error(
                &wcx,
                w,
                "`write_only` does not apply to a UART point: one without `field` is already \
                 command-only (`/set` writes its `command` and publishes the value once written)",
                Some(
                    "remove `write_only`, and `field` if the device never reports the value".into(),
                ),
            ),
            Source::Modbus(m) if matches!(m.table, Table::Input | Table::Discrete) => self.error(
                &wcx,
                w,
                format!(
                    "{}s are read-only in Modbus: a `write_only` point must be writable",
                    noun(m.table)
                ),
                Some("use `table: holding` (registers) or `table: coil` (bits)".into()),
            ),
            Source::Modbus(m) => {
                if let Some(b) = p.bit.as_ref().filter(|_| m.bit.is_some()) {
                    self.error(
                        &cx.at("bit"),
                        b,
                        "a `bit` is written by reading its register, changing the bit and \
                         writing the register back; a `write_only` point is never read",
                        Some("map the whole register (`type: u16`) and send its value".into()),
                    );
                }
            }
        }
        if let Some(f) = p.writable.as_ref().filter(|f| !f.value) {
            self.error(
                &cx.at("writable"),
                f,
                "`writable: false` contradicts `write_only: true`",
                Some("remove `writable` (`write_only` implies `writable: true`)".into()),
            );
        }
        if let Some(e) = p
            .publish
            .as_ref()
            .filter(|e| e.value == PublishName::EveryPoll)
        {
            self.warn(
                &cx.at("publish"),
                e,
                "`publish: every_poll` has no effect on a `write_only` point: it is never \
                 polled; its state is published after each acknowledged write",
            );
        }
        if let Some(h) = &p.heartbeat {
            self.warn(
                &cx.at("heartbeat"),
                h,
                "`heartbeat` has no effect on a `write_only` point: it is never polled; its \
                 state is published after each acknowledged write",
            );
        }
        self.error_count() == before
    }

    /// `write_address`: a holding register or coil of a writable Modbus point.
    fn write_address(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        source: &mut Source,
        ty: ValueType,
        (writable, write_only): (bool, bool),
    ) {
        let Some(a) = &p.write_address else {
            return;
        };
        let acx = cx.at("write_address");
        let m = match source {
            Source::Modbus(m) => m,
            Source::Gpio(_) => {
                return self.error(
                    &acx,
                    a,
                    "`write_address` applies to Modbus points only",
                    Some(
                        "a GPIO output is written on its own `pin`; remove `write_address`".into(),
                    ),
                )
            }
            Source::Uart(_) => {
                return self.error(
                    &acx,
                    a,
                    "`write_address` applies to Modbus points only",
                    Some(
                        "a UART point writes its `command` line; put the device's address in it \
                         (or in `params`)"
                            .into(),
                    ),
                )
            }
        };
        if matches!(m.table, Table::Input | Table::Discrete) {
            return self.error(
                &acx,
                a,
                format!(
                    "{}s are read-only in Modbus: nothing can be written at `write_address`",
                    noun(m.table)
                ),
                Some(
                    "read the value here and write it through a `table: holding` (or `coil`) \
                     point, or use that table for this point"
                        .into(),
                ),
            );
        }
        if !writable {
            let hint = if p.writable.is_some() {
                "set `writable: true`"
            } else {
                "add `writable: true` so `<topic>/set` writes it"
            };
            return self.error(
                &acx,
                a,
                "`write_address` needs a writable point",
                Some(hint.into()),
            );
        }
        let at = self.modbus_address(&acx, a, m.table, ty);
        if write_only {
            self.warn(
                &acx,
                a,
                "a `write_only` point is never read at `address`: it is written at \
                 `write_address`; `address` only names it",
            );
        } else if at == m.address && (0..=65535).contains(&a.value) {
            self.warn(
                &acx,
                a,
                format!("`write_address` {at} is the point's `address`: remove it"),
            );
        }
        m.write_address = Some(at);
    }

    /// `rewrite_every`: a positive period on a writable point that is not a pulse.
    fn rewrite_every(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        source: &Source,
        writable: bool,
    ) -> Option<Duration> {
        let r = p.rewrite_every.as_ref()?;
        let rcx = cx.at("rewrite_every");
        if r.value.0.is_zero() {
            self.error(
                &rcx,
                r,
                "rewrite_every must be greater than zero",
                Some("remove it to write only on `/set`".into()),
            );
            return None;
        }
        if !writable {
            self.error(
                &rcx,
                r,
                "`rewrite_every` needs a writable point: it writes the last value `/set` wrote",
                Some(not_writable_hint(source).into()),
            );
            return None;
        }
        if let Source::Gpio(g) = source {
            if matches!(g.mode, GpioMode::Output { pulse: Some(_), .. }) {
                self.error(
                    &rcx,
                    r,
                    "`rewrite_every` on a `pulse` output would pulse it again every period",
                    Some("remove `rewrite_every`; a GPIO output holds its level by itself".into()),
                );
                return None;
            }
        }
        Some(r.value.0)
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use crate::model::{Model, Table};

    fn model(points: &str) -> Model {
        let gateway = "id: t\nmappings: m.yaml\n";
        let mapping = format!(
            "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1 }}\n  - {{ id: l, kind: uart, path: /dev/null }}\n  - {{ id: io, kind: gpio, backend: simulated }}\ndevices:\n{points}"
        );
        match crate::config::check_sources(Path::new("/g.yaml"), gateway, |_, _| {
            vec![("m.yaml".into(), mapping.clone())]
        }) {
            Ok(c) => c.model,
            Err(d) => panic!("{d:?}"),
        }
    }

    #[test]
    fn the_write_keys_reach_the_model() {
        let m = model(
            "  - id: d\n    bus: b\n    max_read_registers: 2\n    points:\n\
             \x20     - { topic: a, table: holding, address: 0, type: i32, writable: true, write_address: 100, rewrite_every: 30s }\n\
             \x20     - { topic: b, table: coil, address: 1, writable: true, write_address: 9 }\n\
             \x20     - { topic: c, table: holding, address: 2, type: u64, write_only: true }\n\
             \x20 - id: w\n    bus: b\n    unit: 2\n    points:\n\
             \x20     - { topic: e, table: holding, address: 0, write_only: true, rewrite_every: 1m }\n\
             \x20 - id: u\n    bus: l\n    points:\n\
             \x20     - { topic: f, command: \"R {value}\\n\", rewrite_every: 5s }\n\
             \x20 - id: g\n    bus: io\n    points:\n\
             \x20     - { topic: h, pin: 4, mode: output, rewrite_every: 1m }\n",
        );
        let p: Vec<_> = m.points().collect();
        let a = p[0].modbus().expect("modbus");
        assert_eq!((a.address, a.write_address), (0, Some(100)));
        assert_eq!(p[0].rewrite_every, Some(Duration::from_secs(30)));
        assert!(p[0].readable().is_ok() && !p[0].write_only);
        let b = p[1].modbus().expect("modbus");
        assert_eq!((b.table, b.write_address), (Table::Coil, Some(9)));
        // Written only: writable, not readable, and larger than one read may be.
        assert!(p[2].write_only && p[2].writable && p[2].readable().is_err());
        assert_eq!(p[2].modbus().and_then(|m| m.write_address), None);
        let devices: Vec<_> = m.devices().collect();
        assert!(devices[0].polled(), "a device with a read point is polled");
        assert!(!devices[1].polled(), "a device of write-only points is not");
        assert_eq!(p[3].rewrite_every, Some(Duration::from_secs(60)));
        // Every bus kind whose points are written can keep a value alive.
        assert_eq!(p[4].rewrite_every, Some(Duration::from_secs(5)));
        assert!(
            p[4].readable().is_err(),
            "a UART point without `field` is command-only"
        );
        assert_eq!(p[5].rewrite_every, Some(Duration::from_secs(60)));
        assert!(p[5].readable().is_ok());
    }

    #[test]
    fn a_changed_write_key_changes_the_device_for_a_reload() {
        let dev = |extra: &str| {
            let m = model(&format!(
                "  - id: d\n    bus: b\n    points:\n      - {{ topic: a, table: holding, address: 0, writable: true{extra} }}\n"
            ));
            m.buses[0].devices[0].clone()
        };
        let base = dev(", rewrite_every: 10s");
        assert!(crate::model::same(&base, &dev(", rewrite_every: 10s")));
        assert!(!crate::model::same(&base, &dev(", rewrite_every: 20s")));
        assert!(!crate::model::same(
            &base,
            &dev(", rewrite_every: 10s, write_address: 5")
        ));
        assert!(!crate::model::same(
            &base,
            &dev(", rewrite_every: 10s, write_only: true")
        ));
    }
}
