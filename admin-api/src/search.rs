//! `GET /admin/audit/logs` and `GET /admin/audit/logs/{event_id}`: filtered
//! search with keyset pagination on (`occurred_at`, `event_id`).
//!
//! The cursor is opaque to clients: it carries the position of the last event
//! of a page, the time window of the first page (so "the last 24 hours" does
//! not slide while a client walks the pages), the order and a digest of the
//! filters, signed with an installation-wide HMAC key. A cursor that was
//! altered, forged or reused with other filters is a 400.

use actix_web::{HttpRequest, HttpResponse, web};
use auditline_ingest::middleware::Cidr;
use auditline_shared::{db, event::check_action_type, text_index};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use hmac::{KeyInit, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    app::{Reader, State},
    error::ApiError,
    params::{Params, Text, time_range},
};

pub(crate) use auditline_shared::event_columns;
pub use auditline_shared::stored::StoredEvent;

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

/// The filters of a search, shared by the export routes (documentation of
/// the query string; the handlers parse it themselves so that every error
/// names its parameter).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct FilterParams {
    /// Any of these users (repeatable).
    #[param(value_type = Option<Vec<Text>>)]
    user_id: Option<Vec<String>>,
    /// Any of these sessions (repeatable).
    #[param(value_type = Option<Vec<Text>>)]
    session_id: Option<Vec<String>>,
    /// Any of these services (repeatable).
    #[param(value_type = Option<Vec<Text>>)]
    service: Option<Vec<String>>,
    /// Any of these action types (repeatable), e.g. `file`, `code_exec`.
    #[param(value_type = Option<Vec<Text>>)]
    action_type: Option<Vec<String>>,
    /// Endpoint prefix, e.g. `/files/`.
    #[param(min_length = 1)]
    endpoint: Option<String>,
    /// Any of these methods (repeatable), e.g. `GET`.
    #[param(value_type = Option<Vec<Text>>)]
    http_method: Option<Vec<String>>,
    /// Any of these statuses (repeatable): a code (`404`) or a class (`5xx`).
    #[param(value_type = Option<Vec<Text>>)]
    status: Option<Vec<String>>,
    success: Option<bool>,
    /// An address or a CIDR network, e.g. `10.0.0.0/8`.
    #[param(min_length = 1)]
    client_ip: Option<String>,
    /// Start of the window (inclusive); default `to` minus 24 hours.
    from: Option<DateTime<Utc>>,
    /// End of the window (exclusive); default now.
    to: Option<DateTime<Utc>>,
    #[param(minimum = 0)]
    min_response_time_ms: Option<f64>,
    /// Free text, case-insensitive, over the endpoint and the metadata.
    #[param(min_length = 1, max_length = 200)]
    q: Option<String>,
}

/// The search's own parameters, after [`FilterParams`] (documentation only).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SearchParams {
    /// `desc` (newest first, default) or `asc`.
    #[param(pattern = "^(asc|desc)$")]
    order: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// What an event is matched on: the search's filters without the window.
pub const MATCH_PARAMS: &[&str] = &[
    "user_id",
    "session_id",
    "service",
    "action_type",
    "endpoint",
    "http_method",
    "status",
    "success",
    "client_ip",
    "min_response_time_ms",
    "q",
];

/// The time window of a search or an export.
pub const WINDOW_PARAMS: &[&str] = &["from", "to"];

pub const SEARCH_PARAMS: &[&[&str]] = &[MATCH_PARAMS, WINDOW_PARAMS, &["order", "limit", "cursor"]];

/// Validated search filters (everything but the page position).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub user_ids: Vec<String>,
    pub session_ids: Vec<String>,
    pub services: Vec<String>,
    pub action_types: Vec<String>,
    pub endpoint_prefix: Option<String>,
    pub http_methods: Vec<String>,
    pub status_codes: Vec<i16>,
    pub status_classes: Vec<i16>,
    pub success: Option<bool>,
    pub client_net: Option<Cidr>,
    pub min_response_time_ms: Option<f64>,
    pub q: Option<String>,
}

fn many(params: &Params, name: &str, max_chars: usize) -> Result<Vec<String>, ApiError> {
    let values = params.all(name)?;
    if values.len() > 100 {
        return Err(ApiError::param(name, "at most 100 values"));
    }
    values
        .into_iter()
        .map(|v| crate::params::check_len(name, v, max_chars).map(|()| v.to_owned()))
        .collect()
}

impl Filters {
    pub fn parse(params: &Params) -> Result<Self, ApiError> {
        let action_types = many(params, "action_type", 50)?;
        for action in &action_types {
            check_action_type(action)
                .map_err(|e| ApiError::param("action_type", format!("{action:?} {e}")))?;
        }
        let http_methods = many(params, "http_method", 10)?;
        for method in &http_methods {
            if !method.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(ApiError::param(
                    "http_method",
                    format!("{method:?} is not an upper-case method such as GET"),
                ));
            }
        }
        let (mut status_codes, mut status_classes) = (Vec::new(), Vec::new());
        for status in many(params, "status", 3)? {
            let bytes = status.as_bytes();
            match bytes {
                [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                    status_classes.push(i16::from(c - b'0'));
                }
                _ => match status.parse::<i16>() {
                    Ok(code) if (100..=599).contains(&code) && bytes.len() == 3 => {
                        status_codes.push(code);
                    }
                    _ => {
                        return Err(ApiError::param(
                            "status",
                            format!(
                                "{status:?} is neither a status code (100-599) nor a class like 5xx"
                            ),
                        ));
                    }
                },
            }
        }
        let q = params.text("q", 200)?;
        Ok(Self {
            user_ids: many(params, "user_id", 255)?,
            session_ids: many(params, "session_id", 64)?,
            services: many(params, "service", 64)?,
            action_types,
            endpoint_prefix: params.text("endpoint", 255)?,
            http_methods,
            status_codes,
            status_classes,
            success: params.boolean("success")?,
            client_net: params
                .one("client_ip")?
                .map(|text| {
                    Cidr::parse(text).map_err(|e| {
                        ApiError::param(
                            "client_ip",
                            format!("{e} (e.g. 10.0.0.0/8 or 2001:db8::1)"),
                        )
                    })
                })
                .transpose()?,
            min_response_time_ms: params.number("min_response_time_ms")?,
            q: q.map(|q| q.to_lowercase()),
        })
    }

    /// A digest of the filters, so that a cursor only continues the search it
    /// came from.
    fn digest(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        let mut put = |name: &str, values: &[String]| {
            h.update(name.as_bytes());
            h.update([0]);
            for v in values {
                h.update(v.as_bytes());
                h.update([0]);
            }
            h.update([1]);
        };
        let one = |v: &Option<String>| v.iter().cloned().collect::<Vec<_>>();
        let num = |v: &[i16]| v.iter().map(i16::to_string).collect::<Vec<_>>();
        put("user_id", &self.user_ids);
        put("session_id", &self.session_ids);
        put("service", &self.services);
        put("action_type", &self.action_types);
        put("endpoint", &one(&self.endpoint_prefix));
        put("http_method", &self.http_methods);
        put("status_code", &num(&self.status_codes));
        put("status_class", &num(&self.status_classes));
        put("success", &one(&self.success.map(|b| b.to_string())));
        put("client_ip", &one(&self.client_net.map(|c| c.to_string())));
        put(
            "min_response_time_ms",
            &one(&self.min_response_time_ms.map(|v| v.to_string())),
        );
        put("q", &one(&self.q));
        let full = h.finalize();
        let mut out = [0; 8];
        out.copy_from_slice(&full[..8]);
        out
    }

    /// Appends ` AND …` conditions (all values bound, never interpolated).
    pub fn push_conditions(&self, qb: &mut QueryBuilder<Postgres>) {
        if !self.user_ids.is_empty() {
            qb.push(" AND user_id = ANY(")
                .push_bind(self.user_ids.clone())
                .push(")");
        }
        if !self.session_ids.is_empty() {
            qb.push(" AND session_id = ANY(")
                .push_bind(self.session_ids.clone())
                .push(")");
        }
        if !self.services.is_empty() {
            qb.push(" AND service = ANY(")
                .push_bind(self.services.clone())
                .push(")");
        }
        if !self.action_types.is_empty() {
            qb.push(" AND action_type = ANY(")
                .push_bind(self.action_types.clone())
                .push(")");
        }
        if let Some(prefix) = &self.endpoint_prefix {
            qb.push(" AND starts_with(endpoint, ")
                .push_bind(prefix.clone())
                .push(")");
        }
        if !self.http_methods.is_empty() {
            qb.push(" AND http_method = ANY(")
                .push_bind(self.http_methods.clone())
                .push(")");
        }
        if !self.status_codes.is_empty() || !self.status_classes.is_empty() {
            // A class is a range of codes: PostgreSQL estimates a range from
            // the column's statistics, while `status_code / 100` has none; it
            // guessed 0.5% for 5xx (really ~5%) and sorted every code_exec
            // row of the day instead of walking the time index (30 ms, not 3).
            qb.push(" AND (");
            let mut first = true;
            if !self.status_codes.is_empty() {
                qb.push("status_code = ANY(")
                    .push_bind(self.status_codes.clone())
                    .push(")");
                first = false;
            }
            for &class in &self.status_classes {
                if !first {
                    qb.push(" OR ");
                }
                first = false;
                qb.push("(status_code >= ")
                    .push_bind(class * 100)
                    .push(" AND status_code < ")
                    .push_bind(class * 100 + 100)
                    .push(")");
            }
            qb.push(")");
        }
        if let Some(success) = self.success {
            qb.push(" AND success = ").push_bind(success);
        }
        if let Some(net) = self.client_net {
            qb.push(" AND client_ip <<= ")
                .push_bind(net.to_string())
                .push("::inet");
        }
        if let Some(ms) = self.min_response_time_ms {
            qb.push(" AND response_time_ms >= ").push_bind(ms);
        }
        if let Some(q) = &self.q {
            qb.push(" AND (strpos(lower(endpoint), ")
                .push_bind(q.clone())
                .push(") > 0 OR strpos(lower(metadata::text), ")
                .push_bind(q.clone())
                .push(") > 0)");
        }
    }
}

/// A position in a search: after (or before, ascending) this event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub occurred_at: DateTime<Utc>,
    pub event_id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub descending: bool,
    digest: [u8; 8],
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
        let filters = Filters::parse(params)?;
        let descending = params.descending("order")?;
        let limit = params.integer("limit", 1, 1000)?.unwrap_or(100);
        let (mut from, mut to) = time_range(params, TimeDelta::hours(24))?;
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
                ("from", params.time("from")?, cursor.from),
                ("to", params.time("to")?, cursor.to),
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
        let Some(bits) = self.filters.q.as_deref().and_then(text_index::query_bits) else {
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

/// Search the audit log.
#[utoipa::path(
    get,
    path = "/admin/audit/logs",
    tag = "search",
    params(FilterParams, SearchParams),
    responses(
        (status = 200, description = "One page of matching events", body = SearchPage),
        crate::openapi::ReadErrors,
    )
)]
pub async fn search(
    req: HttpRequest,
    _reader: Reader,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse_from(req.query_string(), SEARCH_PARAMS)?;
    let search = Search::parse(&params, &state.cursor_key)?;
    let page = search.run(&state.pool, &state.cursor_key).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// One stored event.
#[utoipa::path(
    get,
    path = "/admin/audit/logs/{event_id}",
    tag = "search",
    params(("event_id" = Uuid, Path, description = "The event's id")),
    responses(
        (status = 200, description = "The event", body = StoredEvent),
        crate::openapi::ReadErrors,
        (status = 404, description = "No event has this id", body = crate::openapi::ErrorEnvelope),
    )
)]
pub async fn event(
    req: HttpRequest,
    _reader: Reader,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let id = crate::params::path_uuid("event_id", &path)?;
    // The same id could in theory be stored at two times (the key is
    // (event_id, occurred_at)); the earliest is the answer.
    let event: Option<StoredEvent> = sqlx::query_as(concat!(
        "SELECT ",
        event_columns!(),
        " FROM auditline.events WHERE event_id = $1 ORDER BY occurred_at LIMIT 1"
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    match event {
        Some(event) => Ok(HttpResponse::Ok().json(event)),
        None => Err(ApiError::NotFound(format!("no event with id {id}"))),
    }
}
