//! The search filters: read from query strings (search, export, schedules)
//! and from JSON (live subscriptions, export bodies), turned into SQL, and
//! matched against one event (the live stream).

use auditline_client::middleware::Cidr;
use auditline_shared::event::check_action_type;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{Postgres, QueryBuilder};
use utoipa::IntoParams;

use crate::{
    error::ApiError,
    query::params::{Params, Text},
};
use auditline_shared::stored::StoredEvent;

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
        .map(|v| crate::query::params::check_len(name, v, max_chars).map(|()| v.to_owned()))
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
    pub(crate) fn digest(&self) -> [u8; 8] {
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

/// Whether an event passes the (live subset of the) search filters.
pub fn matches(f: &Filters, e: &StoredEvent) -> bool {
    let any =
        |values: &[String], value: &str| values.is_empty() || values.iter().any(|v| v == value);
    any(&f.user_ids, e.user_id.as_deref().unwrap_or("\u{0}"))
        && (f.user_ids.is_empty() || e.user_id.is_some())
        && any(&f.session_ids, &e.session_id)
        && any(&f.services, &e.service)
        && any(&f.action_types, &e.action_type)
        && any(&f.http_methods, &e.http_method)
        && f.endpoint_prefix
            .as_deref()
            .is_none_or(|p| e.endpoint.starts_with(p))
        && ((f.status_codes.is_empty() && f.status_classes.is_empty())
            || e.status_code.is_some_and(|code| {
                f.status_codes.contains(&code) || f.status_classes.contains(&(code / 100))
            }))
        && f.success.is_none_or(|s| s == e.success)
        && f.min_response_time_ms
            .is_none_or(|ms| e.response_time_ms.is_some_and(|t| t >= ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(query: &str) -> Result<Filters, ApiError> {
        Filters::parse(&Params::parse_from(query, SEARCH_PARAMS)?)
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
        assert_eq!(f.status_codes, [404]);
        assert_eq!(f.status_classes, [5]);
        assert_eq!(f.client_net.expect("net").to_string(), "10.0.0.0/8");
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
        assert_eq!(filters("q=AbC").expect("q").q.as_deref(), Some("abc"));
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
