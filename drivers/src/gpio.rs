//! GPIO: a backend trait with two implementations.
//!
//! - [`SimGpio`]: a simulated board for tests and `fieldlink demo`. A test (or the demo)
//!   drives input levels from outside with [`SimGpio::drive`], which fires edge events
//!   exactly as the kernel's interrupts do, and reads outputs with [`SimGpio::level`] and
//!   [`SimGpio::history`].
//! - `RppalGpio` (Linux only): a Raspberry Pi through rppal (`/dev/gpiochipN` character
//!   device; every Pi including the Pi 5). Edges are interrupt-driven: rppal's interrupt
//!   thread calls back, and the callback forwards the edge into a tokio channel.
//!
//! Levels in this module are physical (`true` = high). Active-low, debouncing and
//! publishing are the gateway's business, identical for every backend.

#[cfg(target_os = "linux")]
use std::collections::HashMap;
use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use thiserror::Error;
use tokio::sync::mpsc::UnboundedSender;

/// Pull resistor of an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    /// No pull resistor (the circuit drives the line).
    None,
    /// Internal pull-up: the line reads high when nothing drives it.
    Up,
    /// Internal pull-down: the line reads low when nothing drives it.
    Down,
}

/// An edge on an input line, as reported by the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// BCM pin number.
    pub pin: u8,
    /// Level after the edge (`true` = high).
    pub level: bool,
}

/// Why a GPIO operation failed.
#[derive(Debug, Error)]
pub enum GpioError {
    /// The backend cannot run on this machine.
    #[error("GPIO is not available on this machine: {0}")]
    Unavailable(String),
    /// A pin could not be set up or used.
    #[error("GPIO pin {pin}: {message}")]
    Pin {
        /// BCM pin number.
        pin: u8,
        /// What went wrong.
        message: String,
    },
}

/// A GPIO controller. One bus task owns it; nothing else touches the pins.
pub trait GpioBackend: Send + 'static {
    /// Configure `pin` as an input with `pull`; every edge (both directions) is sent to
    /// `edges` as it happens, from whatever thread the backend delivers interrupts on.
    fn input(&mut self, pin: u8, pull: Pull, edges: UnboundedSender<Edge>)
        -> Result<(), GpioError>;
    /// Configure `pin` as an output driven to `level` at once.
    fn output(&mut self, pin: u8, level: bool) -> Result<(), GpioError>;
    /// The current level of an input, or the level an output is driven to.
    fn read(&mut self, pin: u8) -> Result<bool, GpioError>;
    /// Drive an output.
    fn write(&mut self, pin: u8, level: bool) -> Result<(), GpioError>;
    /// Let go of an output at shutdown: drive it to `level` first (`None` keeps the
    /// current level); the line stays an output at that level after the process exits.
    fn release(&mut self, pin: u8, level: Option<bool>) -> Result<(), GpioError>;
    /// Short name for logs (`simulated`, `rppal`).
    fn name(&self) -> &'static str;
}

/// What a simulated line is set up as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimMode {
    /// Not set up (or released).
    Unused,
    /// Input with a pull resistor.
    Input(Pull),
    /// Output.
    Output,
}

#[derive(Clone, Debug)]
struct SimLine {
    mode: SimMode,
    /// Level an output drives.
    out: bool,
    /// Level driven from outside (a switch, a sensor); `None` = floating.
    external: Option<bool>,
    /// Released at shutdown.
    released: bool,
    edges: Option<UnboundedSender<Edge>>,
}

impl SimLine {
    fn level(&self) -> bool {
        match self.mode {
            SimMode::Output => self.out,
            SimMode::Input(pull) => self.external.unwrap_or(pull == Pull::Up),
            SimMode::Unused => self.external.unwrap_or(false),
        }
    }
}

#[derive(Debug)]
struct SimState {
    lines: Vec<SimLine>,
    history: Vec<(u8, bool, Instant)>,
}

/// A simulated GPIO controller. Clones share the same board, so a test keeps one clone
/// and hands another to the gateway.
#[derive(Clone, Debug)]
pub struct SimGpio {
    state: Arc<Mutex<SimState>>,
}

impl Default for SimGpio {
    fn default() -> Self {
        Self::new(SIM_LINES)
    }
}

/// Lines of a simulated board (the BCM2711's 58, of which the header shows 0–27).
pub const SIM_LINES: u8 = 58;

impl SimGpio {
    /// A board with `lines` lines, all unused and floating.
    pub fn new(lines: u8) -> Self {
        let line = SimLine {
            mode: SimMode::Unused,
            out: false,
            external: None,
            released: false,
            edges: None,
        };
        SimGpio {
            state: Arc::new(Mutex::new(SimState {
                lines: vec![line; usize::from(lines)],
                history: Vec::new(),
            })),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut SimState) -> R) -> R {
        let mut g = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// Drive an input from outside (`Some(level)`), or let it float back to its pull
    /// (`None`). When the level of a line set up as input changes, an edge is delivered.
    pub fn drive(&self, pin: u8, level: Option<bool>) {
        self.with(|s| {
            let Some(line) = s.lines.get_mut(usize::from(pin)) else {
                return;
            };
            let before = line.level();
            line.external = level;
            let after = line.level();
            if before != after && matches!(line.mode, SimMode::Input(_)) {
                if let Some(tx) = &line.edges {
                    let _ = tx.send(Edge { pin, level: after });
                }
            }
        });
    }

    /// The level of a line now (`true` = high).
    pub fn level(&self, pin: u8) -> bool {
        self.with(|s| s.lines.get(usize::from(pin)).is_some_and(SimLine::level))
    }

    /// What a line is set up as.
    pub fn mode(&self, pin: u8) -> SimMode {
        self.with(|s| {
            s.lines
                .get(usize::from(pin))
                .map_or(SimMode::Unused, |l| l.mode)
        })
    }

    /// Whether the gateway released the line (at shutdown).
    pub fn released(&self, pin: u8) -> bool {
        self.with(|s| s.lines.get(usize::from(pin)).is_some_and(|l| l.released))
    }

    /// Every level an output was driven to, in order: (pin, level, when). Setting up an
    /// output counts as its first entry.
    pub fn history(&self, pin: u8) -> Vec<(bool, Instant)> {
        self.with(|s| {
            s.history
                .iter()
                .filter(|(p, _, _)| *p == pin)
                .map(|(_, l, t)| (*l, *t))
                .collect()
        })
    }

    fn line(s: &mut SimState, pin: u8) -> Result<&mut SimLine, GpioError> {
        let n = s.lines.len();
        s.lines.get_mut(usize::from(pin)).ok_or(GpioError::Pin {
            pin,
            message: format!("not available (this board has lines 0–{})", n - 1),
        })
    }
}

impl GpioBackend for SimGpio {
    fn input(
        &mut self,
        pin: u8,
        pull: Pull,
        edges: UnboundedSender<Edge>,
    ) -> Result<(), GpioError> {
        self.with(|s| {
            let line = Self::line(s, pin)?;
            line.mode = SimMode::Input(pull);
            line.edges = Some(edges);
            line.released = false;
            Ok(())
        })
    }

    fn output(&mut self, pin: u8, level: bool) -> Result<(), GpioError> {
        self.with(|s| {
            let line = Self::line(s, pin)?;
            line.mode = SimMode::Output;
            line.out = level;
            line.edges = None;
            line.released = false;
            s.history.push((pin, level, Instant::now()));
            Ok(())
        })
    }

    fn read(&mut self, pin: u8) -> Result<bool, GpioError> {
        self.with(|s| Self::line(s, pin).map(|l| l.level()))
    }

    fn write(&mut self, pin: u8, level: bool) -> Result<(), GpioError> {
        self.with(|s| {
            let line = Self::line(s, pin)?;
            if line.mode != SimMode::Output {
                return Err(GpioError::Pin {
                    pin,
                    message: "is not an output".into(),
                });
            }
            line.out = level;
            s.history.push((pin, level, Instant::now()));
            Ok(())
        })
    }

    fn release(&mut self, pin: u8, level: Option<bool>) -> Result<(), GpioError> {
        if let Some(l) = level {
            self.write(pin, l)?;
        }
        self.with(|s| {
            let line = Self::line(s, pin)?;
            line.released = true;
            line.edges = None;
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "simulated"
    }
}

/// A Raspberry Pi's GPIO through rppal.
#[cfg(target_os = "linux")]
pub struct RppalGpio {
    gpio: rppal::gpio::Gpio,
    inputs: HashMap<u8, rppal::gpio::InputPin>,
    outputs: HashMap<u8, rppal::gpio::OutputPin>,
}

#[cfg(target_os = "linux")]
impl RppalGpio {
    /// Open the Pi's GPIO controller. Off a Pi this is an error (never a panic).
    pub fn open() -> Result<Self, GpioError> {
        let gpio = rppal::gpio::Gpio::new().map_err(|e| {
            GpioError::Unavailable(format!(
                "{e} (the rppal backend needs a Raspberry Pi and access to /dev/gpiochip*; \
                 add the user to the `gpio` group, or use `backend: simulated` to run the \
                 mapping without hardware)"
            ))
        })?;
        Ok(RppalGpio {
            gpio,
            inputs: HashMap::new(),
            outputs: HashMap::new(),
        })
    }

    fn pin(&self, pin: u8) -> Result<rppal::gpio::Pin, GpioError> {
        self.gpio.get(pin).map_err(|e| GpioError::Pin {
            pin,
            message: e.to_string(),
        })
    }
}

#[cfg(target_os = "linux")]
impl GpioBackend for RppalGpio {
    fn input(
        &mut self,
        pin: u8,
        pull: Pull,
        edges: UnboundedSender<Edge>,
    ) -> Result<(), GpioError> {
        let p = self.pin(pin)?;
        let mut input = match pull {
            Pull::None => p.into_input(),
            Pull::Up => p.into_input_pullup(),
            Pull::Down => p.into_input_pulldown(),
        };
        // Debouncing is done by the gateway (the same for every backend).
        input
            .set_async_interrupt(rppal::gpio::Trigger::Both, None, move |ev| {
                let level = ev.trigger == rppal::gpio::Trigger::RisingEdge;
                let _ = edges.send(Edge { pin, level });
            })
            .map_err(|e| GpioError::Pin {
                pin,
                message: format!("cannot watch for edges: {e}"),
            })?;
        self.inputs.insert(pin, input);
        Ok(())
    }

    fn output(&mut self, pin: u8, level: bool) -> Result<(), GpioError> {
        let p = self.pin(pin)?;
        let out = if level {
            p.into_output_high()
        } else {
            p.into_output_low()
        };
        self.outputs.insert(pin, out);
        Ok(())
    }

    fn read(&mut self, pin: u8) -> Result<bool, GpioError> {
        if let Some(i) = self.inputs.get(&pin) {
            return Ok(i.is_high());
        }
        if let Some(o) = self.outputs.get(&pin) {
            return Ok(o.is_set_high());
        }
        Err(GpioError::Pin {
            pin,
            message: "is not set up".into(),
        })
    }

    fn write(&mut self, pin: u8, level: bool) -> Result<(), GpioError> {
        let o = self.outputs.get_mut(&pin).ok_or(GpioError::Pin {
            pin,
            message: "is not an output".into(),
        })?;
        if level {
            o.set_high();
        } else {
            o.set_low();
        }
        Ok(())
    }

    fn release(&mut self, pin: u8, level: Option<bool>) -> Result<(), GpioError> {
        if let Some(mut o) = self.outputs.remove(&pin) {
            match level {
                Some(true) => o.set_high(),
                Some(false) => o.set_low(),
                None => {}
            }
            // Stay an output at this level after we exit (rppal would otherwise restore
            // the pin's previous mode, usually a floating input).
            o.set_reset_on_drop(false);
        }
        if let Some(mut i) = self.inputs.remove(&pin) {
            let _ = i.clear_async_interrupt();
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "rppal"
    }
}

/// Open the Raspberry Pi backend.
#[cfg(target_os = "linux")]
pub fn open_rppal() -> Result<Box<dyn GpioBackend>, GpioError> {
    Ok(Box::new(RppalGpio::open()?))
}

/// Open the Raspberry Pi backend (Linux only).
#[cfg(not(target_os = "linux"))]
pub fn open_rppal() -> Result<Box<dyn GpioBackend>, GpioError> {
    Err(GpioError::Unavailable(
        "the rppal backend runs on Linux only; use `backend: simulated`".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_input_edges_follow_the_external_level_and_pull() {
        let mut g = SimGpio::new(28);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        g.input(4, Pull::Up, tx).unwrap();
        assert!(g.read(4).unwrap(), "pull-up reads high when floating");
        g.drive(4, Some(true));
        assert!(
            rx.try_recv().is_err(),
            "no edge when the level does not change"
        );
        g.drive(4, Some(false));
        assert_eq!(
            rx.try_recv().unwrap(),
            Edge {
                pin: 4,
                level: false
            }
        );
        g.drive(4, None);
        assert_eq!(
            rx.try_recv().unwrap(),
            Edge {
                pin: 4,
                level: true
            }
        );
        assert!(matches!(g.read(40), Err(GpioError::Pin { pin: 40, .. })));
    }

    #[test]
    fn sim_outputs_record_history_and_refuse_writes_to_inputs() {
        let mut g = SimGpio::new(28);
        g.output(5, true).unwrap();
        g.write(5, false).unwrap();
        g.release(5, None).unwrap();
        let h: Vec<bool> = g.history(5).into_iter().map(|(l, _)| l).collect();
        assert_eq!(h, vec![true, false]);
        assert!(g.released(5));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        g.input(6, Pull::Down, tx).unwrap();
        assert!(g.write(6, true).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn rppal_off_a_pi_is_an_error_not_a_panic() {
        // This machine is not a Raspberry Pi (CI runs on x86_64).
        if std::path::Path::new("/proc/device-tree/model").exists() {
            return;
        }
        let e = open_rppal().err().expect("rppal must fail off a Pi");
        let text = e.to_string();
        assert!(text.contains("not available"), "{text}");
        assert!(text.contains("backend: simulated"), "{text}");
    }
}
