//! The event contract: every validation rule names its field, and the checked-in
//! JSON Schema matches the type.

use auditline_event::event::{AuditEvent, json_schema, parse_ndjson, to_ndjson};
use chrono::{Duration, Utc};
use serde_json::{Value, json};

/// The fields the design requires.
const REQUIRED: [&str; 7] = [
    "occurred_at",
    "service",
    "session_id",
    "action_type",
    "endpoint",
    "http_method",
    "success",
];

fn valid() -> Value {
    json!({
        "event_id": "0190f5d2-7c4e-7a8b-9c0d-123456789abc",
        "occurred_at": Utc::now().to_rfc3339(),
        "service": "files-api",
        "session_id": "sess-1",
        "user_id": "alice",
        "client_ip": "10.1.2.3",
        "action_type": "file",
        "endpoint": "/files/42",
        "route": "/files/{id}",
        "http_method": "GET",
        "request_size": 0,
        "response_size": 512,
        "response_time_ms": 12.5,
        "status_code": 200,
        "success": true,
        "resource_usage": {"cpu_ms": 3},
        "metadata": {"file": "report.pdf"}
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut event = valid();
    event[field] = value;
    event
}

fn without(field: &str) -> Value {
    let mut event = valid();
    event.as_object_mut().map(|o| o.remove(field));
    event
}

#[track_caller]
fn rejected_on(event: Value, field: &str) {
    let bytes = serde_json::to_vec(&event).expect("serializable");
    match AuditEvent::parse(&bytes) {
        Ok(e) => panic!("accepted an event that breaks the rule on {field}: {e:?}"),
        Err(err) => assert!(
            err.fields().contains(&field),
            "error should name {field}, got {err}"
        ),
    }
}

#[test]
fn a_complete_event_is_accepted_and_round_trips() {
    let bytes = serde_json::to_vec(&valid()).expect("json");
    let event = AuditEvent::parse(&bytes).expect("valid");
    assert_eq!(event.user_id.as_deref(), Some("alice"));
    assert_eq!(event.routing_key(), "files-api.file");
    let again = AuditEvent::parse(&event.to_json()).expect("own output is valid");
    assert_eq!(again, event);
}

#[test]
fn optional_fields_may_be_absent_or_null_and_event_id_is_assigned() {
    let mut event = valid();
    let object = event.as_object_mut().expect("object");
    for field in [
        "event_id",
        "user_id",
        "client_ip",
        "route",
        "request_size",
        "response_size",
        "response_time_ms",
        "status_code",
        "resource_usage",
    ] {
        object.remove(field);
    }
    object.insert("metadata".into(), Value::Null);
    let parsed = AuditEvent::parse(&serde_json::to_vec(&event).expect("json")).expect("valid");
    assert_eq!(
        parsed.event_id.get_version_num(),
        7,
        "publisher assigns a UUIDv7"
    );
    assert!(parsed.metadata.is_none());
}

#[test]
fn required_fields_are_named_when_missing() {
    for field in REQUIRED {
        rejected_on(without(field), field);
    }
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    rejected_on(with("colour", json!("blue")), "colour");
}

#[test]
fn every_rule_names_its_field() {
    let long = |n: usize| Value::String("x".repeat(n));
    let cases: Vec<(&str, Value)> = vec![
        ("event_id", json!("not-a-uuid")),
        ("event_id", json!("00000000-0000-0000-0000-000000000000")),
        ("occurred_at", json!("yesterday")),
        (
            "occurred_at",
            json!((Utc::now() + Duration::minutes(6)).to_rfc3339()),
        ),
        ("occurred_at", json!("1969-12-31T23:59:59Z")),
        ("occurred_at", json!("2016-12-31T23:59:60Z")),
        ("service", long(65)),
        ("service", json!("")),
        ("service", json!("files.api")),
        ("service", json!(42)),
        ("session_id", long(65)),
        ("session_id", json!("")),
        ("session_id", json!("a\u{0}b")),
        ("user_id", long(256)),
        ("user_id", json!("eve\nroot")),
        ("client_ip", json!("300.1.1.1")),
        ("client_ip", json!("10.0.0.0/8")),
        ("action_type", long(51)),
        ("action_type", json!("File")),
        ("action_type", json!("code exec")),
        ("endpoint", long(256)),
        ("endpoint", json!("")),
        ("route", long(256)),
        ("http_method", json!("get")),
        ("http_method", json!("PROPPATCHXX")),
        ("http_method", json!("1GET")),
        ("request_size", json!(-1)),
        ("request_size", json!(u64::MAX)),
        ("response_size", json!(-5)),
        ("response_size", json!("12")),
        ("response_time_ms", json!(-0.5)),
        ("response_time_ms", json!("fast")),
        ("status_code", json!(99)),
        ("status_code", json!(600)),
        ("success", json!("yes")),
        ("success", Value::Null),
        ("resource_usage", json!([1, 2])),
        ("resource_usage", json!({"note": "a\u{0}b"})),
        ("metadata", json!("text")),
        ("metadata", json!({"blob": "x".repeat(16 * 1024)})),
        ("metadata", json!({"k": "nul \u{0} inside"})),
    ];
    for (field, value) in cases {
        rejected_on(with(field, value), field);
    }
}

#[test]
fn limits_are_inclusive() {
    let at_limit = [
        ("service", Value::String("s".repeat(64))),
        ("session_id", Value::String("s".repeat(64))),
        ("user_id", Value::String("ü".repeat(255))),
        ("action_type", Value::String("a".repeat(50))),
        ("http_method", json!("PROPPATCH")),
        ("status_code", json!(599)),
        (
            "occurred_at",
            json!((Utc::now() + Duration::minutes(4)).to_rfc3339()),
        ),
    ];
    for (field, value) in at_limit {
        let event = with(field, value);
        AuditEvent::parse(&serde_json::to_vec(&event).expect("json"))
            .unwrap_or_else(|e| panic!("{field} at its limit must be accepted: {e}"));
    }
}

#[test]
fn an_escaped_backslash_before_u0000_is_not_mistaken_for_nul() {
    let event = with(
        "metadata",
        json!({"path": "C:\\u0000dir", "nested": ["\\u0000"]}),
    );
    AuditEvent::parse(&serde_json::to_vec(&event).expect("json"))
        .expect("a literal backslash-u0000 is valid text");
    rejected_on(
        with("metadata", json!({"deep": [{"k": "a\u{0}"}]})),
        "metadata",
    );
    rejected_on(with("metadata", json!({"key\u{0}": 1})), "metadata");
}

#[test]
fn malformed_json_is_a_clear_error() {
    let err = AuditEvent::parse(b"{\"occurred_at\": ").expect_err("truncated");
    assert!(err.to_string().contains("malformed JSON"), "{err}");
    let err = AuditEvent::parse(&[0xff, 0xfe]).expect_err("not UTF-8");
    assert!(!err.0.is_empty());
}

#[test]
fn ndjson_lines_are_judged_one_by_one() {
    let good = AuditEvent::parse(&serde_json::to_vec(&valid()).expect("json")).expect("valid");
    let mut body = to_ndjson(&[good.clone(), good.clone()]);
    body.extend_from_slice(b"{not json}\n\n");
    let lines = parse_ndjson(&body, Utc::now());
    assert_eq!(lines.len(), 3, "blank line skipped");
    assert!(lines[0].result.is_ok() && lines[1].result.is_ok());
    assert_eq!(lines[2].index, 2);
    assert!(lines[2].result.is_err());
}

/// Regenerate with `UPDATE_SCHEMA=1 cargo test -p auditline-shared --test event_contract`.
#[test]
fn checked_in_schema_matches_the_type() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/event.schema.json");
    let generated = serde_json::to_string_pretty(&json_schema()).expect("schema") + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(path, &generated).expect("write schema");
    }
    let on_disk = std::fs::read_to_string(path).expect("event/schema/event.schema.json exists");
    assert_eq!(
        on_disk, generated,
        "event/schema/event.schema.json is out of date with WireEvent; regenerate with UPDATE_SCHEMA=1"
    );
    let schema: Value = serde_json::from_str(&on_disk).expect("schema is JSON");
    assert_eq!(
        schema["additionalProperties"],
        json!(false),
        "unknown fields must be refused"
    );
    let required: Vec<&str> = schema["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for field in REQUIRED {
        assert!(
            required.contains(&field),
            "{field} must be required in the schema"
        );
    }
}
