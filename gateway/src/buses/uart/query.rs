//! Reads on demand on a UART bus (`<topic>/get`): a polled device is sent its query and
//! the points asked for are taken from its reply (the actor publishes them, changed or
//! not); a device sending on its own or taking only commands cannot be asked.

use std::sync::atomic::Ordering::Relaxed;

use fieldlink_drivers::value::Value;
use tokio::time::Instant as TokioInstant;

use super::{Awaited, Uart, Waited};
use crate::{
    buses::Cx,
    commands::GetError,
    publish::{reading, Reading},
};

/// What a read on demand waits for: points `points` of device `device`, taken from the
/// reply instead of published by the line's dispatch.
pub(super) struct Capture {
    device: usize,
    points: Vec<usize>,
    /// The values found (or why one is not a value), by point.
    got: Vec<(usize, Result<Value, String>)>,
}

impl Uart {
    /// Whether a read on demand waits for point `p` of device `d`; if so it takes `value`.
    pub(super) fn captured(&mut self, d: usize, p: usize, value: &Result<Value, String>) -> bool {
        match &mut self.capture {
            Some(c) if c.device == d && c.points.contains(&p) => {
                c.got.push((p, value.clone()));
                true
            }
            _ => false,
        }
    }

    /// Read points `points` of device `d` now: its query, then its reply.
    pub(super) async fn read_now(
        &mut self,
        d: usize,
        points: &[usize],
        cx: &mut Cx,
    ) -> Vec<Result<Reading, GetError>> {
        let bus = self.bus.clone();
        let dev = &bus.devices[d];
        let all = |e: GetError| vec![Err(e); points.len()];
        let Some(query) = dev.uart().and_then(|u| u.query.clone()) else {
            let why = if dev.uart().is_some_and(|u| u.parser.is_some()) {
                "the device sends its lines on its own (no `query`); its next line is \
                 published when it comes"
            } else {
                "the device only takes commands"
            };
            return all(GetError::NotReadable(why.into()));
        };
        if self.port.is_none() {
            return all(GetError::PortUnavailable(self.settings.path.clone()));
        }
        cx.stats_of(d).requests.fetch_add(1, Relaxed);
        self.capture = Some(Capture {
            device: d,
            points: points.to_vec(),
            got: Vec::new(),
        });
        let waited = if self.write_line(&query, cx).await {
            let deadline = TokioInstant::now() + self.timeout;
            Some(self.wait(Awaited::Reply(d), deadline, cx).await)
        } else {
            None
        };
        let got = self.capture.take().map(|c| c.got).unwrap_or_default();
        match waited {
            Some(Waited::Done) => points
                .iter()
                .map(|p| match got.iter().rev().find(|(q, _)| q == p) {
                    Some((_, Ok(v))) => Ok(reading(&dev.points[*p], v)),
                    Some((_, Err(e))) => Err(GetError::Decode(e.clone())),
                    None => Err(GetError::NotInReply),
                })
                .collect(),
            Some(Waited::Timeout | Waited::WrongAck(_)) => {
                cx.stats_of(d).request_errors.fetch_add(1, Relaxed);
                let t = humantime::format_duration(self.timeout).to_string();
                all(GetError::NoReply(t))
            }
            Some(Waited::Lost(why)) => all(GetError::PortLost(why)),
            Some(Waited::ShuttingDown) => all(GetError::ShuttingDown),
            // The write failed: the port is closed and reopened with backoff.
            None => all(GetError::PortUnavailable(self.settings.path.clone())),
        }
    }
}
