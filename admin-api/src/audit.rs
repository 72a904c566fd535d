//! The admin service's own requests as audit events: the query string as
//! metadata (credentials redacted), and the refusal of a request whose record
//! would not fit.

use auditline_shared::redact::{self, Redactor};
use serde_json::{Map, Value, json};
use std::borrow::Cow;

use crate::error::ApiError;

/// The query string as audit metadata: `{"query": {"name": "value" | ["v1", "v2"]}}`,
/// whole (nothing is clipped), credentials (by name or by shape) as
/// `[REDACTED]`.
fn query_metadata(query: &str, redact: &Redactor) -> Map<String, Value> {
    let mut params = Map::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let value: String = redact.value(&name, &value).into_owned();
        let name = if redact::holds_secret(&name) {
            Cow::Borrowed(redact::REDACTED)
        } else {
            name
        };
        match params.get_mut(name.as_ref()) {
            Some(Value::Array(values)) => values.push(Value::String(value)),
            Some(first) => *first = json!([first.take(), value]),
            None => {
                params.insert(name.into_owned(), Value::String(value));
            }
        }
    }
    let mut metadata = Map::new();
    if !params.is_empty() {
        metadata.insert("query".into(), Value::Object(params));
    }
    metadata
}

/// The longest path an admin event records whole: its `endpoint` field.
const MAX_RECORDED_PATH: usize = auditline_shared::event::MAX_ENDPOINT_LEN;

/// The audit metadata of an admin request, or the refusal of a request
/// whose record would not fit: an admin read is recorded whole (its path and
/// every parameter) or not served, so padding cannot push what a call took
/// out of its own record.
pub(crate) fn recorded_metadata(
    path: &str,
    query: &str,
    redact: &Redactor,
) -> Result<Map<String, Value>, ApiError> {
    let too_long = |message: String| ApiError::Refused {
        status: actix_web::http::StatusCode::URI_TOO_LONG,
        code: "request_too_long_to_record",
        message,
    };
    if path.chars().count() > MAX_RECORDED_PATH {
        return Err(too_long(format!(
            "the path is longer than the {MAX_RECORDED_PATH} characters an audit record holds"
        )));
    }
    let metadata = query_metadata(query, redact);
    let size = serde_json::to_vec(&metadata).map_or(usize::MAX, |v| v.len());
    if size > auditline_shared::event::MAX_METADATA_BYTES {
        return Err(too_long(format!(
            "the parameters take {size} bytes, more than the {} an audit record holds; \
             send fewer or shorter ones",
            auditline_shared::event::MAX_METADATA_BYTES
        )));
    }
    Ok(metadata)
}
