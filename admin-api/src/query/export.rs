//! Exports: the search filters' matching events as CSV, JSON or NDJSON, plain
//! or zstd, at constant memory whatever the size.
//!
//! Rows are read in keyset chunks of [`CHUNK_ROWS`] on (`occurred_at`,
//! `event_id`) inside one `REPEATABLE READ READ ONLY` transaction: the export
//! is a consistent snapshot, and at most one chunk is in memory. The same
//! [`Encoder`] feeds the streamed `GET /admin/audit/export` response and the
//! export jobs' files.
//!
//! CSV (RFC 4180, `csv` crate) has a header row; `metadata` and
//! `resource_usage` are JSON text; a text cell that a spreadsheet would run as
//! a formula (starting with `=`, `+`, `-`, `@`, tab or carriage return) is
//! prefixed with `'`, as OWASP advises. JSON is one array, NDJSON one event a
//! line, each event the same object `GET /admin/audit/logs` returns.

use auditline_shared::event::rfc3339_text as time;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, QueryBuilder, Transaction};
use std::borrow::Cow;
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    error::ApiError,
    query::{
        filters::{Filters, UNWINDOWED_NAMES, WINDOW_NAMES},
        params::{Params, window},
    },
};

/// Rows per keyset query.
pub const CHUNK_ROWS: i64 = 5_000;
/// zstd level of exports: level 1 still shrinks CSV of audit events about
/// four times, for much less CPU than higher levels, and on a small box the
/// CPU is what limits an export.
const ZSTD_LEVEL: i32 = 1;
/// Encoded bytes gathered before they are handed on (a response chunk, a write).
const FLUSH_BYTES: usize = 256 * 1024;

/// Parameters of `GET /admin/audit/export`.
pub const EXPORT_PARAMS: &[&[&str]] = &[UNWINDOWED_NAMES, WINDOW_NAMES, &["format", "compression"]];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Json,
    Ndjson,
}

impl Format {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "csv" => Some(Self::Csv),
            "json" => Some(Self::Json),
            "ndjson" => Some(Self::Ndjson),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Ndjson => "ndjson",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
            Self::Ndjson => "application/x-ndjson",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

impl Compression {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
        }
    }
}

/// The export's own parameters, after the search's filters (documentation only).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ExportParams {
    /// `csv` (default), `json` or `ndjson`.
    #[param(pattern = "^(csv|json|ndjson)$")]
    format: Option<String>,
    /// `none` (default) or `zstd`.
    #[param(pattern = "^(none|zstd)$")]
    compression: Option<String>,
}

/// What to export: filters, window, order, format and compression.
#[derive(Debug, Clone)]
pub struct Export {
    pub filters: Filters,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub descending: bool,
    pub format: Format,
    pub compression: Compression,
}

impl Export {
    /// Parses the filters (with `from`, `to` and `order`: oldest first
    /// unless told); `format` and `compression` are taken from the query
    /// when present.
    pub fn parse(params: &Params) -> Result<Self, ApiError> {
        let filters = Filters::from_params(params)?;
        let format = match params.one("format")? {
            None => Format::Csv,
            Some(text) => Format::parse(text).ok_or_else(|| {
                ApiError::param(
                    "format",
                    format!("{text:?} is not one of csv, json, ndjson"),
                )
            })?,
        };
        let compression = match params.one("compression")? {
            None => Compression::None,
            Some(text) => Compression::parse(text).ok_or_else(|| {
                ApiError::param("compression", format!("{text:?} is not one of none, zstd"))
            })?,
        };
        Self::new(filters, format, compression)
    }

    /// An export of `filters` over their window (the last 24 hours unless
    /// they say), oldest first unless they say.
    pub fn new(
        filters: Filters,
        format: Format,
        compression: Compression,
    ) -> Result<Self, ApiError> {
        let (from, to) = window(filters.from, filters.to, TimeDelta::hours(24))?;
        Ok(Self {
            descending: filters.descending_or(false),
            filters,
            from,
            to,
            format,
            compression,
        })
    }

    /// `auditline-<from>-<to>.<format>[.zst]`.
    pub fn file_name(&self) -> String {
        let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
        format!(
            "auditline-{}-{}.{}{}",
            stamp(self.from),
            stamp(self.to),
            self.format.as_str(),
            self.extension_suffix()
        )
    }

    fn extension_suffix(&self) -> &'static str {
        match self.compression {
            Compression::None => "",
            Compression::Zstd => ".zst",
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self.compression {
            Compression::None => self.format.content_type(),
            Compression::Zstd => "application/zstd",
        }
    }

    fn chunk_query(&self, after: Option<(DateTime<Utc>, Uuid)>) -> QueryBuilder<Postgres> {
        let mut qb = QueryBuilder::new(
            "SELECT event_id, occurred_at, received_at, service, session_id, user_id, \
             host(client_ip) AS client_ip, action_type, endpoint, route, http_method, \
             request_size, response_size, response_time_ms, status_code, success, \
             resource_usage::text AS resource_usage, metadata::text AS metadata \
             FROM auditline.events WHERE occurred_at >= ",
        );
        qb.push_bind(self.from)
            .push(" AND occurred_at < ")
            .push_bind(self.to);
        self.filters.push_conditions(&mut qb);
        let (cmp, dir) = if self.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some((at, id)) = after {
            qb.push(format_args!(" AND (occurred_at, event_id) {cmp} ("))
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        qb.push(format_args!(
            " ORDER BY occurred_at {dir}, event_id {dir} LIMIT "
        ))
        .push_bind(CHUNK_ROWS);
        qb
    }

    /// How far through the window `at` is (0..=1), in the export's order.
    pub fn progress(&self, at: DateTime<Utc>) -> f64 {
        let span = (self.to - self.from).num_milliseconds().max(1) as f64;
        let done = if self.descending {
            (self.to - at).num_milliseconds()
        } else {
            (at - self.from).num_milliseconds()
        };
        (done as f64 / span).clamp(0.0, 1.0)
    }
}

/// Walks an export's rows chunk by chunk.
#[derive(Debug)]
pub struct Rows<'a> {
    export: &'a Export,
    after: Option<(DateTime<Utc>, Uuid)>,
    done: bool,
}

impl<'a> Rows<'a> {
    pub fn new(export: &'a Export) -> Self {
        Self {
            export,
            after: None,
            done: false,
        }
    }

    /// The next chunk; empty at the end.
    pub async fn next(&mut self, conn: &mut PgConnection) -> Result<Vec<ExportRow>, sqlx::Error> {
        if self.done {
            return Ok(Vec::new());
        }
        let rows: Vec<ExportRow> = self
            .export
            .chunk_query(self.after)
            .build_query_as()
            .fetch_all(conn)
            .await?;
        if (rows.len() as i64) < CHUNK_ROWS {
            self.done = true;
        }
        if let Some(last) = rows.last() {
            self.after = Some((last.occurred_at, last.event_id));
        }
        Ok(rows)
    }
}

/// What the read-ahead task hands over.
enum Chunk {
    Rows(Vec<ExportRow>),
    End,
    Failed(sqlx::Error),
}

/// Reads an export's chunks one ahead of its consumer, on a task of its own:
/// PostgreSQL fetches the next chunk while the current one is encoded. The
/// end is an explicit message, so a reader that died is an error, never a
/// short export taken for a whole one.
#[derive(Debug)]
pub struct ReadAhead {
    rx: mpsc::Receiver<Chunk>,
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rows(rows) => write!(f, "Rows({})", rows.len()),
            Self::End => f.write_str("End"),
            Self::Failed(e) => write!(f, "Failed({e})"),
        }
    }
}

impl ReadAhead {
    /// Starts reading in `snapshot` (`db::snapshot`), which is rolled back
    /// when the reading ends.
    pub fn start(export: Export, mut snapshot: Transaction<'static, Postgres>) -> Self {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut rows = Rows::new(&export);
            loop {
                let chunk = match rows.next(&mut snapshot).await {
                    Ok(chunk) if chunk.is_empty() => Chunk::End,
                    Ok(chunk) => Chunk::Rows(chunk),
                    Err(e) => Chunk::Failed(e),
                };
                let last = !matches!(chunk, Chunk::Rows(_));
                if tx.send(chunk).await.is_err() || last {
                    break;
                }
            }
            let _ = snapshot.rollback().await;
        });
        Self { rx }
    }

    /// The next chunk; `Ok(None)` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<ExportRow>>, sqlx::Error> {
        match self.rx.recv().await {
            Some(Chunk::Rows(rows)) => Ok(Some(rows)),
            Some(Chunk::End) => Ok(None),
            Some(Chunk::Failed(e)) => Err(e),
            None => Err(sqlx::Error::Protocol(
                "the export's reader stopped before the end".into(),
            )),
        }
    }
}

/// An event as exported: the JSON columns stay text (as PostgreSQL prints
/// them), so they are never parsed and re-serialized.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExportRow {
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub service: String,
    pub session_id: String,
    pub user_id: Option<String>,
    pub client_ip: Option<String>,
    pub action_type: String,
    pub endpoint: String,
    pub route: Option<String>,
    pub http_method: String,
    pub request_size: Option<i64>,
    pub response_size: Option<i64>,
    pub response_time_ms: Option<f64>,
    pub status_code: Option<i16>,
    pub success: bool,
    pub resource_usage: Option<String>,
    pub metadata: Option<String>,
}

/// The columns, in the order of the CSV header and of the JSON objects.
pub const COLUMNS: [&str; 18] = [
    "event_id",
    "occurred_at",
    "received_at",
    "service",
    "session_id",
    "user_id",
    "client_ip",
    "action_type",
    "endpoint",
    "route",
    "http_method",
    "request_size",
    "response_size",
    "response_time_ms",
    "status_code",
    "success",
    "resource_usage",
    "metadata",
];

/// A text cell a spreadsheet would not run as a formula.
fn neutralized(text: &str) -> Cow<'_, str> {
    match text.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{text}")),
        _ => Cow::Borrowed(text),
    }
}

fn number(value: f64) -> String {
    // serde_json's rendering, as in the search API.
    serde_json::to_string(&value).unwrap_or_default()
}

enum Output {
    Plain(Vec<u8>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// Turns rows into the bytes of an export file.
pub struct Encoder {
    format: Format,
    output: Output,
    rows: u64,
    started: bool,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new(format: Format, compression: Compression) -> std::io::Result<Self> {
        let output = match compression {
            Compression::None => Output::Plain(Vec::with_capacity(FLUSH_BYTES)),
            Compression::Zstd => Output::Zstd(zstd::stream::write::Encoder::new(
                Vec::with_capacity(FLUSH_BYTES),
                ZSTD_LEVEL,
            )?),
        };
        Ok(Self {
            format,
            output,
            rows: 0,
            started: false,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        match &mut self.output {
            Output::Plain(buffer) => {
                buffer.extend_from_slice(bytes);
                Ok(())
            }
            Output::Zstd(encoder) => encoder.write_all(bytes),
        }
    }

    fn start(&mut self) -> std::io::Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        match self.format {
            Format::Csv => {
                let mut header = csv_writer(Vec::new());
                header
                    .write_record(COLUMNS)
                    .map_err(std::io::Error::other)?;
                let header = header.into_inner().map_err(|e| e.into_error())?;
                self.emit(&header)
            }
            Format::Json => self.emit(b"["),
            Format::Ndjson => Ok(()),
        }
    }

    /// Encodes a chunk of rows.
    pub fn write_rows(&mut self, rows: &[ExportRow]) -> std::io::Result<()> {
        self.start()?;
        let mut text = Vec::with_capacity(rows.len() * 400);
        if self.format == Format::Csv {
            let mut csv = csv_writer(text);
            for row in rows {
                csv_row(&mut csv, row)?;
            }
            self.rows += rows.len() as u64;
            text = csv.into_inner().map_err(|e| e.into_error())?;
            return self.emit(&text);
        }
        for row in rows {
            match self.format {
                Format::Csv => {}
                Format::Json => {
                    if self.rows > 0 {
                        text.extend_from_slice(b",\n");
                    }
                    json_object(&mut text, row);
                }
                Format::Ndjson => {
                    json_object(&mut text, row);
                    text.push(b'\n');
                }
            }
            self.rows += 1;
        }
        self.emit(&text)
    }

    /// The bytes encoded so far and not yet taken.
    pub fn take(&mut self) -> Vec<u8> {
        match &mut self.output {
            Output::Plain(buffer) => std::mem::take(buffer),
            Output::Zstd(encoder) => std::mem::take(encoder.get_mut()),
        }
    }

    /// Whether enough bytes are waiting to be handed on.
    pub fn ready(&mut self) -> bool {
        match &mut self.output {
            Output::Plain(buffer) => buffer.len() >= FLUSH_BYTES,
            Output::Zstd(encoder) => encoder.get_mut().len() >= FLUSH_BYTES,
        }
    }

    /// Closes the file (the JSON array, the zstd frame) and returns the last bytes.
    pub fn finish(mut self) -> std::io::Result<Vec<u8>> {
        self.start()?;
        if self.format == Format::Json {
            self.emit(b"]\n")?;
        }
        match self.output {
            Output::Plain(buffer) => Ok(buffer),
            Output::Zstd(encoder) => encoder.finish(),
        }
    }
}

/// RFC 4180 with CRLF line ends; the header is written once, by [`Encoder`].
fn csv_writer(into: Vec<u8>) -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .has_headers(false)
        .from_writer(into)
}

fn opt(v: &Option<String>) -> Cow<'_, str> {
    v.as_deref().map(neutralized).unwrap_or_default()
}

fn csv_row(csv: &mut csv::Writer<Vec<u8>>, r: &ExportRow) -> std::io::Result<()> {
    let int = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let record: [Cow<'_, str>; 18] = [
        Cow::Owned(r.event_id.to_string()),
        Cow::Owned(time(r.occurred_at)),
        Cow::Owned(time(r.received_at)),
        neutralized(&r.service),
        neutralized(&r.session_id),
        opt(&r.user_id),
        opt(&r.client_ip),
        neutralized(&r.action_type),
        neutralized(&r.endpoint),
        opt(&r.route),
        neutralized(&r.http_method),
        Cow::Owned(int(r.request_size)),
        Cow::Owned(int(r.response_size)),
        Cow::Owned(r.response_time_ms.map(number).unwrap_or_default()),
        Cow::Owned(r.status_code.map(|s| s.to_string()).unwrap_or_default()),
        Cow::Borrowed(if r.success { "true" } else { "false" }),
        opt(&r.resource_usage),
        opt(&r.metadata),
    ];
    csv.write_record(record.iter().map(|c| c.as_bytes()))
        .map_err(std::io::Error::other)
}

/// Appends `"key":` (keys are plain ASCII).
fn key(out: &mut Vec<u8>, name: &str, first: bool) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn json_text(out: &mut Vec<u8>, text: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn json_opt_text(out: &mut Vec<u8>, text: &Option<String>) {
    match text {
        Some(text) => json_text(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_raw(out: &mut Vec<u8>, raw: &Option<String>) {
    match raw {
        // PostgreSQL's rendering of a jsonb value is JSON already.
        Some(raw) => out.extend_from_slice(raw.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_display(out: &mut Vec<u8>, value: Option<impl std::fmt::Display>) {
    use std::io::Write;
    match value {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// One event as the JSON object the search API returns.
fn json_object(out: &mut Vec<u8>, r: &ExportRow) {
    out.push(b'{');
    key(out, COLUMNS[0], true);
    json_text(out, &r.event_id.to_string());
    key(out, COLUMNS[1], false);
    json_text(out, &time(r.occurred_at));
    key(out, COLUMNS[2], false);
    json_text(out, &time(r.received_at));
    key(out, COLUMNS[3], false);
    json_text(out, &r.service);
    key(out, COLUMNS[4], false);
    json_text(out, &r.session_id);
    key(out, COLUMNS[5], false);
    json_opt_text(out, &r.user_id);
    key(out, COLUMNS[6], false);
    json_opt_text(out, &r.client_ip);
    key(out, COLUMNS[7], false);
    json_text(out, &r.action_type);
    key(out, COLUMNS[8], false);
    json_text(out, &r.endpoint);
    key(out, COLUMNS[9], false);
    json_opt_text(out, &r.route);
    key(out, COLUMNS[10], false);
    json_text(out, &r.http_method);
    key(out, COLUMNS[11], false);
    json_display(out, r.request_size);
    key(out, COLUMNS[12], false);
    json_display(out, r.response_size);
    key(out, COLUMNS[13], false);
    match r.response_time_ms {
        Some(ms) => out.extend_from_slice(number(ms).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    key(out, COLUMNS[14], false);
    json_display(out, r.status_code);
    key(out, COLUMNS[15], false);
    out.extend_from_slice(if r.success { b"true" } else { b"false" });
    key(out, COLUMNS[16], false);
    json_raw(out, &r.resource_usage);
    key(out, COLUMNS[17], false);
    json_raw(out, &r.metadata);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(endpoint: &str, metadata: Option<&str>) -> ExportRow {
        ExportRow {
            event_id: Uuid::nil(),
            occurred_at: DateTime::UNIX_EPOCH,
            received_at: DateTime::UNIX_EPOCH,
            service: "svc".into(),
            session_id: "-s".into(),
            user_id: Some("@u".into()),
            client_ip: None,
            action_type: "file".into(),
            endpoint: endpoint.into(),
            route: None,
            http_method: "GET".into(),
            request_size: Some(1),
            response_size: None,
            response_time_ms: Some(2.5),
            status_code: Some(200),
            success: true,
            resource_usage: None,
            metadata: metadata.map(str::to_owned),
        }
    }

    #[test]
    fn csv_cells_that_would_run_as_formulas_are_neutralized() {
        let mut encoder = Encoder::new(Format::Csv, Compression::None).expect("encoder");
        encoder
            .write_rows(&[row("=HYPERLINK(\"http://x\")", Some(r#"{"a": 1}"#))])
            .expect("row");
        let text = String::from_utf8(encoder.finish().expect("finish")).expect("utf-8");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let record = reader.records().next().expect("a row").expect("csv");
        assert_eq!(&record[8], "'=HYPERLINK(\"http://x\")");
        assert_eq!(&record[4], "'-s");
        assert_eq!(&record[5], "'@u");
        assert_eq!(&record[17], r#"{"a": 1}"#);
    }

    #[test]
    fn json_is_one_array_and_zstd_decodes_to_the_same_bytes() {
        let rows = [row("/a", None), row("/b", Some(r#"{"k": "v"}"#))];
        let mut plain = Encoder::new(Format::Json, Compression::None).expect("encoder");
        plain.write_rows(&rows).expect("rows");
        let plain = plain.finish().expect("finish");
        let parsed: serde_json::Value = serde_json::from_slice(&plain).expect("valid JSON");
        assert_eq!(parsed.as_array().map(Vec::len), Some(2));
        assert_eq!(parsed[1]["metadata"]["k"], "v");
        assert_eq!(parsed[0]["response_time_ms"], 2.5);
        let mut packed = Encoder::new(Format::Json, Compression::Zstd).expect("encoder");
        packed.write_rows(&rows).expect("rows");
        let packed = packed.finish().expect("finish");
        assert_eq!(zstd::decode_all(packed.as_slice()).expect("zstd"), plain);
        let empty = Encoder::new(Format::Json, Compression::None)
            .expect("encoder")
            .finish()
            .expect("finish");
        assert_eq!(empty, b"[]\n");
    }
}
