//! GPIO (`gpio` buses): the values of its keys and the GPIO half of a point.

use std::{path::Path, time::Duration};

use serde::Deserialize;

use super::{at, PointFile, TypeName, Validator};
use crate::model::{GpioMode, GpioPoint, OnShutdown, Pull};

/// GPIO controller.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GpioBackendName {
    /// A Raspberry Pi through rppal (every model, Pi 5 included).
    Rppal,
    /// A simulated board: inputs float at their pull level, outputs only change state.
    Simulated,
}

/// Direction of a GPIO point.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GpioModeName {
    /// Read the line; publish its debounced changes.
    Input,
    /// Drive the line; writable through `<topic>/set`.
    Output,
}

/// Pull resistor of a GPIO input.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PullName {
    /// Internal pull-up.
    Up,
    /// Internal pull-down.
    Down,
    /// None.
    None,
}

/// State of a GPIO output when the gateway stops.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdownName {
    /// Leave as it is.
    Keep,
    /// Logical off.
    Off,
    /// Logical on.
    On,
    /// Physical low.
    Low,
    /// Physical high.
    High,
}

/// Highest BCM pin of the 40-pin header.
pub const GPIO_MAX_PIN: u8 = 27;

/// Debounce of a GPIO input unless the mapping says otherwise.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);

impl Validator {
    /// The GPIO half of a point: pin, direction and its settings.
    pub(super) fn gpio_part(&mut self, file: &Path, path: &str, p: &PointFile) -> GpioPoint {
        self.no_uart_keys(file, path, p, "a gpio");
        let modbus_keys = [
            ("table", p.table.as_ref().map(at)),
            ("address", p.address.as_ref().map(at)),
            ("length", p.length.as_ref().map(at)),
            ("word_order", p.word_order.as_ref().map(at)),
            ("bit", p.bit.as_ref().map(at)),
            ("scale", p.scale.as_ref().map(at)),
            ("offset", p.offset.as_ref().map(at)),
            ("precision", p.precision.as_ref().map(at)),
            ("deadband", p.deadband.as_ref().map(at)),
            ("min", p.min.as_ref().map(at)),
            ("max", p.max.as_ref().map(at)),
        ];
        self.reject_keys(
            file,
            path,
            &modbus_keys,
            |key| format!("`{key}` does not apply to a GPIO point (one line, on or off)"),
            "remove it; a GPIO point has `pin`, `mode`, `pull`, `active_low`, `debounce`, `initial`, `on_shutdown`, `pulse`",
        );
        if let Some(t) = p.ty.as_ref().filter(|t| t.value != TypeName::Bool) {
            self.error(
                file,
                at(t),
                format!("{path}.type"),
                "a GPIO point is `bool`",
                Some("remove `type`; use `values: {ON: true, OFF: false}` for named states".into()),
            );
        }
        let pin = match &p.pin {
            None => {
                self.error(
                    file,
                    at(&p.topic),
                    path.to_string(),
                    "a GPIO point needs `pin`",
                    Some("add `pin: 17` (the BCM number: GPIO17 is physical pin 11)".into()),
                );
                0
            }
            Some(pn) if (0..=i64::from(GPIO_MAX_PIN)).contains(&pn.value) => {
                let pin = pn.value as u8;
                if let Some((f0, l0, t0)) = self.pins.get(&pin) {
                    let msg = format!(
                        "pin {pin} is already used by `{t0}` at {}:{}:{}",
                        f0.display(),
                        l0.0,
                        l0.1
                    );
                    self.error(
                        file,
                        at(pn),
                        format!("{path}.pin"),
                        msg,
                        Some("every GPIO line can serve one point".into()),
                    );
                } else {
                    self.pins
                        .insert(pin, (file.to_path_buf(), at(pn), p.topic.value.clone()));
                }
                pin
            }
            Some(pn) => {
                self.error(
                    file,
                    at(pn),
                    format!("{path}.pin"),
                    format!("pin {} is outside the board's GPIO0–GPIO{GPIO_MAX_PIN}", pn.value),
                    Some("use the BCM number of the 40-pin header (GPIO17 is `pin: 17`), not the physical pin".into()),
                );
                0
            }
        };
        let active_low = p.active_low.as_ref().is_some_and(|a| a.value);
        let output = p
            .mode
            .as_ref()
            .is_some_and(|m| m.value == GpioModeName::Output);
        let wrong_side = |v: &mut Self, key: &str, loc: Option<(u64, u64)>, side: &str| {
            if let Some(loc) = loc {
                v.error(
                    file,
                    loc,
                    format!("{path}.{key}"),
                    format!("`{key}` applies to {side} only"),
                    Some(if side == "inputs" {
                        "remove it, or set `mode: input`".into()
                    } else {
                        "remove it, or set `mode: output`".into()
                    }),
                );
            }
        };
        let mode = if output {
            wrong_side(self, "pull", p.pull.as_ref().map(at), "inputs");
            wrong_side(self, "debounce", p.debounce.as_ref().map(at), "inputs");
            let pulse = match &p.pulse {
                Some(d) if d.value.0.is_zero() => {
                    self.error(
                        file,
                        at(d),
                        format!("{path}.pulse"),
                        "pulse must be longer than zero",
                        Some("e.g. `pulse: 500ms`, or remove it for a plain on/off output".into()),
                    );
                    None
                }
                Some(d) => Some(d.value.0),
                None => None,
            };
            let initial = p.initial.as_ref().is_some_and(|i| i.value);
            if let (Some(i), true, true) = (&p.initial, initial, pulse.is_some()) {
                self.error(
                    file,
                    at(i),
                    format!("{path}.initial"),
                    "a pulse output starts off",
                    Some("remove `initial: true`".into()),
                );
            }
            GpioMode::Output {
                initial,
                on_shutdown: match p.on_shutdown.as_ref().map(|o| o.value) {
                    None | Some(OnShutdownName::Keep) => OnShutdown::Keep,
                    Some(OnShutdownName::Off) => OnShutdown::Off,
                    Some(OnShutdownName::On) => OnShutdown::On,
                    Some(OnShutdownName::Low) => OnShutdown::Low,
                    Some(OnShutdownName::High) => OnShutdown::High,
                },
                pulse,
            }
        } else {
            wrong_side(self, "initial", p.initial.as_ref().map(at), "outputs");
            wrong_side(
                self,
                "on_shutdown",
                p.on_shutdown.as_ref().map(at),
                "outputs",
            );
            wrong_side(self, "pulse", p.pulse.as_ref().map(at), "outputs");
            GpioMode::Input {
                pull: match p.pull.as_ref().map(|x| x.value) {
                    None | Some(PullName::None) => Pull::None,
                    Some(PullName::Up) => Pull::Up,
                    Some(PullName::Down) => Pull::Down,
                },
                debounce: p.debounce.as_ref().map_or(DEFAULT_DEBOUNCE, |d| d.value.0),
            }
        };
        GpioPoint {
            pin,
            active_low,
            mode,
        }
    }
}
