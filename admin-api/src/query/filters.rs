//! The search filters: one type, [`Filters`], read from query strings
//! (search, export) and from JSON (export jobs, schedules, live
//! subscriptions) through the same deserializer and the same checks,
//! described in the OpenAPI document by its own derive, stored as JSONB by
//! export jobs and schedules, turned into SQL, and matched against one
//! event (the live stream).
//!
//! Each route takes the names that make sense for it ([`FILTER_NAMES`] or
//! [`UNWINDOWED_NAMES`]) and refuses the others by name before anything is read.

use auditline_client::middleware::Cidr;
use auditline_shared::event::check_action_type;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};

use crate::{
    error::ApiError,
    query::{
        params::{Params, Text, check_len},
        scalar::{Scalar, many, one},
    },
};
use auditline_shared::stored::StoredEvent;

/// The search filters, and the window and order they apply over.
///
/// In a query string a repeatable filter is given once per value
/// (`status=404&status=5xx`); in JSON as one value or an array
/// (`"status": ["404", "5xx"]`); `success` and `min_response_time_ms` may
/// be JSON's boolean and number or text, the others are text. Stored and shown the same way: one value alone, several as an
/// array.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filters {
    /// Any of these users (repeatable).
    #[serde(default, with = "many", skip_serializing_if = "Vec::is_empty")]
    #[param(value_type = Option<Vec<Text>>)]
    #[schema(value_type = Option<Vec<Text>>)]
    pub user_id: Vec<String>,
    /// Any of these sessions (repeatable).
    #[serde(default, with = "many", skip_serializing_if = "Vec::is_empty")]
    #[param(value_type = Option<Vec<Text>>)]
    #[schema(value_type = Option<Vec<Text>>)]
    pub session_id: Vec<String>,
    /// Any of these services (repeatable).
    #[serde(default, with = "many", skip_serializing_if = "Vec::is_empty")]
    #[param(value_type = Option<Vec<Text>>)]
    #[schema(value_type = Option<Vec<Text>>)]
    pub service: Vec<String>,
    /// Any of these action types (repeatable), e.g. `file`, `code_exec`.
    #[serde(default, with = "many", skip_serializing_if = "Vec::is_empty")]
    #[param(value_type = Option<Vec<Text>>)]
    #[schema(value_type = Option<Vec<Text>>)]
    pub action_type: Vec<String>,
    /// Endpoint prefix, e.g. `/files/`.
    #[serde(default, with = "one", skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<Text>)]
    #[schema(value_type = Option<Text>)]
    pub endpoint: Option<String>,
    /// Any of these methods (repeatable), e.g. `GET`.
    #[serde(default, with = "many", skip_serializing_if = "Vec::is_empty")]
    #[param(value_type = Option<Vec<Text>>)]
    #[schema(value_type = Option<Vec<Text>>)]
    pub http_method: Vec<String>,
    /// Any of these statuses (repeatable): a code (`404`) or a class (`5xx`).
    #[serde(default, with = "many", skip_serializing_if = "Vec::is_empty")]
    #[param(value_type = Option<Vec<Text>>)]
    #[schema(value_type = Option<Vec<Text>>)]
    pub status: Vec<Status>,
    #[serde(default, with = "one", skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// An address or a CIDR network, e.g. `10.0.0.0/8`.
    #[serde(default, with = "one", skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<Text>)]
    #[schema(value_type = Option<Text>)]
    pub client_ip: Option<Network>,
    /// Start of the window (inclusive); default `to` minus 24 hours. Not in
    /// schedules (each run's window is the schedule's) or live filters.
    #[serde(default, with = "one", skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// End of the window (exclusive); default now.
    #[serde(default, with = "one", skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
    #[serde(default, with = "one", skip_serializing_if = "Option::is_none")]
    #[param(minimum = 0)]
    #[schema(minimum = 0)]
    pub min_response_time_ms: Option<f64>,
    /// Free text, case-insensitive, over the endpoint and the metadata.
    #[serde(default, with = "one", skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<Text>, max_length = 200)]
    #[schema(value_type = Option<Text>, max_length = 200)]
    pub q: Option<String>,
    /// `desc` (newest first) or `asc`; searches default to `desc`, exports
    /// to `asc`.
    #[serde(default, with = "one", skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
}

/// The filters without the window: what a schedule takes (its runs set
/// the window) and, with the window, every name [`Filters`] reads (a unit
/// test holds them to the struct).
pub const UNWINDOWED_NAMES: &[&str] = &[
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
    "order",
];

/// The window of a search, an export or an export job.
pub const WINDOW_NAMES: &[&str] = &["from", "to"];

/// Every name [`Filters`] reads.
pub const FILTER_NAMES: &[&[&str]] = &[UNWINDOWED_NAMES, WINDOW_NAMES];

/// The search's own parameters, after the filters.
pub const SEARCH_NAMES: &[&[&str]] = &[UNWINDOWED_NAMES, WINDOW_NAMES, &["limit", "cursor"]];

/// A status filter: one code or a class of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `100`-`599`.
    Code(i16),
    /// `1xx`-`5xx`, kept as its first digit.
    Class(i16),
}

impl Scalar for Status {
    const EXPECTED: &'static str = "a status code or class";
    fn from_text(text: &str) -> Result<Self, String> {
        match text.as_bytes() {
            [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Ok(Self::Class(i16::from(c - b'0'))),
            [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => {
                text.parse().map(Self::Code).map_err(|e| e.to_string())
            }
            _ => Err(format!(
                "{text:?} is neither a status code (100-599) nor a class like 5xx"
            )),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "{code}"),
            Self::Class(class) => write!(f, "{class}xx"),
        }
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A client-address filter: a network (an address alone is its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(pub Cidr);

impl Scalar for Network {
    const EXPECTED: &'static str = "an IP address or a CIDR network";
    fn from_text(text: &str) -> Result<Self, String> {
        Cidr::parse(text)
            .map(Self)
            .map_err(|e| format!("{e} (e.g. 10.0.0.0/8 or 2001:db8::1)"))
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    Asc,
    Desc,
}

impl Scalar for Order {
    const EXPECTED: &'static str = "`asc` or `desc`";
    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "asc" => Ok(Self::Asc),
            "desc" => Ok(Self::Desc),
            _ => Err(format!("{text:?} is not `asc` or `desc`")),
        }
    }
}

impl Filters {
    /// Reads the filters from a JSON object (a request's, or one stored),
    /// refusing what the search would refuse; an error names the filter.
    pub fn from_json(value: Value) -> Result<Self, ApiError> {
        let filters: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let name = path.split(['.', '[']).next().unwrap_or_default();
            let name = if name.is_empty() { "$" } else { name };
            ApiError::param(name, e.into_inner().to_string())
        })?;
        filters.check()?;
        Ok(filters)
    }

    /// Reads a JSON object of filters (an export job's, a schedule's, a live
    /// subscription's), refusing names not in `known` as a query string's
    /// are refused.
    pub fn from_object(object: &Map<String, Value>, known: &[&[&str]]) -> Result<Self, ApiError> {
        if let Some(name) = object
            .keys()
            .find(|name| !known.iter().any(|list| list.contains(&name.as_str())))
        {
            return Err(Params::unknown(name, known));
        }
        Self::from_json(Value::Object(object.clone()))
    }

    /// Reads the filters among a query string's parameters: one value alone,
    /// several for a repeated name.
    pub fn from_params(params: &Params) -> Result<Self, ApiError> {
        let object: Map<String, Value> = params
            .all_values()
            .filter(|(name, _)| FILTER_NAMES.iter().any(|list| list.contains(name)))
            .map(|(name, values)| {
                let value = match values {
                    [one] => Value::String(one.clone()),
                    many => Value::Array(many.iter().cloned().map(Value::String).collect()),
                };
                (name.to_owned(), value)
            })
            .collect();
        Self::from_json(Value::Object(object))
    }

    /// The limits the types do not hold: lengths, action type and method
    /// shapes.
    fn check(&self) -> Result<(), ApiError> {
        for (name, values, max_chars) in [
            ("user_id", &self.user_id, 255),
            ("session_id", &self.session_id, 64),
            ("service", &self.service, 64),
            ("action_type", &self.action_type, 50),
            ("http_method", &self.http_method, 10),
        ] {
            for value in values {
                check_len(name, value, max_chars)?;
            }
        }
        for action in &self.action_type {
            check_action_type(action)
                .map_err(|e| ApiError::param("action_type", format!("{action:?} {e}")))?;
        }
        if let Some(method) = self
            .http_method
            .iter()
            .find(|m| !m.chars().all(|c| c.is_ascii_uppercase()))
        {
            return Err(ApiError::param(
                "http_method",
                format!("{method:?} is not an upper-case method such as GET"),
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            check_len("endpoint", endpoint, 255)?;
        }
        if let Some(q) = &self.q {
            check_len("q", q, 200)?;
        }
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from >= to
        {
            return Err(ApiError::param("from", "must be before `to`"));
        }
        Ok(())
    }

    /// `q` in lower case, as it is matched.
    pub fn text(&self) -> Option<String> {
        self.q.as_deref().map(str::to_lowercase)
    }

    /// `order`, or `default_descending` when absent.
    pub fn descending_or(&self, default_descending: bool) -> bool {
        self.order.map_or(default_descending, |o| o == Order::Desc)
    }

    fn status_codes(&self) -> Vec<i16> {
        let codes = self.status.iter();
        codes
            .filter_map(|s| match s {
                Status::Code(code) => Some(*code),
                Status::Class(_) => None,
            })
            .collect()
    }

    fn status_classes(&self) -> Vec<i16> {
        let classes = self.status.iter();
        classes
            .filter_map(|s| match s {
                Status::Class(class) => Some(*class),
                Status::Code(_) => None,
            })
            .collect()
    }

    /// A digest of what the filters match (not the window or order, which a
    /// cursor holds itself), so that a cursor only continues the search it
    /// came from.
    pub(crate) fn digest(&self) -> [u8; 8] {
        let matching = Self {
            from: None,
            to: None,
            order: None,
            q: self.text(),
            ..self.clone()
        };
        let text = serde_json::to_vec(&matching).unwrap_or_default();
        let full = Sha256::digest(&text);
        let mut out = [0; 8];
        out.copy_from_slice(&full[..8]);
        out
    }

    /// Appends ` AND …` conditions (all values bound, never interpolated).
    pub fn push_conditions(&self, qb: &mut QueryBuilder<Postgres>) {
        if !self.user_id.is_empty() {
            qb.push(" AND user_id = ANY(")
                .push_bind(self.user_id.clone())
                .push(")");
        }
        if !self.session_id.is_empty() {
            qb.push(" AND session_id = ANY(")
                .push_bind(self.session_id.clone())
                .push(")");
        }
        if !self.service.is_empty() {
            qb.push(" AND service = ANY(")
                .push_bind(self.service.clone())
                .push(")");
        }
        if !self.action_type.is_empty() {
            qb.push(" AND action_type = ANY(")
                .push_bind(self.action_type.clone())
                .push(")");
        }
        if let Some(prefix) = &self.endpoint {
            qb.push(" AND starts_with(endpoint, ")
                .push_bind(prefix.clone())
                .push(")");
        }
        if !self.http_method.is_empty() {
            qb.push(" AND http_method = ANY(")
                .push_bind(self.http_method.clone())
                .push(")");
        }
        let (status_codes, status_classes) = (self.status_codes(), self.status_classes());
        if !self.status.is_empty() {
            // A class is a range of codes: PostgreSQL estimates a range from
            // the column's statistics, while `status_code / 100` has none; it
            // guessed 0.5% for 5xx (really ~5%) and sorted every code_exec
            // row of the day instead of walking the time index (30 ms, not 3).
            qb.push(" AND (");
            let mut first = true;
            if !status_codes.is_empty() {
                qb.push("status_code = ANY(")
                    .push_bind(status_codes)
                    .push(")");
                first = false;
            }
            for class in status_classes {
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
        if let Some(Network(net)) = self.client_ip {
            qb.push(" AND client_ip <<= ")
                .push_bind(net.to_string())
                .push("::inet");
        }
        if let Some(ms) = self.min_response_time_ms {
            qb.push(" AND response_time_ms >= ").push_bind(ms);
        }
        if let Some(q) = self.text() {
            qb.push(" AND (strpos(lower(endpoint), ")
                .push_bind(q.clone())
                .push(") > 0 OR strpos(lower(metadata::text), ")
                .push_bind(q.clone())
                .push(") > 0)");
        }
    }
}

/// Whether an event passes the (live subset of the) search filters.
pub fn matches(f: &Filters, e: &StoredEvent) -> bool {
    let any =
        |values: &[String], value: &str| values.is_empty() || values.iter().any(|v| v == value);
    any(&f.user_id, e.user_id.as_deref().unwrap_or("\u{0}"))
        && (f.user_id.is_empty() || e.user_id.is_some())
        && any(&f.session_id, &e.session_id)
        && any(&f.service, &e.service)
        && any(&f.action_type, &e.action_type)
        && any(&f.http_method, &e.http_method)
        && f.endpoint
            .as_deref()
            .is_none_or(|p| e.endpoint.starts_with(p))
        && (f.status.is_empty()
            || e.status_code.is_some_and(|code| {
                f.status.iter().any(|s| match *s {
                    Status::Code(c) => c == code,
                    Status::Class(class) => class == code / 100,
                })
            }))
        && f.success.is_none_or(|s| s == e.success)
        && f.min_response_time_ms
            .is_none_or(|ms| e.response_time_ms.is_some_and(|t| t >= ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(query: &str) -> Result<Filters, ApiError> {
        Filters::from_params(&Params::parse_from(query, SEARCH_NAMES)?)
    }

    fn event() -> StoredEvent {
        serde_json::from_value(serde_json::json!({
            "event_id": uuid::Uuid::nil(), "occurred_at": "2026-12-03T10:00:00Z",
            "received_at": "2026-12-03T10:00:01Z", "service": "files", "session_id": "s1",
            "user_id": "alice", "client_ip": "10.1.2.3", "action_type": "file",
            "endpoint": "/files/7", "route": "/files/{id}", "http_method": "GET",
            "request_size": 0, "response_size": 10, "response_time_ms": 12.5,
            "status_code": 503, "success": false, "resource_usage": null, "metadata": null,
        }))
        .expect("event")
    }

    #[test]
    fn status_codes_classes_and_networks_are_read_as_operators_write_them() {
        let f = filters("status=404&status=5xx&client_ip=10.1.2.3/8").expect("filters");
        assert_eq!(f.status, [Status::Code(404), Status::Class(5)]);
        assert_eq!(f.client_ip.expect("net").0.to_string(), "10.0.0.0/8");
        for bad in [
            "status=6xx",
            "status=99",
            "status=1000",
            "client_ip=10.0.0.0/33",
        ] {
            assert!(filters(bad).is_err(), "{bad}");
        }
        assert!(filters("http_method=get").is_err(), "lower-case method");
        assert!(filters("action_type=Bad!").is_err());
        let q = filters("q=AbC").expect("q");
        assert_eq!(q.text().as_deref(), Some("abc"), "matched in lower case");
        assert_eq!(q.q.as_deref(), Some("AbC"), "kept as given");
        assert_eq!(q.digest(), filters("q=abc").expect("q").digest());
    }

    #[test]
    fn a_query_string_and_a_json_object_give_the_same_filters_and_store_alike() {
        let query = filters(
            "status=404&status=5xx&success=false&min_response_time_ms=2.5&user_id=alice\
             &from=2026-12-03T10:00:00%2B01:00&order=asc",
        )
        .expect("query");
        let json = Filters::from_json(serde_json::json!({
            "status": ["404", "5xx"], "success": false, "min_response_time_ms": 2.5,
            "user_id": ["alice"], "from": "2026-12-03T09:00:00Z", "order": "asc",
        }))
        .expect("json");
        assert_eq!(query, json);
        let stored = serde_json::to_value(&json).expect("stored");
        assert_eq!(
            stored,
            serde_json::json!({
                "status": ["404", "5xx"], "success": false, "min_response_time_ms": 2.5,
                "user_id": "alice", "from": "2026-12-03T09:00:00Z", "order": "asc",
            })
        );
        assert_eq!(Filters::from_json(stored).expect("read back"), json);
    }

    #[test]
    fn errors_name_the_filter_whichever_way_it_came() {
        for (value, name) in [
            (serde_json::json!({"status": ["404", "9xx"]}), "status"),
            (serde_json::json!({"success": [true, false]}), "success"),
            (serde_json::json!({"user_id": {"a": 1}}), "user_id"),
            (serde_json::json!({"limit": 5}), "limit"),
            (
                serde_json::json!({"from": "2026-12-03T10:00:00Z", "to": "2026-12-03T09:00:00Z"}),
                "from",
            ),
        ] {
            match Filters::from_json(value.clone()) {
                Err(ApiError::BadParam { param, .. }) => assert_eq!(param, name, "{value}"),
                other => panic!("{value}: {other:?}"),
            }
        }
        match filters("success=true&success=false") {
            Err(ApiError::BadParam { param, message }) => {
                assert_eq!(param, "success");
                assert!(message.contains("only once"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_name_list_is_the_structs_and_the_openapi_documents() {
        use utoipa::IntoParams;
        let documented: Vec<String> = Filters::into_params(|| None)
            .into_iter()
            .map(|p| p.name)
            .collect();
        let mut documented: Vec<&str> = documented.iter().map(String::as_str).collect();
        let mut names = FILTER_NAMES.concat();
        documented.sort_unstable();
        names.sort_unstable();
        assert_eq!(documented, names);
    }

    #[test]
    fn the_digest_follows_the_filters_not_their_order() {
        let a = filters("user_id=alice&service=files").expect("a");
        let b = filters("service=files&user_id=alice").expect("b");
        let c = filters("user_id=bob&service=files").expect("c");
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn an_event_matches_the_live_filters_it_should() {
        let e = event();
        for (query, want) in [
            ("", true),
            ("user_id=alice", true),
            ("user_id=bob", false),
            ("status=5xx", true),
            ("status=503&status=404", true),
            ("status=2xx", false),
            ("success=false", true),
            ("endpoint=/files", true),
            ("endpoint=/code", false),
            ("min_response_time_ms=12.5", true),
            ("min_response_time_ms=13", false),
            ("service=files&action_type=file&http_method=GET", true),
            ("session_id=s2", false),
        ] {
            assert_eq!(matches(&filters(query).expect(query), &e), want, "{query}");
        }
        let mut anonymous = event();
        anonymous.user_id = None;
        assert!(!matches(&filters("user_id=alice").expect("f"), &anonymous));
    }
}
