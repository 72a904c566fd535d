//! The audit event: its wire form (schema version 1), the validated domain
//! type and parsing. The field rules live in `rules`, the hand-written JSON
//! writer of an event's borrowed fields ([`EventView`]) in `write`.
//!
//! Parsing happens once, at the boundary (publisher, gateway, writer). Past it,
//! an [`AuditEvent`] is known to satisfy every rule of the design, so nothing
//! downstream validates again.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;
use uuid::Uuid;

mod rules;
mod write;

use rules::*;
pub use rules::{
    check_action_type, check_age, check_http_method, check_service, check_session_id, check_strict,
    no_control, object_within, strict_error,
};
pub use write::EventView;
use write::*;

/// How far ahead of the validating clock `occurred_at` may be.
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);
/// Limits of the design's event table, shared by validation and the JSON Schema.
pub const MAX_SERVICE_LEN: usize = 64;
pub const MAX_SESSION_ID_LEN: usize = 64;
pub const MAX_USER_ID_LEN: usize = 255;
pub const MAX_ACTION_TYPE_LEN: usize = 50;
pub const MAX_ENDPOINT_LEN: usize = 255;
pub const MAX_ROUTE_LEN: usize = 255;
pub const MAX_HTTP_METHOD_LEN: usize = 10;
/// `metadata` serialized as compact JSON may not exceed this many bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// `resource_usage` has the same bound as metadata: it is meant for a few counters.
pub const MAX_RESOURCE_USAGE_BYTES: usize = 16 * 1024;

/// The action types the design names; others are allowed if they match
/// `[a-z0-9_.]+`.
pub const WELL_KNOWN_ACTION_TYPES: [&str; 6] =
    ["file", "code_exec", "admin", "auth", "data", "other"];

/// One audit event exactly as it travels on the wire (JSON, schema version 1).
///
/// This type defines the published JSON Schema (`event/schema/event.schema.json`);
/// a test fails when the two disagree. Use [`AuditEvent::parse`] to turn JSON into
/// a validated event.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(
    feature = "schema",
    schemars(
        title = "Auditline audit event",
        description = "One audit event, schema version 1. Unknown fields are rejected."
    )
)]
pub struct WireEvent {
    /// Dedup key together with `occurred_at`. Assigned (UUIDv7) by the publisher when absent.
    #[serde(default)]
    pub event_id: Option<Uuid>,
    /// When the action happened (RFC 3339). At most 5 minutes in the future, not before 1970.
    pub occurred_at: DateTime<Utc>,
    /// The publishing service: ASCII letters, digits, `-` and `_`. The ingest gateway sets it from the publish token.
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))
    )]
    pub service: String,
    /// The caller's session.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 64)))]
    pub session_id: String,
    /// The acting user, when known.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 255)))]
    pub user_id: Option<String>,
    /// The caller's IPv4 or IPv6 address.
    #[serde(default)]
    pub client_ip: Option<IpAddr>,
    /// `file`, `code_exec`, `admin`, `auth`, `data`, `other`, or another lower-case `[a-z0-9_.]+` name.
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = 50), regex(pattern = r"^[a-z0-9_.]+$"))
    )]
    pub action_type: String,
    /// The path as called.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 255)))]
    pub endpoint: String,
    /// The route template (`/files/{id}`), used as a low-cardinality metric label.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 255)))]
    pub route: Option<String>,
    /// Upper-case method token (`GET`, `POST`, …).
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = 10), regex(pattern = r"^[A-Z][A-Z0-9_-]*$"))
    )]
    pub http_method: String,
    /// Request body size in bytes.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(max = 9223372036854775807_u64)))]
    pub request_size: Option<u64>,
    /// Response body size in bytes.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(max = 9223372036854775807_u64)))]
    pub response_size: Option<u64>,
    /// Time to respond, in milliseconds.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub response_time_ms: Option<f64>,
    /// HTTP status code.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 100, max = 599)))]
    pub status_code: Option<u16>,
    /// Whether the action succeeded.
    pub success: bool,
    /// Resources the action used, e.g. `cpu_ms`, `memory_bytes`, `quota_units` (at most 16 KiB serialized).
    #[serde(default)]
    pub resource_usage: Option<Map<String, Value>>,
    /// Free-form context (at most 16 KiB serialized).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// A validated audit event. Every field satisfies the design's rules, the
/// `event_id` is set and `occurred_at` is truncated to microseconds (PostgreSQL's
/// precision, so the dedup key is the same in memory and in storage).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub event_id: Uuid,
    #[serde(serialize_with = "rfc3339")]
    pub occurred_at: DateTime<Utc>,
    pub service: String,
    pub session_id: String,
    pub user_id: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub action_type: String,
    pub endpoint: String,
    pub route: Option<String>,
    pub http_method: String,
    pub request_size: Option<u64>,
    pub response_size: Option<u64>,
    pub response_time_ms: Option<f64>,
    pub status_code: Option<u16>,
    pub success: bool,
    pub resource_usage: Option<Map<String, Value>>,
    pub metadata: Option<Map<String, Value>>,
}

/// The text chrono's own `Serialize` writes (RFC 3339, `Z`, as many fraction
/// digits as needed), formatted once: chrono's impl goes through
/// `collect_str`, and serde_json escapes each of its many small writes, which
/// made timestamps the largest part of serializing an event.
fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339_text(*at))
}

/// A time as chrono's `Serialize` writes it (and so every JSON answer).
pub fn rfc3339_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// One broken rule: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The top-level field (or `$` for the event as a whole).
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Why an event was refused. Lists every broken rule that could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event: {}", summary(.0))]
pub struct ValidationError(pub Vec<FieldError>);

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ValidationError {
    fn one(field: &str, message: impl Into<String>) -> Self {
        Self(vec![FieldError::new(field, message)])
    }

    /// The fields named, in order.
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.field.as_str()).collect()
    }
}

impl AuditEvent {
    /// Parses and validates one JSON event, judging `occurred_at` against the
    /// current clock. An absent `event_id` gets a fresh UUIDv7.
    pub fn parse(json: &[u8]) -> Result<Self, ValidationError> {
        Self::parse_at(json, Utc::now())
    }

    /// [`AuditEvent::parse`] with an explicit clock, for callers that validate
    /// many events at one instant.
    pub fn parse_at(json: &[u8], now: DateTime<Utc>) -> Result<Self, ValidationError> {
        check_strict(json)?;
        let mut de = serde_json::Deserializer::from_slice(json);
        let wire: WireEvent = serde_path_to_error::deserialize(&mut de).map_err(serde_error)?;
        de.end().map_err(|e| {
            ValidationError::one("$", format!("trailing characters after the event: {e}"))
        })?;
        Self::try_from_wire(wire, now)
    }

    /// Parses and validates an event already read as JSON (the gateway stamps
    /// `service` into it first). The JSON must have passed [`check_strict`]
    /// before it was read: a `Value` no longer shows duplicate keys or
    /// rounded numbers.
    pub fn from_value(value: Value, now: DateTime<Utc>) -> Result<Self, ValidationError> {
        let wire: WireEvent = serde_path_to_error::deserialize(value).map_err(serde_error)?;
        Self::try_from_wire(wire, now)
    }

    /// Validates a wire event that was already deserialized.
    pub fn try_from_wire(wire: WireEvent, now: DateTime<Utc>) -> Result<Self, ValidationError> {
        let mut errors = Vec::new();
        let mut check = |field: &str, result: Result<(), String>| {
            if let Err(message) = result {
                errors.push(FieldError::new(field, message));
            }
        };

        if wire.event_id.is_some_and(|id| id.is_nil()) {
            check("event_id", Err("must not be the nil UUID".into()));
        }
        let earliest = DateTime::<Utc>::UNIX_EPOCH;
        if wire.occurred_at > now + MAX_FUTURE_SKEW {
            check(
                "occurred_at",
                Err(format!(
                    "is {} which is more than 5 minutes in the future (server time {})",
                    wire.occurred_at.to_rfc3339(),
                    now.to_rfc3339()
                )),
            );
        } else if wire.occurred_at < earliest {
            check(
                "occurred_at",
                Err("must not be before 1970-01-01T00:00:00Z".into()),
            );
        } else if wire.occurred_at.timestamp_subsec_nanos() >= 1_000_000_000 {
            // chrono keeps a leap second as second 60; PostgreSQL would store it
            // as the next second (maybe in the next day's partition), so the
            // dedup key and the partition would no longer match the event.
            check(
                "occurred_at",
                Err("leap seconds (second 60) are not supported".into()),
            );
        }
        check("service", check_service(&wire.service));
        check("session_id", check_session_id(&wire.session_id));
        if let Some(user_id) = &wire.user_id {
            check("user_id", text(user_id, MAX_USER_ID_LEN));
        }
        check("action_type", check_action_type(&wire.action_type));
        check("endpoint", text(&wire.endpoint, MAX_ENDPOINT_LEN));
        if let Some(route) = &wire.route {
            check("route", text(route, MAX_ROUTE_LEN));
        }
        check("http_method", check_http_method(&wire.http_method));
        for (field, value) in [
            ("request_size", wire.request_size),
            ("response_size", wire.response_size),
        ] {
            if value.is_some_and(|v| v > i64::MAX as u64) {
                check(field, Err(format!("must be at most {}", i64::MAX)));
            }
        }
        if let Some(ms) = wire.response_time_ms
            && (!ms.is_finite() || ms < 0.0)
        {
            {
                check(
                    "response_time_ms",
                    Err("must be a finite number >= 0".into()),
                );
            }
        }
        if let Some(code) = wire.status_code
            && !(100..=599).contains(&code)
        {
            {
                check(
                    "status_code",
                    Err(format!("must be between 100 and 599, got {code}")),
                );
            }
        }
        if let Some(usage) = &wire.resource_usage {
            check(
                "resource_usage",
                object_within(usage, MAX_RESOURCE_USAGE_BYTES),
            );
        }
        if let Some(metadata) = &wire.metadata {
            check("metadata", object_within(metadata, MAX_METADATA_BYTES));
        }

        if !errors.is_empty() {
            return Err(ValidationError(errors));
        }
        Ok(Self {
            event_id: wire.event_id.unwrap_or_else(Uuid::now_v7),
            occurred_at: wire.occurred_at.trunc_subsecs(6),
            service: wire.service,
            session_id: wire.session_id,
            user_id: wire.user_id,
            client_ip: wire.client_ip,
            action_type: wire.action_type,
            endpoint: wire.endpoint,
            route: wire.route,
            http_method: wire.http_method,
            request_size: wire.request_size,
            response_size: wire.response_size,
            response_time_ms: wire.response_time_ms,
            status_code: wire.status_code,
            success: wire.success,
            resource_usage: wire.resource_usage,
            metadata: wire.metadata,
        })
    }

    /// The topic routing key on `<ns>.events`: `<service>.<action_type>`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.service, self.action_type)
    }

    /// Compact JSON, as published and exported.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(400);
        self.write_json(&mut out);
        out
    }

    /// [`AuditEvent::write_json`] with more string fields after the event's
    /// own (a stored row's `received_at`, `batch_id`), in one object.
    pub fn write_json_with(&self, out: &mut Vec<u8>, extra: &[(&str, &str)]) {
        self.write_json(out);
        out.pop(); // the closing brace
        for (key, value) in extra {
            out.push(b',');
            json_text(out, key);
            out.push(b':');
            json_text(out, value);
        }
        out.push(b'}');
    }

    /// Appends the event's JSON, byte for byte what `serde_json` writes for
    /// it (a test holds them equal): see [`EventView::write_json`].
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.view().write_json(out);
    }

    /// The event's fields, borrowed.
    pub fn view(&self) -> EventView<'_> {
        EventView {
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            service: &self.service,
            session_id: &self.session_id,
            user_id: self.user_id.as_deref(),
            client_ip: self.client_ip,
            action_type: &self.action_type,
            endpoint: &self.endpoint,
            route: self.route.as_deref(),
            http_method: &self.http_method,
            request_size: self.request_size,
            response_size: self.response_size,
            response_time_ms: self.response_time_ms,
            status_code: self.status_code,
            success: self.success,
            resource_usage: self.resource_usage.as_ref(),
            metadata: self.metadata.as_ref(),
        }
    }
}

/// The outcome of parsing one broker message body or HTTP body of several events.
#[derive(Debug)]
pub struct ParsedLine {
    /// 0-based line (NDJSON) or array index.
    pub index: usize,
    pub result: Result<AuditEvent, ValidationError>,
}

/// Parses an NDJSON body: one event a line; blank lines are skipped.
pub fn parse_ndjson(body: &[u8], now: DateTime<Utc>) -> Vec<ParsedLine> {
    body.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(index, line)| ParsedLine {
            index,
            result: AuditEvent::parse_at(line, now),
        })
        .collect()
}

/// Serializes events as an NDJSON body.
pub fn to_ndjson(events: &[AuditEvent]) -> Vec<u8> {
    // Room for a typical event (~400 bytes) and its line end: growing a
    // 200 KB body by doubling copies it whole.
    let mut body = Vec::with_capacity(events.len() * 512);
    for event in events {
        event.write_json(&mut body);
        body.push(b'\n');
    }
    body
}

/// The JSON Schema of [`WireEvent`], as checked in under `event/schema/`
/// (feature `schema`).
#[cfg(feature = "schema")]
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(WireEvent)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurred_at_is_written_as_chrono_writes_it() {
        let at: DateTime<Utc> = "2026-11-28T21:45:49Z".parse().expect("time");
        for nanos in [0, 120_000_000, 123_456_000, 1_000] {
            let at = at + chrono::Duration::nanoseconds(nanos);
            let event = AuditEvent::parse(
                format!(
                    r#"{{"occurred_at":"{}","service":"s","session_id":"x","action_type":"other","endpoint":"/","http_method":"GET","success":true}}"#,
                    at.to_rfc3339()
                )
                .as_bytes(),
            )
            .expect("a valid event");
            assert_eq!(event.occurred_at, at);
            let json: Value = serde_json::from_slice(&event.to_json()).expect("json");
            assert_eq!(
                json["occurred_at"],
                serde_json::to_value(at).expect("chrono")
            );
        }
    }

    #[test]
    fn times_and_addresses_are_written_as_chrono_and_std_write_them() {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut times: Vec<DateTime<Utc>> = [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59.999Z",
            "2100-03-01T00:00:00.000001Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.123456789Z",
            "1969-12-31T23:59:59.5Z",
        ]
        .iter()
        .map(|t| t.parse().expect("time"))
        .collect();
        for _ in 0..20_000 {
            let secs = rng.random_range(-62_167_219_200..253_402_300_800_i64);
            let nanos = match rng.random_range(0..4) {
                0 => 0,
                1 => rng.random_range(0..1_000) * 1_000_000,
                2 => rng.random_range(0..1_000_000) * 1_000,
                _ => rng.random_range(0..1_000_000_000),
            };
            times.push(DateTime::from_timestamp(secs, nanos).expect("in range"));
        }
        // Outside the years the fast path writes: chrono's own text.
        times
            .push(DateTime::from_timestamp(253_402_300_800 + 86_400 * 400, 0).expect("year 10000"));
        times.push(DateTime::from_timestamp(-62_167_219_200 - 86_400, 0).expect("year -1"));
        for at in times {
            let mut out = Vec::new();
            write_rfc3339(&mut out, at);
            assert_eq!(String::from_utf8(out).expect("utf-8"), rfc3339_text(at));
        }
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.20.7",
            "::1",
            "2001:db8::8:800:200c:417a",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut out = Vec::new();
            write_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).expect("utf-8"), ip.to_string());
        }
        for _ in 0..10_000 {
            let ip = IpAddr::from(rng.random::<[u8; 4]>());
            let mut out = Vec::new();
            write_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).expect("utf-8"), ip.to_string());
        }
    }

    #[test]
    fn the_age_window_opens_at_midnight_of_its_oldest_day() {
        let now: DateTime<Utc> = "2026-12-03T13:00:00Z".parse().expect("time");
        let days = Duration::days(400);
        let edge: DateTime<Utc> = "2025-10-29T00:00:00Z".parse().expect("time");
        assert!(check_age(edge, now, days).is_ok());
        assert!(check_age(now - days, now, days).is_ok());
        let err = check_age(edge - Duration::microseconds(1), now, days).expect_err("too old");
        assert_eq!(err.field, "occurred_at");
        assert!(err.message.contains("400 days"), "{}", err.message);
        assert!(check_age(DateTime::UNIX_EPOCH, now, days).is_err());
    }

    #[test]
    fn extra_fields_join_the_events_object() {
        let event = AuditEvent::parse(
            br#"{"occurred_at":"2026-11-28T21:45:49Z","service":"s","session_id":"x","action_type":"other","endpoint":"/","http_method":"GET","success":true}"#,
        )
        .expect("a valid event");
        let mut out = Vec::new();
        event.write_json_with(&mut out, &[("received_at", "t\"1"), ("batch_id", "b")]);
        let mut with: Value = serde_json::from_slice(&out).expect("one JSON object");
        let extra = with.as_object_mut().expect("object");
        assert_eq!(extra.remove("received_at"), Some(Value::from("t\"1")));
        assert_eq!(extra.remove("batch_id"), Some(Value::from("b")));
        let plain: Value = serde_json::from_slice(&event.to_json()).expect("json");
        assert_eq!(with, plain);
    }

    #[test]
    fn the_fast_writer_writes_exactly_what_serde_json_writes() {
        let odd = [
            "plain",
            "quote \" and backslash \\",
            "new\nline\ttab\u{1}bell",
            "unicode é 漢字 🚀",
            "",
            "</script>",
        ];
        let mut checked = 0;
        for (i, text) in odd.iter().enumerate() {
            for variant in 0..4 {
                let mut json = serde_json::json!({
                    "occurred_at": format!("2026-11-28T21:45:{:02}.{:06}Z", i * 7 % 60, variant * 1234),
                    "service": "svc",
                    "session_id": "s",
                    "action_type": "other",
                    "endpoint": "/e",
                    "http_method": "GET",
                    "success": variant % 2 == 0,
                });
                if variant > 0 {
                    let ms = [158.0, 0.25, 1e-7, 12.5][variant];
                    let extra = serde_json::json!({
                        "user_id": "u",
                        "client_ip": if variant == 2 { "2001:db8::1" } else { "10.0.0.7" },
                        "route": "/e/{id}",
                        "request_size": 12_345,
                        "response_size": 0,
                        "response_time_ms": ms,
                        "status_code": 404,
                        "resource_usage": {"cpu_ms": 3, "note": text},
                        "metadata": {"nested": {"a": [1, 2.5, null, text]}, "k": true},
                    });
                    for (k, v) in extra.as_object().expect("object") {
                        json[k] = v.clone();
                    }
                }
                let mut event = AuditEvent::parse(json.to_string().as_bytes()).expect("valid");
                // The writer writes whatever the struct holds (the middleware
                // builds events directly): the odd text goes everywhere.
                event.session_id = format!("s{text}");
                event.endpoint = format!("/e/{text}");
                if variant > 0 {
                    event.user_id = Some((*text).to_owned());
                    event.route = Some(format!("/e/{{id}}{text}"));
                }
                assert_eq!(
                    String::from_utf8(event.to_json()).expect("utf-8"),
                    serde_json::to_string(&event).expect("serde"),
                );
                checked += 1;
            }
        }
        assert_eq!(checked, odd.len() * 4);
    }
}
