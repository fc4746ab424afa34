//! Commissioning requests in the running gateway (`commissioning: true`).
//!
//! A request on `<base>/bus/<id>/request` comes from the broker's rights check
//! ([`crate::broker::Requester`]: refused there when the client may not send it, with
//! where the answer goes). `receive` answers refusals at once (commissioning off, no
//! such bus, not a Modbus bus, a body that is not a request), else hands a [`Job`] to the
//! bus task (`Request::Commission`), which runs it with the same work functions as
//! direct mode ([`probe::read`], [`scan::scan`], [`write::execute`]) over a transport whose
//! every exchange the bus task performs between its polls (`buses::commission`). The
//! answer carries what direct mode would print ([`Answer`]).
//!
//! Through the gateway a scan skips the unit ids of the bus's devices (the gateway polls
//! them) and says so; a write goes through the same parsing and range checks as a `/set`
//! and, on a unit the gateway polls, only to registers of points the mapping makes
//! `writable`; every accepted request and every write is logged at INFO with the client's
//! user name.

use std::sync::Arc;

use fieldlink_drivers::modbus::ModbusTransport;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{
    probe, scan,
    target::Transport,
    wire::{Answer, Asked, WireRequest},
    write, CommissionError,
};
use crate::{
    broker::{ClientCommand, Inbox, Reply},
    commands::Router,
    model::Bus,
};

/// Most addresses one probe reads through the gateway (its answer is one message).
pub const MAX_PROBE: u32 = 2000;

/// Who sent a request, for the logs.
#[derive(Clone, Debug)]
pub struct Who {
    /// The user name the client logged in with.
    pub user: Option<String>,
    /// Its client id.
    pub client: String,
}

/// A request for a bus task: what to run, who asked, and where the answer goes.
#[derive(Debug)]
pub struct Job {
    /// The subcommand and its arguments.
    pub asked: Asked,
    /// Who asked.
    pub who: Who,
    /// The answer, once run.
    pub answer: oneshot::Sender<Answer>,
}

impl Job {
    /// Answer without running (the bus is busy, stopping, or reloading).
    pub fn refuse(self, why: &str, exit: u8) {
        let _ = self.answer.send(Answer::failed(why, exit));
    }

    /// Run on `bus` through `t` (the bus task's exchanges) and answer.
    pub async fn run<T: ModbusTransport>(self, t: &mut T, bus: &Bus) {
        let Job { asked, who, answer } = self;
        let a = execute(asked, &who, t, bus).await;
        let _ = answer.send(a);
    }
}

/// A request from the broker: answered at once when it is refused, else handed to its
/// bus task, whose answer is published when it comes.
pub(crate) fn receive(router: &Router, inbox: &Inbox, c: ClientCommand) {
    let Some(r) = c.request else {
        return;
    };
    // Both at DEBUG: any client can send them (the refusals are counted as denied
    // publishes).
    let Some(to) = r.reply else {
        debug!(client = ?r.client_id, user = ?r.user.as_deref().unwrap_or("-"), topic = ?c.topic, "Commissioning request without a response topic; ignored.");
        return;
    };
    let body = WireRequest::parse(&c.payload);
    let id = body.as_ref().ok().and_then(|b| b.id.clone());
    let send = move |inbox: &Inbox, a: Answer| {
        let reply = Reply {
            to,
            payload: a.body(id.as_ref()),
        };
        if !inbox.reply(reply) {
            warn!("Commissioning answer dropped: the broker is busy.");
        }
    };
    let who = Who {
        user: r.user,
        client: r.client_id,
    };
    let refused = |why: &str| {
        info!(client = ?who.client, user = ?who.user.as_deref().unwrap_or("-"), topic = ?c.topic, reason = why, "Commissioning request refused.");
    };
    if let Some(why) = r.refused {
        debug!(client = ?who.client, user = ?who.user.as_deref().unwrap_or("-"), topic = ?c.topic, reason = why, "Commissioning request not authorised.");
        return send(inbox, Answer::refused(why));
    }
    let (tx, rx) = oneshot::channel();
    let queued = router.commission(&c.topic, |bus| {
        let asked = body
            .and_then(|b| b.asked())
            .map_err(|e| Answer::error(&e))?;
        info!(bus = %bus.id, command = command(&asked), client = ?who.client, user = ?who.user.as_deref().unwrap_or("-"), "Commissioning request.");
        Ok(Job {
            asked,
            who: who.clone(),
            answer: tx,
        })
    });
    match queued {
        Err(a) => {
            if let Some((why, _)) = &a.error {
                refused(why);
            }
            send(inbox, a);
        }
        Ok(()) => {
            let inbox = inbox.clone();
            tokio::spawn(async move {
                let a = rx.await.unwrap_or_else(|_| {
                    Answer::failed(
                        "the bus task stopped before answering (the gateway is stopping or \
                         reloading its configuration)",
                        69,
                    )
                });
                send(&inbox, a);
            });
        }
    }
}

fn command(a: &Asked) -> &'static str {
    match a {
        Asked::Probe(_) => "probe",
        Asked::Scan(_) => "scan",
        Asked::Write(_) => "write",
    }
}

/// Run a request on `bus` through `t`.
async fn execute<T: ModbusTransport>(asked: Asked, who: &Who, t: &mut T, bus: &Bus) -> Answer {
    let Some(transport) = Transport::of_bus(&bus.kind) else {
        return Answer::refused(format!("bus `{}` is not a Modbus bus", bus.id));
    };
    let outcome = match asked {
        Asked::Probe(a) => run_probe(&a, t, &transport).await,
        Asked::Scan(a) => return run_scan(&a, t, &transport, bus).await,
        Asked::Write(a) => run_write(&a, who, t, &transport, bus).await,
    };
    outcome.unwrap_or_else(|e| Answer::error(&e))
}

async fn run_probe<T: ModbusTransport>(
    a: &probe::ProbeArgs,
    t: &mut T,
    transport: &Transport,
) -> Result<Answer, CommissionError> {
    let plan = probe::plan(a)?;
    if plan.req.count > MAX_PROBE {
        return Err(CommissionError::Usage(format!(
            "--count {}: through the running gateway, probe at most {MAX_PROBE} addresses \
             at a time",
            plan.req.count
        )));
    }
    super::check_unit(a.unit, transport)?;
    let endpoint = transport.describe();
    let r = probe::read(t, &plan.req)
        .await
        .map_err(|e| super::unavailable(&e, a.unit, &endpoint))?;
    Ok(Answer {
        result: Some(super::decode::reading_json(a.unit, &r, a.wide)),
        text: Some(probe::output(a, &plan, &r, &endpoint)),
        error: None,
    })
}

/// The bus's devices by unit id.
fn units_of(bus: &Bus) -> Vec<(u8, String)> {
    bus.devices
        .iter()
        .filter_map(|d| Some((d.modbus()?.unit, d.id.clone())))
        .collect()
}

async fn run_scan<T: ModbusTransport>(
    a: &scan::ScanArgs,
    t: &mut T,
    transport: &Transport,
    bus: &Bus,
) -> Answer {
    let list = match scan::units(&a.units).map_err(CommissionError::Usage) {
        Ok(l) => l,
        Err(e) => return Answer::error(&e),
    };
    for u in &list {
        if let Err(e) = super::check_unit(*u, transport) {
            return Answer::error(&e);
        }
    }
    let polled = units_of(bus);
    let skipped: Vec<(u8, String)> = list
        .iter()
        .filter_map(|u| polled.iter().find(|(p, _)| p == u).cloned())
        .collect();
    let list: Vec<u8> = list
        .into_iter()
        .filter(|u| !skipped.iter().any(|(s, _)| s == u))
        .collect();
    let mut text = Vec::new();
    let scanned = scan::one(a, t, transport, &list, &skipped, &mut text).await;
    let (result, error) = match scanned {
        Ok((found, _)) if !found.is_empty() => {
            let r = scan::report(a, &mut text, &found, transport, &skipped);
            (Some(scan::found_json(&found, transport, &skipped)), r.err())
        }
        Ok((_, garbled)) => {
            let j = scan::empty_json(&skipped);
            if a.json {
                let _ = scan::say(&mut text, &j.to_string());
            }
            let tried = [transport.describe()];
            let e = scan::nobody(&a.units, &tried, garbled, &skipped);
            (Some(j), Some(e))
        }
        Err(e) => (None, Some(e)),
    };
    Answer {
        result,
        text: Some(String::from_utf8_lossy(&text).into_owned()),
        error: error.map(|e| (e.to_string(), e.exit_code())),
    }
}

async fn run_write<T: ModbusTransport>(
    a: &write::WriteArgs,
    who: &Who,
    t: &mut T,
    transport: &Transport,
    bus: &Bus,
) -> Result<Answer, CommissionError> {
    let req = write::request(a)?;
    super::check_unit(a.unit, transport)?;
    if let Err(e) = not_read_only(bus, &req) {
        info!(bus = %bus.id, unit = req.unit, table = %req.table, address = req.address, user = ?who.user.as_deref().unwrap_or("-"), client = ?who.client, "Commissioning write refused: a read-only point.");
        return Err(e);
    }
    let outcome = write::execute(t, &req, &transport.describe()).await;
    let user = who.user.as_deref().unwrap_or("-");
    let value = super::decode::value_text(&req.raw, req.ty);
    match &outcome {
        Ok(o) => {
            info!(bus = %bus.id, unit = req.unit, table = %req.table, address = req.address, value = %value, function = o.function, user = ?user, client = ?who.client, "Commissioning write.")
        }
        Err(e) => {
            warn!(bus = %bus.id, unit = req.unit, table = %req.table, address = req.address, value = %value, user = ?user, client = ?who.client, error = %e, "Commissioning write failed.")
        }
    }
    let o = outcome?;
    Ok(Answer {
        result: Some(o.json(&req)),
        text: Some(format!("{}\n", o.output(a, &req))),
        error: None,
    })
}

/// On a unit the gateway polls, a write only to registers (or coils) of points the
/// mapping makes `writable`, as a `/set` would be: the others the gateway does not write.
fn not_read_only(bus: &Bus, req: &write::Request) -> Result<(), CommissionError> {
    let from = u32::from(req.address);
    let to = from + u32::from(req.count());
    for d in bus
        .devices
        .iter()
        .filter(|d| d.modbus().is_some_and(|m| m.unit == req.unit))
    {
        for p in d.points.iter().filter(|p| !p.writable) {
            let Some(m) = p.modbus().filter(|m| m.table == req.table) else {
                continue;
            };
            let n = u32::from(m.count(p.ty));
            let hit = [Some(m.address), m.write_address]
                .into_iter()
                .flatten()
                .any(|at| u32::from(at) < to && from < u32::from(at) + n);
            if hit {
                return Err(CommissionError::Refused(format!(
                    "unit {} {} {}: point `{}` of device `{}` is there, and the mapping \
                     does not make it writable (the gateway writes only writable points)",
                    req.unit,
                    req.table.name(),
                    req.address,
                    p.topic,
                    d.id
                )));
            }
        }
    }
    Ok(())
}

/// Whether a bus takes commissioning requests; `Err`: the refusal.
pub(crate) fn accepts(commissioning: bool, bus: Option<&Arc<Bus>>, id: &str) -> Result<(), Answer> {
    if !commissioning {
        return Err(Answer::refused(
            "commissioning through the gateway is off: set `commissioning: true` in the \
             gateway file",
        ));
    }
    let Some(bus) = bus else {
        return Err(Answer::refused(format!("the gateway has no bus `{id}`")));
    };
    if Transport::of_bus(&bus.kind).is_none() {
        return Err(Answer::refused(format!(
            "bus `{id}` is not a Modbus bus: probe, scan and write are for Modbus buses"
        )));
    }
    Ok(())
}
