//! The search query: keyset pages on (`occurred_at`, `event_id`), with the
//! free-text index narrowing `q` to candidate time ranges.

use auditline_shared::{db, text_index};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    error::ApiError,
    query::{
        cursor::{Cursor, CursorKey},
        filters::Filters,
        params::{Params, window},
    },
};
use auditline_shared::{event_columns, stored::StoredEvent};

/// One page of search results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchPage {
    pub events: Vec<StoredEvent>,
    /// Pass as `cursor` (with the same filters) for the next page; null on the last page.
    pub next_cursor: Option<String>,
    /// The time window searched (`from` inclusive, `to` exclusive).
    pub window: Window,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The search's own parameters, after the filters (described here, read
/// by [`Search::parse`]).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// A parsed search request.
#[derive(Debug)]
pub struct Search {
    pub filters: Filters,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub descending: bool,
    pub limit: i64,
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

impl Search {
    pub fn parse(params: &Params, key: &CursorKey) -> Result<Self, ApiError> {
        let filters = Filters::from_params(params)?;
        let descending = filters.descending_or(true);
        let limit = params.integer("limit", 1, 1000)?.unwrap_or(100);
        let (mut from, mut to) = window(filters.from, filters.to, TimeDelta::hours(24))?;
        let mut after = None;
        if let Some(text) = params.one("cursor")? {
            let cursor = key.decode(text)?;
            if cursor.digest != filters.digest() || cursor.descending != descending {
                return Err(ApiError::param(
                    "cursor",
                    "belongs to a search with other filters or order; repeat the filters of the first page",
                ));
            }
            // The window is the first page's: explicit from/to must agree.
            for (name, given, kept) in [
                ("from", filters.from, cursor.from),
                ("to", filters.to, cursor.to),
            ] {
                if given.is_some_and(|t| t.timestamp_micros() != kept.timestamp_micros()) {
                    return Err(ApiError::param(
                        name,
                        "differs from the window of the search the cursor belongs to",
                    ));
                }
            }
            (from, to) = (cursor.from, cursor.to);
            after = Some((cursor.occurred_at, cursor.event_id));
        }
        Ok(Self {
            filters,
            from,
            to,
            descending,
            limit,
            after,
        })
    }

    /// The page's query; with `ranges`, only rows within one of those
    /// (disjoint, inclusive) time ranges are read.
    fn query(&self, ranges: Option<Ranges>) -> QueryBuilder<Postgres> {
        let mut qb = QueryBuilder::new("");
        let lateral = ranges.is_some();
        if let Some(ranges) = ranges {
            // One index range scan per candidate range (OFFSET 0 keeps the
            // planner from flattening the subquery and walking the whole
            // window in order instead), then a sort of the few rows found.
            qb.push("SELECT found.* FROM unnest(")
                .push_bind(ranges.starts)
                .push("::timestamptz[], ")
                .push_bind(ranges.ends)
                .push("::timestamptz[]) AS candidate(range_start, range_end) CROSS JOIN LATERAL (");
        }
        qb.push(concat!(
            "SELECT ",
            event_columns!(),
            " FROM auditline.events WHERE "
        ));
        if lateral {
            qb.push(
                "occurred_at >= candidate.range_start AND occurred_at <= candidate.range_end AND ",
            );
        }
        qb.push("occurred_at >= ")
            .push_bind(self.from)
            .push(" AND occurred_at < ")
            .push_bind(self.to);
        self.filters.push_conditions(&mut qb);
        let (cmp, dir) = if self.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some((at, id)) = self.after {
            qb.push(format_args!(" AND (occurred_at, event_id) {cmp} ("))
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        if lateral {
            qb.push(" OFFSET 0) AS found");
        }
        qb.push(format_args!(
            " ORDER BY occurred_at {dir}, event_id {dir} LIMIT "
        ))
        .push_bind(self.limit + 1);
        qb
    }

    /// The part of the window this page can still reach.
    fn remaining(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        match self.after {
            Some((at, _)) if self.descending => {
                (self.from, self.to.min(at + TimeDelta::microseconds(1)))
            }
            Some((at, _)) => (self.from.max(at), self.to),
            None => (self.from, self.to),
        }
    }

    async fn fetch(&self, pool: &PgPool) -> Result<Vec<StoredEvent>, ApiError> {
        let Some(bits) = self
            .filters
            .text()
            .as_deref()
            .and_then(text_index::query_bits)
        else {
            return Ok(self.query(None).build_query_as().fetch_all(pool).await?);
        };
        // Blocks and pending batches must be read in the snapshot the rows are.
        let mut tx = db::snapshot(pool).await?;
        let (from, to) = self.remaining();
        let ranges = candidate_ranges(&mut tx, from, to, &bits, self.limit).await?;
        let events = self
            .query(ranges)
            .build_query_as()
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(events)
    }

    pub async fn run(&self, pool: &PgPool, key: &CursorKey) -> Result<SearchPage, ApiError> {
        let mut events = self.fetch(pool).await?;
        let more = events.len() as i64 > self.limit;
        events.truncate(usize::try_from(self.limit).unwrap_or(usize::MAX));
        let next_cursor = match events.last() {
            Some(last) if more => Some(key.encode(&Cursor {
                occurred_at: last.occurred_at,
                event_id: last.event_id,
                from: self.from,
                to: self.to,
                descending: self.descending,
                digest: self.filters.digest(),
            })),
            _ => None,
        };
        Ok(SearchPage {
            events,
            next_cursor,
            window: Window {
                from: self.from,
                to: self.to,
            },
        })
    }
}

/// Time ranges, as two parallel arrays for `unnest`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Ranges {
    starts: Vec<DateTime<Utc>>,
    ends: Vec<DateTime<Utc>>,
}

impl Ranges {
    /// Sorted and merged so that no row is in two of them.
    fn merged(mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)>) -> Self {
        spans.sort_unstable();
        let mut ranges = Self::default();
        for (start, end) in spans {
            match ranges.ends.last_mut() {
                Some(last) if start <= *last => *last = (*last).max(end),
                _ => {
                    ranges.starts.push(start);
                    ranges.ends.push(end);
                }
            }
        }
        ranges
    }
}

type At = DateTime<Utc>;

/// The time ranges within `[from, to)` that can hold a row containing the
/// search text: those of the blocks whose filter has every bit, and those of
/// batches not indexed yet. `None` when the plain scan is the better plan.
///
/// Reading the candidates costs about a block's rows each; the plain scan of
/// the time index stops after `limit` matches, which takes about
/// `limit × blocks / matches` blocks. Counting each candidate as one match,
/// the candidates win while `candidates² < limit × blocks`: a rare term
/// (75 of 3,075 blocks in a day) reads its candidates, a common one (every
/// block) goes to the plain scan and finds its page at once.
async fn candidate_ranges(
    conn: &mut sqlx::PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bits: &[i64],
    limit: i64,
) -> Result<Option<Ranges>, sqlx::Error> {
    let earliest = from - text_index::MAX_SPAN;
    let blocks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM auditline.search_blocks WHERE first_at >= $1 AND first_at < $2",
    )
    .bind(earliest)
    .bind(to)
    .fetch_one(&mut *conn)
    .await?;
    let most = ((limit.max(1) as f64) * (blocks as f64)).sqrt() as i64 + 1;
    let mut qb = QueryBuilder::new(
        "SELECT first_at, last_at FROM auditline.search_blocks WHERE first_at >= ",
    );
    qb.push_bind(earliest)
        .push(" AND first_at < ")
        .push_bind(to)
        .push(" AND last_at >= ")
        .push_bind(from);
    for &bit in bits {
        qb.push(" AND get_bit(bits, ").push_bind(bit).push(") = 1");
    }
    qb.push(" LIMIT ").push_bind(most + 1);
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        qb.build_query_as().fetch_all(&mut *conn).await?;
    if spans.len() as i64 > most {
        return Ok(None);
    }
    let pending: Vec<(Option<At>, Option<At>)> = sqlx::query_as(
        "SELECT b.occurred_min, b.occurred_max \
         FROM auditline.rollup_pending p JOIN auditline.batches b USING (batch_id) \
         WHERE b.occurred_min IS NULL OR b.occurred_max IS NULL \
            OR (b.occurred_max >= $1 AND b.occurred_min < $2)",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    for span in pending {
        // A batch committed before seals recorded no time range.
        let (Some(start), Some(end)) = span else {
            return Ok(None);
        };
        spans.push((start, end));
    }
    Ok(Some(Ranges::merged(spans)))
}
