//! Signed keyset cursors: the position of the last event of a page, the
//! first page's window, the order and a digest of the filters, under an
//! installation-wide HMAC key. An altered, forged or reused cursor is a 400.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;

/// A position in a search: after (or before, ascending) this event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub occurred_at: DateTime<Utc>,
    pub event_id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub descending: bool,
    pub(crate) digest: [u8; 8],
}

const CURSOR_VERSION: u8 = 1;
const CURSOR_BODY: usize = 1 + 1 + 8 + 16 + 8 + 8 + 8;
const CURSOR_MAC: usize = 16;

/// Signs and checks cursors with the installation's key.
#[derive(Clone)]
pub struct CursorKey(Vec<u8>);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

type HmacSha256 = hmac::Hmac<Sha256>;

impl CursorKey {
    /// A key from its bytes (tests and fuzzing; services use [`CursorKey::load`]).
    pub fn from_bytes(key: Vec<u8>) -> Self {
        Self(key)
    }

    /// The installation's key, created on first use and shared by every
    /// admin instance through the database.
    pub async fn load(pool: &PgPool) -> anyhow::Result<Self> {
        let fresh: [u8; 32] = rand::random();
        sqlx::query(
            "INSERT INTO auditline.secrets (name, value) VALUES ('cursor_key', $1) ON CONFLICT DO NOTHING",
        )
        .bind(fresh.as_slice())
        .execute(pool)
        .await?;
        let key: Vec<u8> =
            sqlx::query_scalar("SELECT value FROM auditline.secrets WHERE name = 'cursor_key'")
                .fetch_one(pool)
                .await?;
        Ok(Self(key))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }

    pub fn encode(&self, c: &Cursor) -> String {
        let mut body = Vec::with_capacity(CURSOR_BODY + CURSOR_MAC);
        body.push(CURSOR_VERSION);
        body.push(u8::from(c.descending));
        body.extend_from_slice(&c.occurred_at.timestamp_micros().to_be_bytes());
        body.extend_from_slice(c.event_id.as_bytes());
        body.extend_from_slice(&c.from.timestamp_micros().to_be_bytes());
        body.extend_from_slice(&c.to.timestamp_micros().to_be_bytes());
        body.extend_from_slice(&c.digest);
        let mut mac = self.mac();
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes()[..CURSOR_MAC]);
        URL_SAFE_NO_PAD.encode(body)
    }

    pub fn decode(&self, text: &str) -> Result<Cursor, ApiError> {
        let bad = || ApiError::param("cursor", "not a cursor issued by this server for a search");
        let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        if raw.len() != CURSOR_BODY + CURSOR_MAC || raw[0] != CURSOR_VERSION {
            return Err(bad());
        }
        let (body, tag) = raw.split_at(CURSOR_BODY);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag).map_err(|_| bad())?;
        let micros = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            DateTime::from_timestamp_micros(i64::from_be_bytes(b)).ok_or_else(bad)
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&body[10..26]);
        let mut digest = [0u8; 8];
        digest.copy_from_slice(&body[42..50]);
        Ok(Cursor {
            descending: body[1] == 1,
            occurred_at: micros(2)?,
            event_id: Uuid::from_bytes(id),
            from: micros(26)?,
            to: micros(34)?,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            occurred_at: DateTime::from_timestamp_micros(1_764_756_000_123_456).expect("time"),
            event_id: Uuid::now_v7(),
            from: DateTime::from_timestamp_micros(1_764_669_600_000_000).expect("time"),
            to: DateTime::from_timestamp_micros(1_764_756_000_000_000).expect("time"),
            descending: true,
            digest: [1, 2, 3, 4, 5, 6, 7, 8],
        }
    }

    #[test]
    fn a_cursor_comes_back_as_it_was_issued() {
        let key = CursorKey::from_bytes(vec![7; 32]);
        let c = cursor();
        let back = key.decode(&key.encode(&c)).expect("decodes");
        assert_eq!(back.occurred_at, c.occurred_at);
        assert_eq!(back.event_id, c.event_id);
        assert_eq!((back.from, back.to), (c.from, c.to));
        assert_eq!(back.descending, c.descending);
        assert_eq!(back.digest, c.digest);
    }

    #[test]
    fn an_altered_forged_or_foreign_cursor_is_refused() {
        let key = CursorKey::from_bytes(vec![7; 32]);
        let text = key.encode(&cursor());
        let mut raw = URL_SAFE_NO_PAD.decode(&text).expect("base64");
        raw[5] ^= 1;
        assert!(
            key.decode(&URL_SAFE_NO_PAD.encode(&raw)).is_err(),
            "one bit changed"
        );
        let other = CursorKey::from_bytes(vec![8; 32]);
        assert!(other.decode(&text).is_err(), "another installation's key");
        assert!(key.decode(&text[..text.len() - 2]).is_err(), "cut short");
        assert!(key.decode("not a cursor").is_err());
        assert!(key.decode("").is_err());
    }
}
