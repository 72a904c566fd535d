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
//!
//! Layout: `chains` (1), `history` (2), `rows` (3); this module: the report,
//! [`verify`] and [`render`].

mod chains;
mod history;
mod rows;

use chains::*;
pub use chains::{SealSeen, Seals, check_chains};
use rows::*;
pub use rows::{Expected, ROW_COLUMNS, Row, StoredRow, accepted_drops};

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
