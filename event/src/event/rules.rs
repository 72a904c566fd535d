//! The field rules an event is validated against (lengths, character sets,
//! JSON objects), the age window of the storing boundaries, and the errors
//! of strict and serde parsing turned into field errors.

use super::*;

/// The oldest-event rule of the boundaries that store events (the gateway,
/// the writer): `occurred_at` not before the UTC day `max_age` before `now`
/// (`partitions.max_event_age_days`), so a publisher cannot make the writer
/// create a partition for every day since 1970. (The future bound,
/// [`MAX_FUTURE_SKEW`], is part of validation itself.)
pub fn check_age(
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Result<(), FieldError> {
    // Whole UTC days (the partitions' unit): the window opens at midnight
    // of the day `max_age` before today.
    let oldest = (now - max_age)
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    if occurred_at < oldest {
        return Err(FieldError::new(
            "occurred_at",
            format!(
                "is {} which is before {}, outside the accepted window of {} days (partitions.max_event_age_days)",
                rfc3339_text(occurred_at),
                rfc3339_text(oldest),
                max_age.num_days()
            ),
        ));
    }
    Ok(())
}

/// Refuses, naming the field, what `serde_json` would read loosely: a
/// duplicate key anywhere, or a number (in `metadata`, `resource_usage` or
/// a top-level field) that would not be kept exactly (see
/// [`crate::strict_json`]).
pub fn check_strict(json: &[u8]) -> Result<(), ValidationError> {
    crate::strict_json::check(json, true).map_err(|e| strict_error(&e))
}

/// A strict-JSON error as a field-named one: the event's field, and the
/// path inside it when it is deeper.
pub fn strict_error(e: &crate::strict_json::StrictError) -> ValidationError {
    let path = e.path_text();
    let field = e.top_key();
    if path == field {
        ValidationError::one(field, e.message.clone())
    } else {
        ValidationError::one(field, format!("{} (at {path})", e.message))
    }
}

/// Turns serde's first error into a field-named one.
pub(super) fn serde_error(err: serde_path_to_error::Error<serde_json::Error>) -> ValidationError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let message = inner.to_string();
    // serde names unknown and missing fields in backticks; the path of those is
    // the enclosing object, so take the field from the message instead.
    let quoted = message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"));
    let field = match (quoted, path.as_str()) {
        (Some(name), _) => name.to_owned(),
        (None, "" | ".") => "$".to_owned(),
        (None, p) => p.split(['.', '[']).next().unwrap_or(p).to_owned(),
    };
    let message = strip_position(&message);
    let message = if inner.is_syntax() || inner.is_eof() {
        format!("malformed JSON: {message}")
    } else {
        message
    };
    ValidationError::one(&field, message)
}

/// serde_json appends " at line L column C"; inside one field that is noise.
pub(super) fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The rule for `service` (also a routing-key segment, hence no `.`), for
/// every place that names a service: events, publish tokens, the middleware.
pub fn check_service(service: &str) -> Result<(), String> {
    text(service, MAX_SERVICE_LEN).and_then(|()| {
        charset(service, "ASCII letters, digits, '-' and '_'", |c| {
            c.is_ascii_alphanumeric() || c == '-' || c == '_'
        })
    })
}

/// The rule for `session_id` (the audit middleware replaces an id that
/// breaks it with a generated one).
pub fn check_session_id(id: &str) -> Result<(), String> {
    text(id, MAX_SESSION_ID_LEN)
}

/// The rule for `http_method` (the audit middleware writes `OTHER` for a
/// method that breaks it).
pub fn check_http_method(method: &str) -> Result<(), String> {
    text(method, MAX_HTTP_METHOD_LEN).and_then(|()| {
        if !method.starts_with(|c: char| c.is_ascii_uppercase()) {
            return Err("must start with an upper-case letter".into());
        }
        charset(method, "upper-case letters, digits, '-' and '_'", |c| {
            c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_'
        })
    })
}

/// The rule for `action_type`.
pub fn check_action_type(action: &str) -> Result<(), String> {
    text(action, MAX_ACTION_TYPE_LEN).and_then(|()| {
        charset(action, "lower-case letters, digits, '_' and '.'", |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'
        })
    })
}

/// Whether `text` has no control character (printable ASCII, the common
/// case, is checked a byte at a time).
pub fn no_control(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b)) || !text.chars().any(char::is_control)
}

pub(super) fn text(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    let len = if value.is_ascii() {
        value.len()
    } else {
        value.chars().count()
    };
    if len > max {
        return Err(format!("must be at most {max} characters, got {len}"));
    }
    if !no_control(value) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

pub(super) fn charset(value: &str, allowed: &str, ok: impl Fn(char) -> bool) -> Result<(), String> {
    match value.chars().find(|c| !ok(*c)) {
        Some(c) => Err(format!("may only contain {allowed}; found {c:?}")),
        None => Ok(()),
    }
}

/// Whether a JSON object may be stored as `metadata` / `resource_usage`:
/// at most `max_bytes` as JSON and no U+0000 anywhere.
pub fn object_within(object: &Map<String, Value>, max_bytes: usize) -> Result<(), String> {
    let serialized = serde_json::to_string(object).map_err(|e| e.to_string())?;
    if serialized.len() > max_bytes {
        return Err(format!(
            "must be at most {max_bytes} bytes as JSON, got {}",
            serialized.len()
        ));
    }
    // PostgreSQL's jsonb cannot hold U+0000; refusing it here keeps the event
    // from being accepted and then failing in storage.
    if object.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)) {
        return Err("must not contain the NUL character (\\u0000)".into());
    }
    Ok(())
}

pub(super) fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}
