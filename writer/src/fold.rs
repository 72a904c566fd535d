//! The rollup fold: committed batches folded into per-minute, per-hour and
//! per-day aggregates (`auditline.rollups`, `auditline.rollup_latency`, laid
//! out as `auditline_shared::rollup` describes) and into the free-text
//! search's blocks, off the writer's hot path and exactly once. Run by the
//! [`RollupKeeper`](crate::rollups::RollupKeeper).

use std::collections::BTreeMap;

use auditline_shared::{
    rollup::{Grain, LATENCY_BUCKETS, latency_bucket},
    text_index,
};
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// What a rollup needs of a stored event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RollupRow {
    pub occurred_at: DateTime<Utc>,
    pub user_id: Option<String>,
    pub action_type: String,
    pub success: bool,
    pub response_time_ms: Option<f64>,
}

/// What one [`fold_pending`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Folded {
    pub batches: usize,
    pub events: u64,
}

/// Folds up to `max_batches` pending batches into the rollups, in one
/// transaction: takes them from `auditline.rollup_pending` (skipping batches
/// another keeper holds), reads their rows by `batch_id`, upserts, indexes
/// them for the free-text search, deletes the pending rows, commits. A crash
/// anywhere leaves the batches pending.
pub async fn fold_pending(pool: &PgPool, max_batches: i64) -> Result<Folded, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let batches: Vec<Uuid> = sqlx::query_scalar(
        "DELETE FROM auditline.rollup_pending WHERE batch_id IN \
           (SELECT batch_id FROM auditline.rollup_pending ORDER BY committed_at \
            LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING batch_id",
    )
    .bind(max_batches)
    .fetch_all(&mut *tx)
    .await?;
    if batches.is_empty() {
        return Ok(Folded::default());
    }
    let started = std::time::Instant::now();
    let (rollup, texts) = read_batches(&mut tx, &batches).await?;
    let events = texts.len() as u64;
    let read = started.elapsed();
    rollup.upsert(&mut tx).await?;
    let blocks = insert_search_blocks(&mut tx, texts).await?;
    tx.commit().await?;
    tracing::debug!(
        batches = batches.len(),
        events,
        keys = rollup.counts.len() + rollup.latency.len(),
        blocks,
        read_ms = read.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "rollups folded"
    );
    Ok(Folded {
        batches: batches.len(),
        events,
    })
}

/// A row as the fold reads it: the rollup's fields and the texts the
/// free-text search compares.
#[derive(sqlx::FromRow)]
struct FoldRow {
    #[sqlx(flatten)]
    rollup: RollupRow,
    endpoint: String,
    metadata: Option<String>,
}

/// A stored row's time and the texts the free-text search compares
/// (`lower(endpoint)`, `lower(metadata::text)`).
pub type RowTexts = (DateTime<Utc>, String, Option<String>);

/// Reads the rows of `batches`: folded into a rollup, and their texts.
pub async fn read_batches(
    conn: &mut PgConnection,
    batches: &[Uuid],
) -> Result<(RollupBatch, Vec<RowTexts>), sqlx::Error> {
    let mut rollup = RollupBatch::default();
    let mut texts = Vec::new();
    let mut rows = sqlx::query_as::<_, FoldRow>(
        "SELECT occurred_at, user_id, action_type, success, response_time_ms, \
                lower(endpoint) AS endpoint, lower(metadata::text) AS metadata \
         FROM auditline.events WHERE batch_id = ANY($1)",
    )
    .bind(batches)
    .fetch(conn);
    while let Some(row) = rows.try_next().await? {
        rollup.add(&row.rollup);
        texts.push((row.rollup.occurred_at, row.endpoint, row.metadata));
    }
    Ok((rollup, texts))
}

/// The free-text search's blocks of these rows, in time order.
pub fn search_blocks(mut texts: Vec<RowTexts>) -> Vec<text_index::Block> {
    texts.sort_unstable_by_key(|(at, ..)| *at);
    let mut builder = text_index::BlockBuilder::default();
    for (at, endpoint, metadata) in &texts {
        match metadata {
            Some(metadata) => builder.add(*at, &[endpoint, metadata]),
            None => builder.add(*at, &[endpoint]),
        }
    }
    builder.finish()
}

/// Indexes the folded rows for the free-text search (see [`text_index`]).
async fn insert_search_blocks(
    conn: &mut PgConnection,
    texts: Vec<RowTexts>,
) -> Result<usize, sqlx::Error> {
    let blocks = search_blocks(texts);
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for block in &blocks {
        columns.0.push(block.first_at);
        columns.1.push(block.last_at);
        columns.2.push(block.rows);
        columns.3.push(block.bits.as_slice());
    }
    sqlx::query(
        "INSERT INTO auditline.search_blocks (first_at, last_at, row_count, bits) \
         SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[], $3::int4[], $4::bytea[])",
    )
    .bind(&columns.0)
    .bind(&columns.1)
    .bind(&columns.2)
    .bind(&columns.3)
    .execute(conn)
    .await?;
    Ok(blocks.len())
}

/// Batches committed but not yet folded into the rollups.
pub async fn pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM auditline.rollup_pending")
        .fetch_one(pool)
        .await
}

#[derive(Debug, Clone, Default)]
struct Counts {
    events: i64,
    failures: i64,
    rt_count: i64,
    rt_sum: f64,
    first_at: Option<DateTime<Utc>>,
    last_at: Option<DateTime<Utc>>,
}

type CountKey = (Grain, DateTime<Utc>, Option<String>, String);
type LatencyKey = (Grain, DateTime<Utc>, Option<String>);

/// The rollup rows of one batch of inserted events. Keys are kept sorted, so
/// every writer upserts rows in the same order and concurrent batches cannot
/// deadlock on each other's row locks.
#[derive(Debug, Default)]
pub struct RollupBatch {
    counts: BTreeMap<CountKey, Counts>,
    latency: BTreeMap<LatencyKey, Vec<i32>>,
}

impl RollupBatch {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn add(&mut self, row: &RollupRow) {
        let bucket = row.response_time_ms.map(latency_bucket);
        for grain in Grain::ALL {
            let start = grain.floor(row.occurred_at);
            // Minutes are kept per action type over everyone: they feed the
            // real-time figures, and a row per user and minute would
            // multiply the work for nothing.
            let user = match grain {
                Grain::Minute => None,
                Grain::Hour | Grain::Day => row.user_id.clone(),
            };
            let counts = self
                .counts
                .entry((grain, start, user, row.action_type.clone()))
                .or_default();
            counts.events += 1;
            counts.failures += i64::from(!row.success);
            if let Some(ms) = row.response_time_ms {
                counts.rt_count += 1;
                counts.rt_sum += ms;
            }
            counts.first_at = Some(
                counts
                    .first_at
                    .map_or(row.occurred_at, |t| t.min(row.occurred_at)),
            );
            counts.last_at = Some(
                counts
                    .last_at
                    .map_or(row.occurred_at, |t| t.max(row.occurred_at)),
            );
            let Some(bucket) = bucket else { continue };
            // Minutes keep one histogram over everyone; hours and days one per user.
            let user = match grain {
                Grain::Minute => None,
                Grain::Hour | Grain::Day => match &row.user_id {
                    Some(user) => Some(user.clone()),
                    None => continue,
                },
            };
            let hist = self
                .latency
                .entry((grain, start, user))
                .or_insert_with(|| vec![0; LATENCY_BUCKETS]);
            hist[bucket] += 1;
        }
    }

    /// Upserts the rows (inside the transaction that takes their batches).
    pub async fn upsert(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.counts.is_empty() {
            return Ok(());
        }
        let n = self.counts.len();
        let (mut grains, mut buckets, mut users, mut actions) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut events, mut failures, mut rt_counts, mut rt_sums, mut firsts, mut lasts) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((grain, bucket, user, action), c) in &self.counts {
            grains.push(grain.code());
            buckets.push(*bucket);
            users.push(user.as_deref());
            actions.push(action.as_str());
            events.push(c.events);
            failures.push(c.failures);
            rt_counts.push(c.rt_count);
            rt_sums.push(c.rt_sum);
            firsts.push(c.first_at.unwrap_or(*bucket));
            lasts.push(c.last_at.unwrap_or(*bucket));
        }
        sqlx::query(
            r#"INSERT INTO auditline.rollups AS r
                   (grain, bucket, user_id, action_type, events, failures, rt_count, rt_sum, first_at, last_at)
               SELECT g::"char", b, u, a, e, f, rc, rs, fa, la
               FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::int8[],
                           $6::int8[], $7::int8[], $8::float8[], $9::timestamptz[], $10::timestamptz[])
                    AS t(g, b, u, a, e, f, rc, rs, fa, la)
               ON CONFLICT ON CONSTRAINT rollups_key DO UPDATE SET
                   events = r.events + excluded.events,
                   failures = r.failures + excluded.failures,
                   rt_count = r.rt_count + excluded.rt_count,
                   rt_sum = r.rt_sum + excluded.rt_sum,
                   first_at = least(r.first_at, excluded.first_at),
                   last_at = greatest(r.last_at, excluded.last_at)"#,
        )
        .bind(&grains)
        .bind(&buckets)
        .bind(&users)
        .bind(&actions)
        .bind(&events)
        .bind(&failures)
        .bind(&rt_counts)
        .bind(&rt_sums)
        .bind(&firsts)
        .bind(&lasts)
        .execute(&mut *conn)
        .await?;

        if self.latency.is_empty() {
            return Ok(());
        }
        let n = self.latency.len();
        let (mut grains, mut buckets, mut users, mut hists) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((grain, bucket, user), hist) in &self.latency {
            grains.push(grain.code());
            buckets.push(*bucket);
            users.push(user.as_deref());
            // A two-dimensional array cannot be unnested row by row, so each
            // histogram travels as an array literal, trimmed to its non-zero
            // buckets: `[lo:hi]={…}` (1-based, element b + 1 is bucket b).
            let first = hist.iter().position(|c| *c != 0).unwrap_or(0);
            let last = hist.iter().rposition(|c| *c != 0).unwrap_or(first);
            let mut literal = format!("[{}:{}]={{", first + 1, last + 1);
            for (i, count) in hist[first..=last].iter().enumerate() {
                if i > 0 {
                    literal.push(',');
                }
                literal.push_str(&count.to_string());
            }
            literal.push('}');
            hists.push(literal);
        }
        sqlx::query(
            r#"INSERT INTO auditline.rollup_latency AS r (grain, bucket, user_id, hist)
               SELECT g::"char", b, u, h::int4[]
               FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[]) AS t(g, b, u, h)
               ON CONFLICT ON CONSTRAINT rollup_latency_key DO UPDATE SET
                   hist = auditline.hist_add(r.hist, excluded.hist)"#,
        )
        .bind(&grains)
        .bind(&buckets)
        .bind(&users)
        .bind(&hists)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: &str, user: Option<&str>, success: bool, ms: Option<f64>) -> RollupRow {
        RollupRow {
            occurred_at: at.parse().expect("time"),
            user_id: user.map(str::to_owned),
            action_type: "file".into(),
            success,
            response_time_ms: ms,
        }
    }

    #[test]
    fn rows_fold_into_minutes_over_everyone_and_hours_and_days_per_user() {
        let mut batch = RollupBatch::default();
        assert!(batch.is_empty());
        batch.add(&row("2026-12-03T10:00:05Z", Some("alice"), true, Some(2.0)));
        batch.add(&row(
            "2026-12-03T10:00:50Z",
            Some("bob"),
            false,
            Some(600.0),
        ));
        batch.add(&row("2026-12-03T10:01:10Z", Some("alice"), true, None));
        batch.add(&row("2026-12-03T10:02:00Z", None, true, Some(1.0)));
        let at = |t: &str| t.parse::<DateTime<Utc>>().expect("time");
        let minute = &batch.counts[&(
            Grain::Minute,
            at("2026-12-03T10:00:00Z"),
            None,
            "file".into(),
        )];
        assert_eq!(
            (minute.events, minute.failures),
            (2, 1),
            "alice and bob in one minute"
        );
        assert_eq!((minute.rt_count, minute.rt_sum), (2, 602.0));
        assert_eq!(minute.first_at, Some(at("2026-12-03T10:00:05Z")));
        assert_eq!(minute.last_at, Some(at("2026-12-03T10:00:50Z")));
        let alice_hour = &batch.counts[&(
            Grain::Hour,
            at("2026-12-03T10:00:00Z"),
            Some("alice".into()),
            "file".into(),
        )];
        assert_eq!((alice_hour.events, alice_hour.rt_count), (2, 1));
        let nobody_day =
            &batch.counts[&(Grain::Day, at("2026-12-03T00:00:00Z"), None, "file".into())];
        assert_eq!(
            nobody_day.events, 1,
            "an event without a user has its own row"
        );
        // Three minutes, one hour row per user (and one without), one day row each.
        let per_grain = |g: Grain| batch.counts.keys().filter(|k| k.0 == g).count();
        assert_eq!(per_grain(Grain::Minute), 3);
        assert_eq!(per_grain(Grain::Hour), 3);
        assert_eq!(per_grain(Grain::Day), 3);
        // Histograms: minutes over everyone; hours and days only for users.
        let hist = &batch.latency[&(Grain::Minute, at("2026-12-03T10:00:00Z"), None)];
        assert_eq!(hist.iter().sum::<i32>(), 2);
        assert_eq!(hist[latency_bucket(600.0)], 1);
        assert!(
            !batch
                .latency
                .contains_key(&(Grain::Hour, at("2026-12-03T10:00:00Z"), None))
        );
        let bob = &batch.latency[&(Grain::Day, at("2026-12-03T00:00:00Z"), Some("bob".into()))];
        assert_eq!(bob[latency_bucket(600.0)], 1);
    }
}
