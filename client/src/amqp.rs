//! RabbitMQ topology and connections.
//!
//! Declared idempotently by every service at start:
//! - `<ns>.events`: durable topic exchange applications publish to
//!   (routing key `<service>.<action_type>`).
//! - `<ns>.writer`: durable quorum queue bound with `#`, consumed by writers. A
//!   message redelivered more than `DELIVERY_LIMIT` times (one that keeps
//!   crashing writers) is dead-lettered, at least once (`x-dead-letter-strategy`),
//!   instead of looping forever.
//! - `<ns>.dead`: fanout exchange and quorum queue holding everything that could
//!   not be stored, with the reason in the `x-auditline-reason` header.

use crate::config::SecretUrl;
use anyhow::Context;
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

/// Redeliveries after which the broker dead-letters a message.
pub const DELIVERY_LIMIT: i64 = 20;
/// Header naming why a message is in `<ns>.dead`.
pub const REASON_HEADER: &str = "x-auditline-reason";
/// The `content_encoding` of a zstd-compressed message body.
pub const ZSTD: &str = "zstd";
/// The most bytes a compressed body may expand to; a larger one is refused (a
/// compression bomb), not decoded.
pub const MAX_DECODED_BYTES: u64 = 64 * 1024 * 1024;

/// Compresses a message body (zstd level 1: NDJSON batches of similar events
/// shrink several times over for little CPU, and the broker's work grows
/// with the bytes it logs). `None` only if zstd fails (out of memory): send
/// the body as it is, without `content_encoding`.
pub fn compress(body: &[u8]) -> Option<Vec<u8>> {
    compress_parts(&[body])
}

/// A message body made of `parts`, zstd-compressed when `compress` asks and
/// that works, with its `content_encoding` (`None`: sent as it is).
pub fn message_body(parts: &[&[u8]], compress: bool) -> (Vec<u8>, Option<&'static str>) {
    match compress.then(|| compress_parts(parts)).flatten() {
        Some(packed) => (packed, Some(ZSTD)),
        None => (parts.concat(), None),
    }
}

/// [`compress`] of the concatenation of `parts` (the audit middleware's
/// messages are its workers' buffers, one after another). One frame, made in
/// one pass over one contiguous input: several parts are first copied into a
/// buffer of the thread (zstd's streaming mode would copy them into its own
/// window anyway, and its ring buffer sends most of a large message down the
/// slower "external dictionary" path: a third of the compression time). The
/// output is written into another reused buffer and copied out at its
/// compressed size, so a message costs no large allocation (each of which
/// would be mapped and faulted in afresh).
pub fn compress_parts(parts: &[&[u8]]) -> Option<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    /// The largest buffers a thread keeps between messages.
    const MAX_KEPT: usize = 4 << 20;
    struct State {
        // A context per thread, reused: creating one per message (what
        // `zstd::bulk::compress` does) showed up in the middleware's profile.
        context: CCtx<'static>,
        joined: Vec<u8>,
        packed: Vec<u8>,
    }
    thread_local! {
        static STATE: std::cell::RefCell<Option<State>> = std::cell::RefCell::new(
            CCtx::try_create().and_then(|mut context| {
                context.set_parameter(CParameter::CompressionLevel(1)).ok()?;
                Some(State { context, joined: Vec::new(), packed: Vec::new() })
            }),
        );
    }
    STATE.with_borrow_mut(|state| {
        let State {
            context,
            joined,
            packed,
        } = state.as_mut()?;
        let input: &[u8] = match parts {
            [one] => one,
            _ => {
                joined.clear();
                for part in parts {
                    joined.extend_from_slice(part);
                }
                joined
            }
        };
        packed.clear();
        // Room for the worst case: zstd never runs out of output space.
        packed.reserve(zstd::zstd_safe::compress_bound(input.len()));
        context.compress2(packed, input).ok()?;
        let body = packed.to_vec();
        // A rare huge message does not keep its buffers for the thread's life.
        if packed.capacity() > MAX_KEPT {
            *packed = Vec::new();
        }
        if joined.capacity() > MAX_KEPT {
            *joined = Vec::new();
        }
        Some(body)
    })
}

/// Decodes a message body by its `content_encoding` (none, or `zstd`):
/// `Ok(None)` when it is not encoded.
pub fn decode_body(body: &[u8], encoding: Option<&str>) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    match encoding.map(str::trim).filter(|e| !e.is_empty()) {
        None | Some("identity") => Ok(None),
        Some(ZSTD) => {
            let decoder = zstd::stream::read::Decoder::new(body)
                .map_err(|e| format!("cannot decode the zstd body: {e}"))?;
            let mut decoded = Vec::with_capacity(body.len() * 8);
            decoder
                .take(MAX_DECODED_BYTES + 1)
                .read_to_end(&mut decoded)
                .map_err(|e| format!("cannot decode the zstd body: {e}"))?;
            if decoded.len() as u64 > MAX_DECODED_BYTES {
                return Err(format!(
                    "the zstd body expands beyond {MAX_DECODED_BYTES} bytes"
                ));
            }
            Ok(Some(decoded))
        }
        Some(other) => Err(format!(
            "unsupported content encoding {other:?}: expected none or zstd"
        )),
    }
}

/// Names of one installation's exchanges and queues.
#[derive(Debug, Clone)]
pub struct Topology {
    pub events_exchange: String,
    pub writer_queue: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    pub live_exchange: String,
}

impl Topology {
    pub fn new(namespace: &str) -> Self {
        Self {
            events_exchange: format!("{namespace}.events"),
            writer_queue: format!("{namespace}.writer"),
            dead_exchange: format!("{namespace}.dead"),
            dead_queue: format!("{namespace}.dead"),
            live_exchange: format!("{namespace}.live"),
        }
    }

    /// Declares every exchange, queue and binding. Idempotent; fails if an
    /// existing queue was declared with other arguments.
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind) in [
            (&self.events_exchange, ExchangeKind::Topic),
            (&self.dead_exchange, ExchangeKind::Fanout),
            (&self.live_exchange, ExchangeKind::Topic),
        ] {
            channel
                .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
                .await
                .with_context(|| format!("cannot declare exchange {name}"))?;
        }
        let queue_options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), string("quorum"));
        channel
            .queue_declare(self.dead_queue.as_str().into(), queue_options, dead_args)
            .await
            .with_context(|| format!("cannot declare queue {}", self.dead_queue))?;
        channel
            .queue_bind(
                self.dead_queue.as_str().into(),
                self.dead_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("cannot bind the dead-letter queue")?;

        channel
            .queue_declare(
                self.writer_queue.as_str().into(),
                queue_options,
                self.writer_queue_args(),
            )
            .await
            .with_context(|| format!("cannot declare queue {}", self.writer_queue))?;
        channel
            .queue_bind(
                self.writer_queue.as_str().into(),
                self.events_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("cannot bind the writer queue")?;
        Ok(())
    }

    /// Deletes every exchange and queue of the namespace, messages included
    /// (benchmarks and tests clean up with it). Errors are ignored: what does
    /// not exist is already gone.
    pub async fn delete(&self, channel: &Channel) {
        for queue in [&self.writer_queue, &self.dead_queue] {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        for exchange in [
            &self.events_exchange,
            &self.dead_exchange,
            &self.live_exchange,
        ] {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
    }

    fn writer_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("quorum"));
        args.insert("x-dead-letter-exchange".into(), string(&self.dead_exchange));
        // At-least-once dead-lettering needs reject-publish overflow; publishers
        // then see a nack when the queue is full instead of losing the head.
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        args.insert("x-overflow".into(), string("reject-publish"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args
    }
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// A header value as text, if it is a string.
pub fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    let key: ShortString = name.into();
    match headers?.inner().get(&key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Opens a connection named after the service, so operators can tell
/// connections apart in the RabbitMQ management UI.
pub async fn connect(url: &SecretUrl, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url.expose(), properties)
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_bad_encodings_are_refused() {
        let body = b"{\"a\":1}\n".repeat(1000);
        let packed = compress(&body).expect("compressed");
        assert!(packed.len() * 10 < body.len(), "repetitive NDJSON shrinks");
        let (head, tail) = body.split_at(3_333);
        let parts = compress_parts(&[head, &[], tail]).expect("compressed");
        assert_eq!(decode_body(&parts, Some(ZSTD)), Ok(Some(body.clone())));
        assert_eq!(
            decode_body(&compress_parts(&[]).expect("empty"), Some(ZSTD)),
            Ok(Some(Vec::new()))
        );
        assert_eq!(decode_body(&packed, Some(ZSTD)), Ok(Some(body.clone())));
        assert_eq!(decode_body(&body, None), Ok(None));
        assert!(decode_body(b"not zstd", Some(ZSTD)).is_err());
        assert!(decode_body(&body, Some("gzip")).is_err());
        let bomb = compress(&vec![0u8; (MAX_DECODED_BYTES + 10) as usize]).expect("compressed");
        let refused = decode_body(&bomb, Some(ZSTD)).expect_err("too large");
        assert!(refused.contains("expands beyond"), "{refused}");
    }
}
