//! A point's own `poll_interval` (points at their own cadence): Modbus points only.

use std::time::Duration;

use super::{Class, Cx, PointFile, Validator};

impl Validator {
    /// `poll_interval` of a point on a bus of `class`: a duration above zero, on a Modbus
    /// point; `None` when the point has none (or it is refused).
    pub(super) fn point_poll_interval(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        class: Class,
    ) -> Option<Duration> {
        let f = p.poll_interval.as_ref()?;
        let pcx = cx.at("poll_interval");
        let refused = match class {
            Class::Modbus => None,
            Class::Uart => Some((
                "a UART point has no `poll_interval` of its own: one line of its device carries \
                 every field at once",
                "set `poll_interval` on the device, or remove it here",
            )),
            Class::Gpio => Some((
                "a GPIO line is not polled: an input publishes each debounced change, an output each \
                 state it is set to",
                "remove it; add `heartbeat: 5m` to republish an unchanged state",
            )),
        };
        if let Some((message, hint)) = refused {
            self.error(&pcx, f, message, Some(hint.into()));
            return None;
        }
        if f.value.0.is_zero() {
            self.error(
                &pcx,
                f,
                "a point's poll_interval must be greater than zero",
                Some("remove it to read the point at its device's `poll_interval`".into()),
            );
            return None;
        }
        Some(f.value.0)
    }
}
