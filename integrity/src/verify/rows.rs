//! The rows: each stored row's digest recomputed and looked up in the
//! seals' entries, one UTC day at a time, allowing for the days retention
//! dropped under a signed record.

use super::*;

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
    pub(super) event: StoredEvent,
    pub(super) batch_id: Uuid,
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

pub(super) async fn check_rows(
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
pub(super) async fn check_window(
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
    pub(super) seals: Vec<SealRef>,
    pub(super) entries: HashMap<(Uuid, i64), ([u8; 16], u32)>,
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
