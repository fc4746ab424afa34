//! The front's side of a connection after its CONNECT (`front.rs`): client → broker
//! read packet by packet into one reusable buffer, each PUBLISH's topic name and Topic
//! Alias checked, the checked packets forwarded in the chunks they came in; broker →
//! client copied as it comes, only its fixed headers followed, so that an MQTT 5
//! DISCONNECT goes out on a packet boundary.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::oneshot,
    time::timeout,
};
use tracing::info;

use super::packet::{self, reason, Bad, Boundaries, Reader};
use crate::health::BrokerStats;

/// Bytes read at once from the broker for a client.
const DOWN_BUF: usize = 4096;
/// How long a connection that is being closed may still take to end cleanly.
pub(super) const GRACE: Duration = Duration::from_secs(1);

/// Why the front closes a connection after its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refuse {
    Malformed,
    Protocol,
    TopicName,
    TopicAlias,
    TooLarge,
}

impl Refuse {
    /// The MQTT 5 reason code of the DISCONNECT.
    fn reason(self) -> u8 {
        match self {
            Refuse::Malformed => reason::MALFORMED,
            Refuse::Protocol => reason::PROTOCOL_ERROR,
            Refuse::TopicName => reason::TOPIC_NAME_INVALID,
            Refuse::TopicAlias => reason::TOPIC_ALIAS_INVALID,
            Refuse::TooLarge => reason::PACKET_TOO_LARGE,
        }
    }

    pub(super) fn from_bad(b: Bad) -> Refuse {
        match b {
            Bad::Malformed => Refuse::Malformed,
            Bad::TooLarge(_) => Refuse::TooLarge,
        }
    }

    /// Count a closed connection in diagnostics.
    pub(super) fn count(self, stats: &BrokerStats) {
        match self {
            Refuse::TooLarge => stats.oversized_packets.fetch_add(1, Relaxed),
            _ => stats.bad_packets.fetch_add(1, Relaxed),
        };
    }
}

/// The Topic Aliases of one MQTT 5 connection, up to the maximum the broker announced.
struct Aliases {
    max: u16,
    topics: Vec<Option<Box<[u8]>>>,
}

impl Aliases {
    /// Check a PUBLISH's topic name and alias, and record a new alias.
    fn check(&mut self, p: &packet::Publish<'_>) -> Result<(), Refuse> {
        let Some(a) = p.alias else {
            return match p.topic.is_empty() {
                true => Err(Refuse::Protocol),
                false if packet::topic_name_ok(p.topic) => Ok(()),
                false => Err(Refuse::TopicName),
            };
        };
        if a == 0 || a > self.max {
            return Err(Refuse::TopicAlias);
        }
        let i = usize::from(a - 1);
        if p.topic.is_empty() {
            // A known alias was checked when it was set.
            return match self.topics.get(i) {
                Some(Some(_)) => Ok(()),
                _ => Err(Refuse::Protocol),
            };
        }
        if !packet::topic_name_ok(p.topic) {
            return Err(Refuse::TopicName);
        }
        if self.topics.len() < usize::from(self.max) {
            self.topics.resize(usize::from(self.max), None);
        }
        self.topics[i] = Some(p.topic.into());
        Ok(())
    }
}

/// How a client's side of a connection ended.
enum Up {
    /// The client closed (or the broker's side failed).
    Closed,
    /// The front closes it; MQTT 5 is told why.
    Refused(Option<u8>),
}

/// One connection after its CONNECT.
pub(super) struct Relay<'a> {
    stats: &'a BrokerStats,
    client_id: &'a str,
    v5: bool,
    aliases: Aliases,
}

impl<'a> Relay<'a> {
    /// A connection of `client_id` (MQTT 5: `v5`), with the Topic Alias Maximum the
    /// broker announced.
    pub(super) fn new(
        stats: &'a BrokerStats,
        client_id: &'a str,
        v5: bool,
        alias_max: u16,
    ) -> Self {
        Relay {
            stats,
            client_id,
            v5,
            aliases: Aliases {
                max: alias_max,
                topics: Vec::new(),
            },
        }
    }

    /// Carry the connection until either side ends it or the client breaks a rule;
    /// `bounds` is where the broker's stream stands (its CONNACK was read).
    pub(super) async fn run<CR, CW, BR, BW>(
        mut self,
        mut reader: Reader,
        (mut cr, mut cw): (CR, CW),
        (mut br, mut bw): (BR, BW),
        bounds: Boundaries,
    ) where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        BR: AsyncRead + Unpin,
        BW: AsyncWrite + Unpin,
    {
        let (stop_tx, stop_rx) = oneshot::channel();
        let down = downstream(&mut br, &mut cw, bounds, stop_rx);
        tokio::pin!(down);
        let up = async {
            match self.upstream(&mut reader, &mut cr, &mut bw).await {
                Up::Closed => {
                    let _ = bw.shutdown().await;
                }
                Up::Refused(reason) => {
                    let _ = stop_tx.send(reason);
                }
            }
        };
        tokio::select! {
            () = &mut down => {}
            () = up => {
                let _ = timeout(GRACE, &mut down).await;
            }
        }
    }

    /// Client → broker: check each packet, forward the checked ones in the chunks they
    /// came in.
    async fn upstream<R, W>(&mut self, reader: &mut Reader, r: &mut R, w: &mut W) -> Up
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            let mut ok = 0;
            let bad = loop {
                match reader.frame(ok) {
                    Ok(Some(f)) => match self.check(&f) {
                        Ok(()) => ok += f.len,
                        Err(e) => break Some(e),
                    },
                    Ok(None) => break None,
                    Err(b) => break Some(Refuse::from_bad(b)),
                }
            };
            if ok > 0 {
                if w.write_all(&reader.pending()[..ok]).await.is_err() {
                    return Up::Closed;
                }
                reader.consume(ok);
            }
            if let Some(e) = bad {
                e.count(self.stats);
                info!(client = ?self.client_id, error = ?e, "Client closed: a packet broke the protocol rules.");
                return Up::Refused(self.v5.then_some(e.reason()));
            }
            if !matches!(reader.fill(r, 0).await, Ok(1..)) {
                return Up::Closed;
            }
        }
    }

    /// The rules for one packet from the client.
    fn check(&mut self, f: &packet::Frame<'_>) -> Result<(), Refuse> {
        match f.kind() {
            packet::PUBLISH => {
                let p = packet::publish(f.first, f.body, self.v5).map_err(Refuse::from_bad)?;
                if self.v5 {
                    self.aliases.check(&p)
                } else if packet::topic_name_ok(p.topic) {
                    Ok(())
                } else {
                    Err(Refuse::TopicName)
                }
            }
            packet::CONNECT => Err(Refuse::Protocol),
            _ => Ok(()),
        }
    }
}

/// Broker → client: copy as it comes; once told to stop, finish the packet under way,
/// send the MQTT 5 DISCONNECT (if any) and close.
async fn downstream<R, W>(
    br: &mut R,
    cw: &mut W,
    mut bounds: Boundaries,
    mut stop: oneshot::Receiver<Option<u8>>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; DOWN_BUF];
    let mut listening = true;
    let mut stopping: Option<u8> = None;
    loop {
        tokio::select! {
            biased;
            r = &mut stop, if listening => {
                listening = false;
                match r {
                    Ok(None) => break,
                    Ok(Some(reason)) if bounds.at_boundary() => {
                        let _ = cw.write_all(&packet::disconnect(reason)).await;
                        break;
                    }
                    Ok(Some(reason)) => stopping = Some(reason),
                    Err(_) => {}
                }
            }
            n = br.read(&mut buf) => {
                let n = match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let upto = bounds.feed(&buf[..n], stopping.is_some());
                if cw.write_all(&buf[..upto]).await.is_err() {
                    return;
                }
                if let (Some(reason), true) = (stopping, bounds.at_boundary()) {
                    let _ = cw.write_all(&packet::disconnect(reason)).await;
                    break;
                }
            }
        }
    }
    let _ = cw.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_and_refuse() {
        let mut a = Aliases {
            max: 2,
            topics: Vec::new(),
        };
        let p = |topic: &'static [u8], alias| packet::Publish { topic, alias };
        assert_eq!(
            a.check(&p(b"", Some(1))),
            Err(Refuse::Protocol),
            "unknown alias"
        );
        assert_eq!(
            a.check(&p(b"", None)),
            Err(Refuse::Protocol),
            "no topic, no alias"
        );
        assert_eq!(
            a.check(&p(b"x", Some(3))),
            Err(Refuse::TopicAlias),
            "above the maximum"
        );
        assert_eq!(a.check(&p(b"x", Some(0))), Err(Refuse::TopicAlias));
        assert_eq!(a.check(&p(b"a/#", Some(1))), Err(Refuse::TopicName));
        assert_eq!(a.check(&p(b"a/b", Some(1))), Ok(()));
        assert_eq!(a.check(&p(b"", Some(1))), Ok(()), "known alias");
        assert_eq!(a.check(&p(b"a/\0", None)), Err(Refuse::TopicName));
        let mut none = Aliases {
            max: 0,
            topics: Vec::new(),
        };
        assert_eq!(none.check(&p(b"a", Some(1))), Err(Refuse::TopicAlias));
    }
}
