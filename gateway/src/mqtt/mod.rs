//! MQTT: the gateway's two client sides and the upstream queue between them and the disk.
//!
//! ```text
//!   bus tasks ──batches──▶ fanout ─┬─▶ embedded ──broker::Link──▶ embedded broker (rmqtt)
//!                                  └─▶ upstream ──▶ queue (disk) ──rumqttc──▶ cloud broker
//! ```
//!
//! - `embedded`: the in-process side of the embedded broker (`crate::broker`, which
//!   stays where it is): republishes the retained state into every broker that starts
//!   serving; commands come in through the broker's rights check.
//! - `upstream`: the rumqttc client of the upstream (cloud) broker: connection options
//!   and TLS, the event-loop driver with its jittered reconnect backoff, command intake
//!   from upstream, and publishing from the queue with packet-id bookkeeping.
//! - `queue`: the disk-backed store-and-forward queue ([`Spool`]): a message leaves it
//!   only when the upstream broker acknowledged it.
//! - `retained`: the retained state, kept once for both sides; every batch is recorded
//!   in it before either side gets it.
//! - `follow`: what both sides do the same way: follow reloads (discovery configs that
//!   changed) and answer Home Assistant's birth.
//!
//! With both brokers configured, `fanout` records every batch and hands it to both
//! sides; either side alone reads the bus tasks' channel directly and records it.

mod embedded;
mod follow;
mod queue;
mod retained;
pub(crate) mod upstream;

pub(crate) use embedded::run_client;
pub use queue::{Spool, SpoolError};
pub(crate) use retained::{fanout, Intake, Retained};
pub use upstream::UpstreamError;

pub(crate) async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
