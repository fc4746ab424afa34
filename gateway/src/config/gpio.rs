//! GPIO (`gpio` buses): the values of its keys, the bus and the GPIO half of a point.

use std::time::Duration;

use serde::Deserialize;

use super::{at, BusFile, Cx, PointFile, TypeName, Validator};
use crate::model::{BusKind, GpioBackendKind, GpioMode, GpioPoint, OnShutdown, Pull};

/// GPIO controller.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GpioBackendName {
    /// A Raspberry Pi through rppal (every model, Pi 5 included).
    Rppal,
    /// A simulated board: inputs float at their pull level, outputs only change state.
    Simulated,
}

/// Direction of a GPIO point.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GpioModeName {
    /// Read the line; publish its debounced changes.
    Input,
    /// Drive the line; writable through `<topic>/set`.
    Output,
}

/// Pull resistor of a GPIO input.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
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
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
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

/// The keys of a `gpio` bus.
pub(super) const BUS_KEYS: &[&str] = &["backend"];

/// A `gpio` bus: its `backend`.
pub(super) fn bus(b: &BusFile) -> BusKind {
    BusKind::Gpio {
        backend: match b.backend.as_ref().map(|x| x.value) {
            None | Some(GpioBackendName::Rppal) => GpioBackendKind::Rppal,
            Some(GpioBackendName::Simulated) => GpioBackendKind::Simulated,
        },
    }
}

impl Validator {
    /// The GPIO half of a point: pin, direction and its settings.
    pub(super) fn gpio_part(&mut self, cx: &Cx, p: &PointFile) -> GpioPoint {
        self.no_uart_keys(cx, p, "a gpio");
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
            cx,
            &modbus_keys,
            |key| format!("`{key}` does not apply to a GPIO point (one line, on or off)"),
            "remove it; a GPIO point has `pin`, `mode`, `pull`, `active_low`, `debounce`, `initial`, `on_shutdown`, `pulse`",
        );
        if let Some(t) = p.ty.as_ref().filter(|t| t.value != TypeName::Bool) {
            self.error(
                &cx.at("type"),
                t,
                "a GPIO point is `bool`",
                Some("remove `type`; use `values: {ON: true, OFF: false}` for named states".into()),
            );
        }
        let pin = self.gpio_pin(cx, p);
        let active_low = p.active_low.as_ref().is_some_and(|a| a.value);
        let output = p
            .mode
            .as_ref()
            .is_some_and(|m| m.value == GpioModeName::Output);
        let mode = if output {
            self.gpio_output(cx, p)
        } else {
            self.gpio_input(cx, p)
        };
        GpioPoint {
            pin,
            active_low,
            mode,
        }
    }

    /// `pin`: a BCM number of the header, each serving one point.
    fn gpio_pin(&mut self, cx: &Cx, p: &PointFile) -> u8 {
        let Some(pn) = &p.pin else {
            self.error(
                cx,
                &p.topic,
                "a GPIO point needs `pin`",
                Some("add `pin: 17` (the BCM number: GPIO17 is physical pin 11)".into()),
            );
            return 0;
        };
        if !(0..=i64::from(GPIO_MAX_PIN)).contains(&pn.value) {
            self.error(
                &cx.at("pin"),
                pn,
                format!("pin {} is outside the board's GPIO0–GPIO{GPIO_MAX_PIN}", pn.value),
                Some("use the BCM number of the 40-pin header (GPIO17 is `pin: 17`), not the physical pin".into()),
            );
            return 0;
        }
        let pin = pn.value as u8;
        if let Some((f0, l0, t0)) = self.pins.get(&pin) {
            let msg = format!(
                "pin {pin} is already used by `{t0}` at {}:{}:{}",
                f0.display(),
                l0.0,
                l0.1
            );
            self.error(
                &cx.at("pin"),
                pn,
                msg,
                Some("every GPIO line can serve one point".into()),
            );
        } else {
            self.pins
                .insert(pin, (cx.file.to_path_buf(), at(pn), p.topic.value.clone()));
        }
        pin
    }

    /// `mode: output`: `initial`, `on_shutdown`, `pulse`.
    fn gpio_output(&mut self, cx: &Cx, p: &PointFile) -> GpioMode {
        self.wrong_side(cx, "pull", p.pull.as_ref().map(at), "inputs");
        self.wrong_side(cx, "debounce", p.debounce.as_ref().map(at), "inputs");
        let pulse = match &p.pulse {
            Some(d) if d.value.0.is_zero() => {
                self.error(
                    &cx.at("pulse"),
                    d,
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
                &cx.at("initial"),
                i,
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
    }

    /// `mode: input` (the default): `pull`, `debounce`.
    fn gpio_input(&mut self, cx: &Cx, p: &PointFile) -> GpioMode {
        self.wrong_side(cx, "initial", p.initial.as_ref().map(at), "outputs");
        self.wrong_side(cx, "on_shutdown", p.on_shutdown.as_ref().map(at), "outputs");
        self.wrong_side(cx, "pulse", p.pulse.as_ref().map(at), "outputs");
        GpioMode::Input {
            pull: match p.pull.as_ref().map(|x| x.value) {
                None | Some(PullName::None) => Pull::None,
                Some(PullName::Up) => Pull::Up,
                Some(PullName::Down) => Pull::Down,
            },
            debounce: p.debounce.as_ref().map_or(DEFAULT_DEBOUNCE, |d| d.value.0),
        }
    }

    /// A key (at `loc`, when present) of GPIO `side` ("inputs" or "outputs") on the other.
    fn wrong_side(&mut self, cx: &Cx, key: &str, loc: Option<(u64, u64)>, side: &str) {
        if let Some(loc) = loc {
            self.error(
                &cx.at(key),
                loc,
                format!("`{key}` applies to {side} only"),
                Some(if side == "inputs" {
                    "remove it, or set `mode: input`".into()
                } else {
                    "remove it, or set `mode: output`".into()
                }),
            );
        }
    }
}
