//! `auditline verify` and `GET /admin/audit/verify`: recomputes the seals
//! (see `auditline_shared::seal`) and reports precisely what does not match.
//!
//! 1. **Chains**: every writer pipeline's seals must be numbered 1, 2, 3, …
//!    with each one naming its predecessor's hash, each seal hash must
//!    recompute from its fields (the entry list included), and, when writer
//!    public keys are configured, each seal must be signed by one of them: a
//!    gap is a missing batch, a wrong link a re-ordered or altered seal, a
//!    missing or wrong signature a seal written outside the writers (a new
//!    chain, a rewritten or recomputed one).
//! 2. **Checkpoints**: every signed checkpoint in storage (see
//!    [`crate::checkpoint`]), oldest first: each must name the one before
//!    it and anchor no less than it; each anchored seal must still be in the
//!    database with the same hash. A chain that ends before an anchored seal
//!    lost its newest batches (or all of them), a seal that differs from an
//!    anchor was rewritten.
//! 3. **Rows** in the range: each stored row's digest is recomputed and looked
//!    up in the seals' entries. A row no seal lists was inserted, a row whose
//!    digest differs was changed, an entry with no row was removed, except
//!    on days retention archived and dropped (`auditline.partition_drops`).
//!
//! Rows are compared one UTC day at a time, in memory (~100 bytes per row
//! of the day); a seal whose rows span many days is decoded once per day.

mod history;

use crate::{
    checkpoint::{self, Anchored, Keys, SealSignature},
    storage::Storage,
};
use auditline_shared::stored::StoredEvent;
use auditline_shared::{AuditEvent, auth::hex, event::rfc3339_text, seal};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::TryStreamExt;
pub use history::check_anchors;
use history::check_history;
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use utoipa::ToSchema;
use uuid::Uuid;

/// The most findings a report lists (all are counted).
pub const MAX_LISTED: usize = 1000;

/// What verify found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A stored row differs from the row its seal lists.
    ChangedRow,
    /// A row a seal lists is not stored (and its day was not dropped by retention).
    RemovedRow,
    /// A stored row no seal lists.
    InsertedRow,
    /// A chain skips sequence numbers: the batches in between are gone.
    MissingBatch,
    /// A seal does not name its predecessor's hash (re-ordered or rewritten).
    BrokenChain,
    /// A seal's hash does not recompute from its fields.
    AlteredSeal,
    /// A chain ends before the seal the checkpoint anchors: its newest batches are gone.
    Truncated,
    /// A seal differs from the hash the checkpoint anchors for it.
    CheckpointMismatch,
    /// A checkpoint in storage is unreadable or its signature does not verify.
    BadCheckpoint,
    /// The checkpoint history goes backwards: a checkpoint is missing or
    /// altered (its successor names another hash), anchors less than the one
    /// before it, or the latest copy is not the newest checkpoint.
    CheckpointRegression,
    /// A seal carries no signature, though writer keys are configured.
    UnsignedSeal,
    /// A seal's signature is not a configured writer key's, or does not verify.
    ForgedSeal,
    /// A retention drop record is not signed by the configured key: the
    /// day's rows are expected as if it had not been dropped.
    BadDropRecord,
}

/// One finding.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Finding {
    pub kind: Kind,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
}

impl Finding {
    fn new(kind: Kind, message: String) -> Self {
        Self {
            kind,
            message,
            chain: None,
            seq: None,
            batch_id: None,
            event_id: None,
            occurred_at: None,
        }
    }

    fn at_seal(mut self, seal: &SealRef) -> Self {
        self.chain = Some(seal.chain.clone());
        self.seq = Some(seal.seq);
        self.batch_id = Some(seal.batch_id);
        self
    }
}

/// The verify report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Report {
    /// True when nothing was found.
    pub ok: bool,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Seal chains (writer pipelines) checked.
    pub chains: usize,
    /// Seals checked.
    pub seals: u64,
    /// Stored rows in the range checked against their seals.
    pub rows: u64,
    /// Batches committed before sealing existed (their rows cannot be proven).
    pub unsealed_batches: i64,
    /// Days retention archived and dropped (their rows are not expected).
    pub dropped_days: Vec<NaiveDate>,
    /// The newest checkpoint the chains were compared with.
    pub checkpoint: Option<CheckpointUsed>,
    /// Checkpoint files walked (the whole history, or from the one named).
    pub checkpoints: usize,
    /// Writer public keys seal signatures were checked against (0: signatures were not checked).
    pub writer_keys: usize,
    /// Findings per kind.
    pub counts: BTreeMap<String, u64>,
    /// The first findings (at most 1,000).
    pub findings: Vec<Finding>,
}

/// Which checkpoint a report used.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckpointUsed {
    pub file: String,
    pub created_at: DateTime<Utc>,
    pub chains: usize,
}

impl Report {
    pub fn new(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Self {
        Self {
            ok: true,
            from,
            to,
            chains: 0,
            seals: 0,
            rows: 0,
            unsealed_batches: 0,
            dropped_days: Vec::new(),
            checkpoint: None,
            checkpoints: 0,
            writer_keys: 0,
            counts: BTreeMap::new(),
            findings: Vec::new(),
        }
    }

    fn add(&mut self, finding: Finding) {
        let key = serde_json::to_value(finding.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *self.counts.entry(key).or_default() += 1;
        self.ok = false;
        if self.findings.len() < MAX_LISTED {
            self.findings.push(finding);
        }
    }

    /// Total findings, listed or not.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

#[derive(Debug, Clone)]
struct SealRef {
    chain: String,
    seq: i64,
    batch_id: Uuid,
}

#[derive(sqlx::FromRow)]
struct SealRow {
    chain: String,
    seq: i64,
    prev_hash: Vec<u8>,
    seal_hash: Vec<u8>,
    batch_id: Uuid,
    committed_at: DateTime<Utc>,
    inserted_count: i32,
    entries_hash: Vec<u8>,
    seal_key: Option<Vec<u8>>,
    seal_signature: Option<Vec<u8>>,
}

/// A stored seal as the chain check saw it.
#[derive(Debug, Clone)]
pub struct SealSeen {
    pub hash: Vec<u8>,
    pub batch_id: Uuid,
    pub committed_at: DateTime<Utc>,
}

/// Each chain's seals read by [`check_chains`], by sequence number.
#[derive(Debug, Default)]
pub struct Seals(HashMap<String, BTreeMap<i64, SealSeen>>);

impl Seals {
    /// Each chain's newest seal, by chain name.
    pub fn tips(&self) -> Vec<Anchored> {
        let mut tips: Vec<Anchored> = self
            .0
            .iter()
            .filter_map(|(chain, seals)| {
                seals.iter().next_back().map(|(seq, seal)| Anchored {
                    chain: chain.clone(),
                    seq: *seq,
                    seal_hash: hex(&seal.hash),
                    batch_id: seal.batch_id,
                    committed_at: seal.committed_at,
                })
            })
            .collect();
        tips.sort_by(|a, b| a.chain.cmp(&b.chain));
        tips
    }
}

/// A stored row: the event, when it was received, the batch that stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub event: AuditEvent,
    pub received_at: DateTime<Utc>,
    pub batch_id: Uuid,
}

impl Row {
    /// The row's seal entry.
    pub fn entry(&self) -> seal::Entry {
        seal::Entry::of(&self.event, self.received_at, self.batch_id)
    }

    /// Appends the row as one JSON object (as archives hold it): the event's
    /// fields, then `received_at` and `batch_id`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let received_at = rfc3339_text(self.received_at);
        let batch_id = self.batch_id.to_string();
        self.event.write_json_with(
            out,
            &[("received_at", &received_at), ("batch_id", &batch_id)],
        );
    }

    /// Reads back what [`Row::write_json`] wrote; the event is validated as
    /// when it was first accepted.
    pub fn parse_json(line: &[u8]) -> Result<Self, String> {
        let mut object: Map<String, Value> =
            serde_json::from_slice(line).map_err(|e| format!("not a JSON object: {e}"))?;
        let mut take = |name: &str| {
            object
                .remove(name)
                .and_then(|v| v.as_str().map(str::to_owned))
                .ok_or_else(|| format!("`{name}` is missing"))
        };
        let received_at = take("received_at")?
            .parse()
            .map_err(|e| format!("`received_at`: {e}"))?;
        let batch_id = take("batch_id")?
            .parse()
            .map_err(|e| format!("`batch_id`: {e}"))?;
        let event =
            AuditEvent::from_value(Value::Object(object), Utc::now()).map_err(|e| e.to_string())?;
        Ok(Self {
            event,
            received_at,
            batch_id,
        })
    }
}

/// The columns of [`StoredRow`], for `SELECT`.
pub const ROW_COLUMNS: &str = concat!(auditline_shared::event_columns!(), ", batch_id");

/// A row as PostgreSQL returns it: the search's event and the batch.
#[derive(Debug, sqlx::FromRow)]
pub struct StoredRow {
    #[sqlx(flatten)]
    event: StoredEvent,
    batch_id: Uuid,
}

impl StoredRow {
    /// The typed row; `Err` with the row's key when a column holds what no
    /// event can (a negative size, an address that does not parse, JSON
    /// that is not an object): such a row was changed.
    pub fn into_row(self) -> Result<Row, (Uuid, DateTime<Utc>)> {
        let e = self.event;
        let key = (e.event_id, e.occurred_at);
        let object = |v: Option<Value>| match v {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(()),
        };
        let size = |v: Option<i64>| v.map(u64::try_from).transpose().map_err(|_| ());
        let converted = (|| {
            Ok::<_, ()>(AuditEvent {
                event_id: e.event_id,
                occurred_at: e.occurred_at,
                service: e.service,
                session_id: e.session_id,
                user_id: e.user_id,
                client_ip: e
                    .client_ip
                    .map(|ip| ip.parse())
                    .transpose()
                    .map_err(|_| ())?,
                action_type: e.action_type,
                endpoint: e.endpoint,
                route: e.route,
                http_method: e.http_method,
                request_size: size(e.request_size)?,
                response_size: size(e.response_size)?,
                response_time_ms: e.response_time_ms,
                status_code: e
                    .status_code
                    .map(u16::try_from)
                    .transpose()
                    .map_err(|_| ())?,
                success: e.success,
                resource_usage: object(e.resource_usage)?,
                metadata: object(e.metadata)?,
            })
        })();
        match converted {
            Ok(event) => Ok(Row {
                event,
                received_at: e.received_at,
                batch_id: self.batch_id,
            }),
            Err(()) => Err(key),
        }
    }
}

/// Verifies the seals, the chains against the checkpoint history in
/// `destination` (from the file `start` when given), and the rows that
/// occurred in `[from, to)` (everything when unbounded).
#[tracing::instrument(skip_all, fields(from = ?range.0, to = ?range.1, start = ?start))]
pub async fn verify(
    pool: &PgPool,
    storage: &Storage,
    destination: &str,
    keys: &Keys,
    range: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    start: Option<&str>,
) -> anyhow::Result<Report> {
    let (from, to) = range;
    let mut report = Report::new(from, to);
    report.writer_keys = keys.writer_keys();
    report.unsealed_batches =
        sqlx::query_scalar("SELECT count(*) FROM auditline.batches WHERE chain IS NULL")
            .fetch_one(pool)
            .await?;
    let seals = check_chains(pool, keys, &HashMap::new(), &mut report).await?;
    let history = checkpoint::history(storage, destination, keys, start).await?;
    report.checkpoints = history.len();
    let good = check_history(history, start.is_some(), &mut report);
    match checkpoint::latest(storage, destination, keys).await {
        None if !good.is_empty() => report.add(Finding::new(
            Kind::CheckpointRegression,
            format!(
                "{} is gone, though checkpoints were written",
                checkpoint::LATEST
            ),
        )),
        Some(Ok((_, latest))) => {
            if let Some(newest) = good.last()
                && latest != newest.checkpoint
                && start.is_none()
            {
                report.add(Finding::new(
                    Kind::CheckpointRegression,
                    format!(
                        "{} (of {}) is not the newest checkpoint {} (of {}): it was replaced",
                        checkpoint::LATEST,
                        latest.created_at,
                        newest.file,
                        newest.created_at
                    ),
                ));
            }
        }
        Some(Err(e)) => report.add(Finding::new(Kind::BadCheckpoint, e)),
        None => {}
    }
    check_anchors(&good, &seals, &mut report);
    report.checkpoint = good.last().map(|cp| CheckpointUsed {
        file: cp.file.clone(),
        created_at: cp.created_at,
        chains: cp.chains.len(),
    });
    check_rows(pool, from, to, keys, &mut report).await?;
    Ok(report)
}

/// Checks each chain's numbering, links, hashes and signatures, from the
/// sequence number `since` names for it (the whole chain otherwise);
/// returns the seals read.
pub async fn check_chains(
    pool: &PgPool,
    keys: &Keys,
    since: &HashMap<String, i64>,
    report: &mut Report,
) -> anyhow::Result<Seals> {
    let (names, starts): (Vec<&str>, Vec<i64>) =
        since.iter().map(|(c, s)| (c.as_str(), *s)).unzip();
    let mut rows = sqlx::query_as::<_, SealRow>(
        "WITH since(chain, seq) AS (SELECT * FROM unnest($1::text[], $2::bigint[])) \
         SELECT b.chain, b.seq, b.prev_hash, b.seal_hash, b.batch_id, b.committed_at, \
                b.inserted_count, sha256(b.entries) AS entries_hash, b.seal_key, b.seal_signature \
         FROM auditline.batches b LEFT JOIN since ON since.chain = b.chain \
         WHERE b.chain IS NOT NULL AND b.seq >= coalesce(since.seq, 1) \
         ORDER BY b.chain, b.seq",
    )
    .bind(&names)
    .bind(&starts)
    .fetch(pool);
    let mut chains: HashMap<String, BTreeMap<i64, SealSeen>> = HashMap::new();
    // The chain being read: its name, the sequence number expected next and
    // the hash that seal must name (unknown for a walk's first seal).
    let mut current: Option<(String, i64, Option<Vec<u8>>)> = None;
    while let Some(row) = rows.try_next().await? {
        report.seals += 1;
        let at = SealRef {
            chain: row.chain.clone(),
            seq: row.seq,
            batch_id: row.batch_id,
        };
        let (expected_seq, prev) = match current.take() {
            Some((chain, seq, hash)) if chain == row.chain => (seq, hash),
            _ => match since.get(&row.chain) {
                Some(seq) => (*seq, None),
                None => (1, Some(seal::GENESIS.to_vec())),
            },
        };
        if row.seq > expected_seq {
            report.add(
                Finding::new(
                    Kind::MissingBatch,
                    format!(
                        "chain {}: batches {expected_seq}..={} are missing (seal {} follows {})",
                        row.chain,
                        row.seq - 1,
                        row.seq,
                        expected_seq - 1
                    ),
                )
                .at_seal(&at),
            );
        } else if prev.is_some_and(|prev| row.prev_hash != prev) {
            report.add(
                Finding::new(
                    Kind::BrokenChain,
                    format!(
                        "chain {} seal {} does not name seal {}'s hash: seals were re-ordered or rewritten",
                        row.chain,
                        row.seq,
                        row.seq - 1
                    ),
                )
                .at_seal(&at),
            );
        }
        let recomputed = seal::seal_hash(&seal::SealInput {
            chain: &row.chain,
            seq: row.seq,
            prev_hash: &row.prev_hash,
            batch_id: row.batch_id,
            entry_count: i64::from(row.inserted_count),
            entries_hash: &row.entries_hash,
        });
        if recomputed[..] != row.seal_hash[..] {
            report.add(
                Finding::new(
                    Kind::AlteredSeal,
                    format!(
                        "chain {} seal {}: its hash does not recompute from its fields (batch {})",
                        row.chain, row.seq, row.batch_id
                    ),
                )
                .at_seal(&at),
            );
        }
        let signed = keys.check_seal(
            &row.seal_hash,
            row.seal_key.as_deref(),
            row.seal_signature.as_deref(),
        );
        if let Err(problem) = signed {
            let (kind, why) = match problem {
                SealSignature::Missing => (Kind::UnsignedSeal, "is not signed"),
                SealSignature::UnknownKey => (
                    Kind::ForgedSeal,
                    "is signed by a key that is not a configured writer key",
                ),
                SealSignature::Invalid => {
                    (Kind::ForgedSeal, "carries a signature that does not verify")
                }
            };
            report.add(
                Finding::new(
                    kind,
                    format!(
                        "chain {} seal {} (batch {}) {why}: it was not written by a writer",
                        row.chain, row.seq, row.batch_id
                    ),
                )
                .at_seal(&at),
            );
        }
        current = Some((row.chain.clone(), row.seq + 1, Some(row.seal_hash.clone())));
        chains.entry(row.chain).or_default().insert(
            row.seq,
            SealSeen {
                hash: row.seal_hash,
                batch_id: row.batch_id,
                committed_at: row.committed_at,
            },
        );
    }
    report.chains = chains.len();
    Ok(Seals(chains))
}

async fn check_rows(
    pool: &PgPool,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    keys: &Keys,
    report: &mut Report,
) -> anyhow::Result<()> {
    let dropped = accepted_drops(pool, keys, Some(&mut *report)).await?;
    // One UTC day at a time, so memory holds a day's rows, not the range's:
    // from the earliest to the latest time any seal or row names.
    let (first, last): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT least((SELECT min(occurred_min) FROM auditline.batches WHERE chain IS NOT NULL), \
                      (SELECT min(occurred_at) FROM auditline.events)), \
                greatest((SELECT max(occurred_max) FROM auditline.batches WHERE chain IS NOT NULL), \
                         (SELECT max(occurred_at) FROM auditline.events))",
    )
    .fetch_one(pool)
    .await?;
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(());
    };
    let mut start = from.map_or(first, |f| f.max(first));
    let end = to.map_or(last + chrono::Duration::microseconds(1), |t| {
        t.min(last + chrono::Duration::microseconds(1))
    });
    while start < end {
        let midnight = (start.date_naive() + chrono::Duration::days(1))
            .and_hms_opt(0, 0, 0)
            .map_or(end, |t| t.and_utc());
        let stop = midnight.min(end);
        check_window(pool, start, stop, &dropped, report).await?;
        start = stop;
    }
    Ok(())
}

/// The days retention dropped, with when, as far as `keys` accept their
/// records; a refused record is reported as a finding when `report` is
/// given, and its day's rows stay expected.
pub async fn accepted_drops(
    pool: &PgPool,
    keys: &Keys,
    mut report: Option<&mut Report>,
) -> anyhow::Result<HashMap<NaiveDate, DateTime<Utc>>> {
    let drops = crate::drops::list(pool).await?;
    let mut dropped = HashMap::new();
    for d in drops {
        let message = crate::drops::drop_message(d.day, d.rows, &d.archive, &d.archive_sha256);
        match keys.check(&message, d.signature.as_deref()) {
            Ok(()) => {
                dropped.insert(d.day, d.dropped_at);
                if let Some(report) = report.as_deref_mut() {
                    report.dropped_days.push(d.day);
                }
            }
            Err(e) => {
                if let Some(report) = report.as_deref_mut() {
                    report.add(Finding::new(
                        Kind::BadDropRecord,
                        format!("the retention drop record of {} is refused: {e}", d.day),
                    ));
                }
            }
        }
    }
    Ok(dropped)
}

/// Checks the rows that occurred in `[from, to)` against their seals.
async fn check_window(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    dropped: &HashMap<NaiveDate, DateTime<Utc>>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut expected = Expected::load(pool, Some(from), Some(to), dropped).await?;
    let mut stored = sqlx::query_as::<_, StoredRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {ROW_COLUMNS} FROM auditline.events WHERE occurred_at >= $1 AND occurred_at < $2"
    )))
    .bind(from)
    .bind(to)
    .fetch(pool);
    while let Some(row) = stored.try_next().await? {
        expected.check(row.into_row(), report);
    }
    expected.finish(report);
    Ok(())
}

/// The rows the seals say a time range holds.
#[derive(Debug, Default)]
pub struct Expected {
    seals: Vec<SealRef>,
    entries: HashMap<(Uuid, i64), ([u8; 16], u32)>,
}

impl Expected {
    /// The entries of `[from, to)`, except those of `dropped` days sealed
    /// before their drop.
    pub async fn load(
        pool: &PgPool,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        dropped: &HashMap<NaiveDate, DateTime<Utc>>,
    ) -> anyhow::Result<Self> {
        let from_micros = from.map_or(i64::MIN, |t| t.timestamp_micros());
        let to_micros = to.map_or(i64::MAX, |t| t.timestamp_micros());
        let mut this = Self::default();
        let mut rows = sqlx::query_as::<_, (String, i64, Uuid, DateTime<Utc>, Vec<u8>)>(
            "SELECT chain, seq, batch_id, committed_at, entries FROM auditline.batches \
             WHERE chain IS NOT NULL AND inserted_count > 0 \
               AND ($1::timestamptz IS NULL OR occurred_max >= $1) \
               AND ($2::timestamptz IS NULL OR occurred_min < $2)",
        )
        .bind(from)
        .bind(to)
        .fetch(pool);
        while let Some((chain, seq, batch_id, committed_at, bytes)) = rows.try_next().await? {
            // A malformed entry list fails its seal hash: reported as an altered seal.
            let Some(entries) = seal::decode_entries(&bytes) else {
                continue;
            };
            let index = this.seals.len() as u32;
            for e in entries {
                if e.occurred_micros < from_micros || e.occurred_micros >= to_micros {
                    continue;
                }
                let day = DateTime::<Utc>::from_timestamp_micros(e.occurred_micros)
                    .map(|t| t.date_naive());
                let dropped_after = day
                    .and_then(|d| dropped.get(&d))
                    .is_some_and(|dropped_at| *dropped_at > committed_at);
                if !dropped_after {
                    this.entries
                        .insert((e.event_id, e.occurred_micros), (e.digest, index));
                }
            }
            this.seals.push(SealRef {
                chain,
                seq,
                batch_id,
            });
        }
        Ok(this)
    }

    /// How many rows are expected and not yet seen.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks one row (or the key of a row no event can be) against its seal.
    pub fn check(&mut self, row: Result<Row, (Uuid, DateTime<Utc>)>, report: &mut Report) {
        report.rows += 1;
        let (event_id, occurred_at, batch_id, entry) = match &row {
            Ok(row) => (
                row.event.event_id,
                row.event.occurred_at,
                Some(row.batch_id),
                Some(row.entry()),
            ),
            Err((id, at)) => (*id, *at, None, None),
        };
        let key = (event_id, occurred_at.timestamp_micros());
        let mut finding = match (self.entries.remove(&key), entry) {
            (Some((digest, _)), Some(entry)) if entry.digest == digest => return,
            (Some((_, index)), _) => {
                let at = &self.seals[index as usize];
                Finding::new(
                    Kind::ChangedRow,
                    format!(
                        "event {event_id} ({occurred_at}) differs from the row chain {} seal {} \
                         stored: it was changed after commit",
                        at.chain, at.seq
                    ),
                )
                .at_seal(at)
            }
            (None, _) => {
                let mut f = Finding::new(
                    Kind::InsertedRow,
                    format!(
                        "event {event_id} ({occurred_at}) is in no seal: it was inserted outside the writer"
                    ),
                );
                f.batch_id = batch_id;
                f
            }
        };
        finding.event_id = Some(event_id);
        finding.occurred_at = Some(occurred_at);
        report.add(finding);
    }

    /// Reports every expected row that was not seen as removed.
    pub fn finish(self, report: &mut Report) {
        let mut removed: Vec<_> = self.entries.into_iter().collect();
        removed.sort_unstable_by_key(|((id, micros), _)| (*micros, *id));
        for ((event_id, micros), (_, index)) in removed {
            let at = &self.seals[index as usize];
            let occurred_at = DateTime::<Utc>::from_timestamp_micros(micros);
            let mut finding = Finding::new(
                Kind::RemovedRow,
                format!(
                    "event {event_id} ({}) sealed by chain {} seal {} is not stored: it was removed",
                    occurred_at.map(|t| t.to_string()).unwrap_or_default(),
                    at.chain,
                    at.seq
                ),
            )
            .at_seal(at);
            finding.event_id = Some(event_id);
            finding.occurred_at = occurred_at;
            report.add(finding);
        }
    }
}

/// The report as lines for a terminal.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "checked {} chains, {} seals, {} rows{}",
        report.chains,
        report.seals,
        report.rows,
        match (report.from, report.to) {
            (None, None) => String::new(),
            (f, t) => format!(
                " occurred in [{}, {})",
                f.map(|t| t.to_string()).unwrap_or_else(|| "-inf".into()),
                t.map(|t| t.to_string()).unwrap_or_else(|| "+inf".into())
            ),
        }
    );
    match &report.checkpoint {
        Some(cp) => {
            let _ = writeln!(
                out,
                "{} checkpoints walked; the newest, {} ({}), anchors {} chains",
                report.checkpoints, cp.file, cp.created_at, cp.chains
            );
        }
        None => out.push_str(
            "no anchored checkpoint used: truncation of the newest batches cannot be detected\n",
        ),
    }
    if report.writer_keys == 0 {
        out.push_str(
            "seal signatures not checked (no integrity.writer_verify_keys): someone who can \
             write to the database could have forged whole chains\n",
        );
    } else {
        let _ = writeln!(
            out,
            "every seal checked against {} writer key(s)",
            report.writer_keys
        );
    }
    if report.unsealed_batches > 0 {
        let _ = writeln!(
            out,
            "{} batches were committed before sealing existed; their rows are not proven",
            report.unsealed_batches
        );
    }
    if !report.dropped_days.is_empty() {
        let _ = writeln!(
            out,
            "{} days archived and dropped by retention",
            report.dropped_days.len()
        );
    }
    for f in &report.findings {
        let _ = writeln!(out, "{:?}: {}", f.kind, f.message);
    }
    if report.ok {
        out.push_str("OK: every seal and row verifies\n");
    } else {
        let _ = writeln!(
            out,
            "FAILED: {} findings ({})",
            report.total(),
            report
                .counts
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}
