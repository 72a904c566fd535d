//! Seals: tamper evidence for stored events.
//!
//! Every committed writer batch gets a seal, stored with its row in
//! `auditline.batches`:
//!
//! - one **entry** per row the commit stored, sorted by `(occurred_at,
//!   event_id)`: the event id (16 bytes), `occurred_at` in microseconds
//!   (8 bytes, big-endian) and the first 16 bytes of the row's digest;
//! - the **seal hash**: SHA-256 over the chain name, the sequence number, the
//!   previous seal's hash, the batch id, the entry count and the SHA-256 of
//!   the entries. Each writer pipeline keeps its own chain (`<writer id>/<slot>`),
//!   numbered from 1.
//!
//! A row's digest covers every stored column (the event, `received_at`,
//! `batch_id`) in a canonical binary form that does not depend on how
//! PostgreSQL prints values: timestamps as microseconds, addresses as octets,
//! JSON walked with sorted keys and numbers normalised (an integral float is
//! written as the integer, since `jsonb` prints `1e15` as `1000000000000000`).
//! The writer computes it from the event it stores, `auditline verify` from
//! the row it reads back; they agree exactly when the row is unchanged.
//!
//! A hash chain alone proves nothing to someone who can rewrite the table:
//! they can recompute every hash. So the writer also **signs** each seal
//! hash with its Ed25519 key ([`signed_message`]; the key lives in the
//! writer's file or environment, never in PostgreSQL), and verify accepts
//! only seals signed by a configured writer public key: a new chain, a
//! rewritten seal or a recomputed chain fails at once. One signature per
//! batch, so the cost is per batch, not per event.

use crate::AuditEvent;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use uuid::Uuid;

/// Length of one entry in a seal's entry list.
pub const ENTRY_LEN: usize = 40;
/// The hash before a chain's first seal.
pub const GENESIS: [u8; 32] = [0; 32];

/// One stored row as a seal lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub occurred_micros: i64,
    pub event_id: Uuid,
    pub digest: [u8; 16],
}

impl Entry {
    /// The entry of a row: the event as stored, with its receipt time and batch.
    pub fn of(event: &AuditEvent, received_at: DateTime<Utc>, batch_id: Uuid) -> Self {
        let full = row_digest(event, received_at, batch_id);
        let mut digest = [0; 16];
        digest.copy_from_slice(&full[..16]);
        Self {
            occurred_micros: event.occurred_at.timestamp_micros(),
            event_id: event.event_id,
            digest,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.event_id.as_bytes());
        out.extend_from_slice(&self.occurred_micros.to_be_bytes());
        out.extend_from_slice(&self.digest);
    }
}

/// Encodes entries, sorted, as a seal stores them.
pub fn encode_entries(entries: &mut [Entry]) -> Vec<u8> {
    entries.sort_unstable();
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for entry in entries.iter() {
        entry.write(&mut out);
    }
    out
}

/// Decodes a seal's entry list; `None` when its length is not a whole number of entries.
pub fn decode_entries(bytes: &[u8]) -> Option<Vec<Entry>> {
    if !bytes.len().is_multiple_of(ENTRY_LEN) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(ENTRY_LEN)
            .map(|chunk| {
                let mut id = [0; 16];
                id.copy_from_slice(&chunk[..16]);
                let mut micros = [0; 8];
                micros.copy_from_slice(&chunk[16..24]);
                let mut digest = [0; 16];
                digest.copy_from_slice(&chunk[24..]);
                Entry {
                    occurred_micros: i64::from_be_bytes(micros),
                    event_id: Uuid::from_bytes(id),
                    digest,
                }
            })
            .collect(),
    )
}

/// The fields a seal hash covers.
#[derive(Debug, Clone, Copy)]
pub struct SealInput<'a> {
    pub chain: &'a str,
    pub seq: i64,
    pub prev_hash: &'a [u8],
    pub batch_id: Uuid,
    pub entry_count: i64,
    /// SHA-256 of the encoded entries.
    pub entries_hash: &'a [u8],
}

/// SHA-256 of a byte string (the entries' hash).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The seal hash of a batch.
pub fn seal_hash(input: &SealInput<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"auditline.seal.v1\0");
    field(&mut h, input.chain.as_bytes());
    h.update(input.seq.to_be_bytes());
    field(&mut h, input.prev_hash);
    h.update(input.batch_id.as_bytes());
    h.update(input.entry_count.to_be_bytes());
    field(&mut h, input.entries_hash);
    h.finalize().into()
}

/// What a writer signs for a seal: its hash, under a domain tag.
pub fn signed_message(seal_hash: &[u8]) -> Vec<u8> {
    let mut message = b"auditline.seal-signature.v1\0".to_vec();
    message.extend_from_slice(seal_hash);
    message
}

/// The digest of one stored row (see the module doc).
pub fn row_digest(event: &AuditEvent, received_at: DateTime<Utc>, batch_id: Uuid) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"auditline.row.v1\0");
    h.update(event.event_id.as_bytes());
    h.update(event.occurred_at.timestamp_micros().to_be_bytes());
    h.update(received_at.timestamp_micros().to_be_bytes());
    h.update(batch_id.as_bytes());
    field(&mut h, event.service.as_bytes());
    field(&mut h, event.session_id.as_bytes());
    optional(&mut h, event.user_id.as_deref().map(str::as_bytes));
    match event.client_ip {
        None => h.update([0]),
        Some(IpAddr::V4(ip)) => {
            h.update([4]);
            h.update(ip.octets());
        }
        Some(IpAddr::V6(ip)) => {
            h.update([6]);
            h.update(ip.octets());
        }
    }
    field(&mut h, event.action_type.as_bytes());
    field(&mut h, event.endpoint.as_bytes());
    optional(&mut h, event.route.as_deref().map(str::as_bytes));
    field(&mut h, event.http_method.as_bytes());
    optional(&mut h, event.request_size.map(u64::to_be_bytes).as_ref());
    optional(&mut h, event.response_size.map(u64::to_be_bytes).as_ref());
    optional(
        &mut h,
        event
            .response_time_ms
            .map(|ms| ms.to_bits().to_be_bytes())
            .as_ref(),
    );
    optional(&mut h, event.status_code.map(u16::to_be_bytes).as_ref());
    h.update([u8::from(event.success)]);
    json_object(&mut h, event.resource_usage.as_ref());
    json_object(&mut h, event.metadata.as_ref());
    h.finalize().into()
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn optional(h: &mut Sha256, bytes: Option<impl AsRef<[u8]>>) {
    match bytes {
        None => h.update([0]),
        Some(b) => {
            h.update([1]);
            field(h, b.as_ref());
        }
    }
}

fn json_object(h: &mut Sha256, map: Option<&Map<String, Value>>) {
    match map {
        None => h.update([0]),
        Some(map) => {
            h.update([1]);
            object(h, map);
        }
    }
}

fn object(h: &mut Sha256, map: &Map<String, Value>) {
    // serde_json's map is ordered by key (no `preserve_order`), which is
    // also the order a map read back from jsonb has.
    h.update([b'{']);
    h.update((map.len() as u64).to_be_bytes());
    for (key, value) in map {
        field(h, key.as_bytes());
        json(h, value);
    }
}

fn json(h: &mut Sha256, value: &Value) {
    match value {
        Value::Null => h.update([b'n']),
        Value::Bool(b) => h.update([if *b { b't' } else { b'f' }]),
        Value::String(s) => {
            h.update([b's']);
            field(h, s.as_bytes());
        }
        Value::Array(items) => {
            h.update([b'[']);
            h.update((items.len() as u64).to_be_bytes());
            for item in items {
                json(h, item);
            }
        }
        Value::Object(map) => object(h, map),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                integer(h, i128::from(i));
            } else if let Some(u) = n.as_u64() {
                integer(h, i128::from(u));
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                // jsonb keeps numbers as decimals: an integral float comes
                // back as an integer (and -0.0 as 0).
                if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(64) {
                    integer(h, f as i128);
                } else {
                    h.update([b'f']);
                    h.update(f.to_bits().to_be_bytes());
                }
            }
        }
    }
}

fn integer(h: &mut Sha256, i: i128) {
    h.update([b'i']);
    h.update(i.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(metadata: Value) -> AuditEvent {
        let wire = json!({
            "event_id": "0192f0a4-7a5e-7c3e-8a4b-000000000001",
            "occurred_at": "2026-11-28T10:00:00.123456789Z",
            "service": "billing",
            "session_id": "s-1",
            "user_id": "alice",
            "client_ip": "::ffff:10.0.0.1",
            "action_type": "file_read",
            "endpoint": "/files/1",
            "http_method": "GET",
            "response_time_ms": 1.5,
            "status_code": 200,
            "success": true,
            "metadata": metadata,
        });
        AuditEvent::from_value(wire, "2026-11-28T10:05:00Z".parse().expect("time"))
            .expect("valid event")
    }

    fn digest(e: &AuditEvent) -> [u8; 32] {
        row_digest(e, e.occurred_at, Uuid::nil())
    }

    #[test]
    fn numbers_that_jsonb_prints_differently_digest_alike() {
        // What the writer parsed from the wire and what it reads back from jsonb.
        let pairs = [
            (json!({"n": 1e15}), json!({"n": 1_000_000_000_000_000_u64})),
            (json!({"n": -0.0}), json!({"n": 0})),
            (json!({"n": 100.0}), json!({"n": 100})),
            (
                json!({"n": 1.8e19}),
                json!({"n": 18_000_000_000_000_000_000_u64}),
            ),
            (
                json!({"b": 1, "a": [0.5, "x"]}),
                json!({"a": [0.5, "x"], "b": 1}),
            ),
        ];
        for (wire, stored) in pairs {
            assert_eq!(
                digest(&event(wire.clone())),
                digest(&event(stored)),
                "{wire}"
            );
        }
    }

    #[test]
    fn any_changed_field_changes_the_digest() {
        let base = event(json!({"k": "v"}));
        let d = digest(&base);
        let mut other = base.clone();
        other.metadata = Some(json!({"k": "w"}).as_object().cloned().unwrap_or_default());
        assert_ne!(digest(&other), d);
        let mut other = base.clone();
        other.endpoint.push('x');
        assert_ne!(digest(&other), d);
        let mut other = base.clone();
        other.user_id = None;
        assert_ne!(digest(&other), d);
        let mut other = base.clone();
        other.occurred_at += chrono::Duration::microseconds(1);
        assert_ne!(digest(&other), d);
        // A field boundary cannot be moved without notice.
        let mut a = base.clone();
        a.service = "ab".into();
        a.session_id = "c".into();
        let mut b = base.clone();
        b.service = "a".into();
        b.session_id = "bc".into();
        assert_ne!(digest(&a), digest(&b));
        assert_ne!(row_digest(&base, base.occurred_at, Uuid::max()), d);
    }

    #[test]
    fn entries_round_trip_sorted() {
        let a = Entry::of(&event(json!({})), Utc::now(), Uuid::nil());
        let mut b = a;
        b.occurred_micros -= 1;
        let bytes = encode_entries(&mut [a, b]);
        assert_eq!(bytes.len(), 2 * ENTRY_LEN);
        assert_eq!(decode_entries(&bytes), Some(vec![b, a]));
        assert_eq!(decode_entries(&bytes[1..]), None);
    }

    #[test]
    fn the_seal_hash_covers_its_chain_position() {
        let input = SealInput {
            chain: "w/0",
            seq: 1,
            prev_hash: &GENESIS,
            batch_id: Uuid::nil(),
            entry_count: 2,
            entries_hash: &sha256(b"x"),
        };
        let h = seal_hash(&input);
        assert_ne!(seal_hash(&SealInput { seq: 2, ..input }), h);
        assert_ne!(
            seal_hash(&SealInput {
                chain: "w/1",
                ..input
            }),
            h
        );
        assert_ne!(
            seal_hash(&SealInput {
                prev_hash: &h,
                ..input
            }),
            h
        );
        assert_ne!(
            seal_hash(&SealInput {
                entry_count: 1,
                ..input
            }),
            h
        );
    }
}
