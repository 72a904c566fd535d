//! PostgreSQL text-format COPY rows for `auditline.events`.
//!
//! Text COPY was picked over binary COPY and `INSERT … UNNEST` by measurement
//! (see docs/benchmarks-history.md): it is the fastest path PostgreSQL offers
//! for bulk rows and costs ~0.5 µs per event to build here.

use auditline_shared::AuditEvent;
use chrono::{DateTime, SecondsFormat, Utc};
use std::fmt::Write;
use uuid::Uuid;

/// The staging table's columns, in COPY order. Must match `encode`.
pub const COLUMNS: &str = "event_id, occurred_at, received_at, batch_id, service, session_id, user_id, \
     client_ip, action_type, endpoint, route, http_method, request_size, response_size, \
     response_time_ms, status_code, success, resource_usage, metadata";

/// Appends one event as a COPY text row (tab-separated, `\N` for NULL, newline-terminated).
pub fn encode(out: &mut String, event: &AuditEvent, received_at: DateTime<Utc>, batch_id: Uuid) {
    // Writing into a String cannot fail, so the fmt results are ignored.
    let _ = write!(out, "{}\t", event.event_id);
    out.push_str(
        &event
            .occurred_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    out.push('\t');
    out.push_str(&received_at.to_rfc3339_opts(SecondsFormat::Micros, true));
    let _ = write!(out, "\t{batch_id}\t");
    text(out, &event.service);
    out.push('\t');
    text(out, &event.session_id);
    out.push('\t');
    opt_text(out, event.user_id.as_deref());
    out.push('\t');
    match event.client_ip {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push_str("\\N"),
    }
    out.push('\t');
    text(out, &event.action_type);
    out.push('\t');
    text(out, &event.endpoint);
    out.push('\t');
    opt_text(out, event.route.as_deref());
    out.push('\t');
    text(out, &event.http_method);
    out.push('\t');
    opt_display(out, event.request_size);
    out.push('\t');
    opt_display(out, event.response_size);
    out.push('\t');
    opt_display(out, event.response_time_ms);
    out.push('\t');
    opt_display(out, event.status_code);
    out.push('\t');
    out.push_str(if event.success { "t" } else { "f" });
    out.push('\t');
    opt_json(out, event.resource_usage.as_ref());
    out.push('\t');
    opt_json(out, event.metadata.as_ref());
    out.push('\n');
}

fn text(out: &mut String, value: &str) {
    if !value.contains(['\\', '\n', '\r', '\t']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

fn opt_text(out: &mut String, value: Option<&str>) {
    match value {
        Some(v) => text(out, v),
        None => out.push_str("\\N"),
    }
}

fn opt_display<T: std::fmt::Display>(out: &mut String, value: Option<T>) {
    match value {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("\\N"),
    }
}

fn opt_json(out: &mut String, value: Option<&serde_json::Map<String, serde_json::Value>>) {
    match value.and_then(|v| serde_json::to_string(v).ok()) {
        Some(json) => text(out, &json),
        None => out.push_str("\\N"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_copy_special_characters_and_nulls() {
        let json = serde_json::json!({
            "occurred_at": "2026-01-02T03:04:05.123456789Z", "service": "svc", "session_id": "s\\1",
            "action_type": "file", "endpoint": "/a\tb", "http_method": "GET", "success": false,
            "metadata": {"q": "line\nbreak \"quoted\""}
        });
        let mut event =
            AuditEvent::parse(json.to_string().replace("/a\\tb", "/ab").as_bytes()).expect("valid");
        // Validation refuses control characters in endpoints; the encoder must
        // still be safe on its own.
        event.endpoint = "/a\tb".into();
        let mut row = String::new();
        encode(&mut row, &event, event.occurred_at, Uuid::nil());
        let fields: Vec<&str> = row.trim_end_matches('\n').split('\t').collect();
        assert_eq!(fields.len(), COLUMNS.split(',').count());
        assert_eq!(fields[1], "2026-01-02T03:04:05.123456Z");
        assert_eq!(fields[5], "s\\\\1");
        assert_eq!(fields[6], "\\N");
        assert_eq!(fields[9], "/a\\tb");
        assert_eq!(fields[16], "f");
        assert_eq!(fields[18], r#"{"q":"line\\nbreak \\"quoted\\""}"#);
        assert_eq!(row.matches('\n').count(), 1);
    }
}
