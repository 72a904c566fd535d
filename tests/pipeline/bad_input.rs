//! The bad-input catalog: every case is a row of `docs/bad-input.md` (the
//! test checks the table is the list below; `UPDATE_CATALOG=1` rewrites it).
//! Each must get its status and JSON error code, and at the end nothing was
//! stored, published or changed by any of them.

use crate::helpers::{InProcessAdmin, InProcessIngest, InProcessWriter, TestEnv, event_at, http};
use auditline_shared::auth::{NewToken, Scope};
use chrono::Utc;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Ingest,
    Admin,
}

#[derive(Clone, Copy)]
enum Tok {
    None,
    Publish,
    Read,
    Export,
    Admin,
    Revoked,
    Expired,
    Raw(&'static str),
}

struct Case {
    id: String,
    what: &'static str,
    target: Target,
    method: &'static str,
    path: String,
    token: Tok,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// The error code; empty for a 200 that must match nothing.
    code: &'static str,
}

fn event() -> Value {
    json!({
        "occurred_at": Utc::now().to_rfc3339(),
        "service": "billing",
        "session_id": "s-1",
        "user_id": "alice",
        "action_type": "file_read",
        "endpoint": "/files/1",
        "http_method": "GET",
        "status_code": 200,
        "success": true
    })
}

fn with(field: &str, value: Value) -> Vec<u8> {
    let mut e = event();
    e[field] = value;
    e.to_string().into_bytes()
}

/// The event with `pair` (`"key":value`) added as it is, after its own
/// fields: a way to repeat a key.
fn appended(pair: &str) -> Vec<u8> {
    let mut e = event().to_string();
    e.pop();
    format!("{e},{pair}}}").into_bytes()
}

fn without(field: &str) -> Vec<u8> {
    let mut e = event();
    e.as_object_mut().expect("object").remove(field);
    e.to_string().into_bytes()
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut n = 0;
    let mut ingest = |what, content_type: &str, token, body: Vec<u8>, status, code| {
        n += 1;
        cases.push(Case {
            id: format!("I{n:02}"),
            what,
            target: Target::Ingest,
            method: "POST",
            path: "/v1/events".into(),
            token,
            headers: vec![("Content-Type", content_type.to_owned())],
            body,
            status,
            code,
        });
    };
    let j = "application/json";
    let nd = "application/x-ndjson";
    let invalid = "invalid_events";
    ingest(
        "malformed JSON",
        j,
        Tok::Publish,
        b"{\"service\": ".to_vec(),
        400,
        "malformed_json",
    );
    ingest(
        "empty body",
        j,
        Tok::Publish,
        Vec::new(),
        400,
        "malformed_json",
    );
    ingest(
        "a JSON number",
        j,
        Tok::Publish,
        b"42".to_vec(),
        400,
        "malformed_json",
    );
    ingest(
        "a JSON string",
        j,
        Tok::Publish,
        b"\"event\"".to_vec(),
        400,
        "malformed_json",
    );
    ingest(
        "an empty array",
        j,
        Tok::Publish,
        b"[]".to_vec(),
        400,
        "malformed_json",
    );
    ingest(
        "an array holding a number",
        j,
        Tok::Publish,
        format!("[{}, 7]", event()).into_bytes(),
        400,
        invalid,
    );
    ingest(
        "a required field missing (session_id)",
        j,
        Tok::Publish,
        without("session_id"),
        400,
        invalid,
    );
    ingest(
        "wrong type: status_code as a string",
        j,
        Tok::Publish,
        with("status_code", json!("200")),
        400,
        invalid,
    );
    ingest(
        "wrong type: success as a string",
        j,
        Tok::Publish,
        with("success", json!("yes")),
        400,
        invalid,
    );
    ingest(
        "wrong type: metadata as an array",
        j,
        Tok::Publish,
        with("metadata", json!([1, 2])),
        400,
        invalid,
    );
    ingest(
        "occurred_at not a timestamp",
        j,
        Tok::Publish,
        with("occurred_at", json!("yesterday")),
        400,
        invalid,
    );
    ingest(
        "occurred_at a day in the future",
        j,
        Tok::Publish,
        with(
            "occurred_at",
            json!((Utc::now() + chrono::Duration::days(1)).to_rfc3339()),
        ),
        400,
        invalid,
    );
    ingest(
        "occurred_at in the year 9999",
        j,
        Tok::Publish,
        with("occurred_at", json!("9999-12-31T23:59:59Z")),
        400,
        invalid,
    );
    ingest(
        "occurred_at before 1970",
        j,
        Tok::Publish,
        with("occurred_at", json!("1969-12-31T23:59:59Z")),
        400,
        invalid,
    );
    ingest(
        "a 1 MB endpoint",
        j,
        Tok::Publish,
        with("endpoint", json!("/".repeat(1_000_000))),
        400,
        invalid,
    );
    ingest(
        "metadata over 16 KiB",
        j,
        Tok::Publish,
        with("metadata", json!({"blob": "x".repeat(20_000)})),
        400,
        invalid,
    );
    ingest(
        "NUL in user_id",
        j,
        Tok::Publish,
        with("user_id", json!("al\u{0}ice")),
        400,
        invalid,
    );
    ingest(
        "NUL inside metadata",
        j,
        Tok::Publish,
        with("metadata", json!({"k": "a\u{0}b"})),
        400,
        invalid,
    );
    ingest(
        "control character in session_id",
        j,
        Tok::Publish,
        with("session_id", json!("s\u{7}1")),
        400,
        invalid,
    );
    ingest(
        "newline in service",
        j,
        Tok::Publish,
        with("service", json!("bill\ning")),
        400,
        invalid,
    );
    ingest(
        "invalid UTF-8 in a string",
        j,
        Tok::Publish,
        {
            let mut b = event().to_string().into_bytes();
            let at = b.windows(5).position(|w| w == b"alice").expect("alice");
            b[at + 1] = 0xff;
            b
        },
        400,
        "malformed_json",
    );
    ingest(
        "event_id not a UUID",
        j,
        Tok::Publish,
        with("event_id", json!("1234")),
        400,
        invalid,
    );
    ingest(
        "event_id the nil UUID",
        j,
        Tok::Publish,
        with("event_id", json!("00000000-0000-0000-0000-000000000000")),
        400,
        invalid,
    );
    ingest(
        "client_ip not an address",
        j,
        Tok::Publish,
        with("client_ip", json!("999.1.1.1")),
        400,
        invalid,
    );
    ingest(
        "http_method with a space",
        j,
        Tok::Publish,
        with("http_method", json!("G ET")),
        400,
        invalid,
    );
    ingest(
        "action_type with upper case and spaces",
        j,
        Tok::Publish,
        with("action_type", json!("File Read")),
        400,
        invalid,
    );
    ingest(
        "status_code 1000",
        j,
        Tok::Publish,
        with("status_code", json!(1000)),
        400,
        invalid,
    );
    ingest(
        "negative request_size",
        j,
        Tok::Publish,
        with("request_size", json!(-1)),
        400,
        invalid,
    );
    ingest(
        "negative response_time_ms",
        j,
        Tok::Publish,
        with("response_time_ms", json!(-0.5)),
        400,
        invalid,
    );
    ingest(
        "an unknown field",
        j,
        Tok::Publish,
        with("color", json!("red")),
        400,
        invalid,
    );
    ingest(
        "JSON nested 10,000 deep in metadata",
        j,
        Tok::Publish,
        {
            let mut e = event().to_string();
            e.pop();
            format!(
                "{e},\"metadata\":{{\"a\":{}{}}}}}",
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
            .into_bytes()
        },
        400,
        "malformed_json",
    );
    ingest(
        "service other than the token's",
        j,
        Tok::Publish,
        with("service", json!("auth")),
        400,
        invalid,
    );
    ingest(
        "NDJSON with one invalid line",
        nd,
        Tok::Publish,
        format!(
            "{}\n{}\n",
            event(),
            String::from_utf8(without("endpoint")).expect("utf8")
        )
        .into_bytes(),
        400,
        invalid,
    );
    ingest(
        "NDJSON with a line that is not JSON",
        nd,
        Tok::Publish,
        format!("{}\nnot json\n", event()).into_bytes(),
        400,
        invalid,
    );
    ingest(
        "body over 5 MiB",
        j,
        Tok::Publish,
        vec![b' '; 5 * 1024 * 1024 + 10],
        413,
        "body_too_large",
    );
    ingest(
        "more than 10,000 events",
        nd,
        Tok::Publish,
        format!("{}\n", event()).repeat(10_001).into_bytes(),
        413,
        "too_many_events",
    );
    ingest(
        "text/plain content type",
        "text/plain",
        Tok::Publish,
        event().to_string().into_bytes(),
        415,
        "unsupported_media_type",
    );
    ingest(
        "no token",
        j,
        Tok::None,
        event().to_string().into_bytes(),
        401,
        "unauthorized",
    );
    ingest(
        "unknown token",
        j,
        Tok::Raw("alt_000000000000_nope"),
        event().to_string().into_bytes(),
        401,
        "unauthorized",
    );
    ingest(
        "revoked token",
        j,
        Tok::Revoked,
        event().to_string().into_bytes(),
        401,
        "unauthorized",
    );
    ingest(
        "expired token",
        j,
        Tok::Expired,
        event().to_string().into_bytes(),
        401,
        "unauthorized",
    );
    ingest(
        "read token (no publish scope)",
        j,
        Tok::Read,
        event().to_string().into_bytes(),
        403,
        "forbidden",
    );
    ingest(
        "duplicate key: success true, then false",
        j,
        Tok::Publish,
        appended(r#""success":false"#),
        400,
        invalid,
    );
    ingest(
        "duplicate key inside metadata",
        j,
        Tok::Publish,
        appended(r#""metadata":{"role":"user","role":"admin"}"#),
        400,
        invalid,
    );
    ingest(
        "duplicate key written with an escape",
        j,
        Tok::Publish,
        appended(r#""succes\u0073":false"#),
        400,
        invalid,
    );
    ingest(
        "NDJSON line with a duplicate key",
        nd,
        Tok::Publish,
        format!(
            "{}\n{}\n",
            event(),
            String::from_utf8(appended(r#""user_id":"mallory""#)).expect("utf8")
        )
        .into_bytes(),
        400,
        invalid,
    );
    ingest(
        "array whose second event has a duplicate key",
        j,
        Tok::Publish,
        format!(
            "[{}, {}]",
            event(),
            String::from_utf8(appended(r#""endpoint":"/x""#)).expect("utf8")
        )
        .into_bytes(),
        400,
        invalid,
    );
    ingest(
        "integer beyond 64 bits in metadata",
        j,
        Tok::Publish,
        appended(r#""metadata":{"n":18446744073709551616}"#),
        400,
        invalid,
    );
    ingest(
        "occurred_at in 1980 (older than max_event_age_days)",
        j,
        Tok::Publish,
        with("occurred_at", json!("1980-01-01T00:00:00Z")),
        400,
        invalid,
    );
    ingest(
        "number a double cannot hold in metadata",
        j,
        Tok::Publish,
        appended(r#""metadata":{"n":9007199254740993.0}"#),
        400,
        invalid,
    );

    let mut n = 0;
    let mut admin = |what, method, path: String, token, body: Vec<u8>, status, code| {
        n += 1;
        cases.push(Case {
            id: format!("A{n:02}"),
            what,
            target: Target::Admin,
            method,
            path,
            token,
            headers: if body.is_empty() {
                vec![]
            } else {
                vec![("Content-Type", "application/json".to_owned())]
            },
            body,
            status,
            code,
        });
    };
    let logs = |q: &str| format!("/admin/audit/logs?{q}");
    let bad = "invalid_parameter";
    let body = "invalid_body";
    admin(
        "limit=0",
        "GET",
        logs("limit=0"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "limit not a number",
        "GET",
        logs("limit=ten"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "limit=100000",
        "GET",
        logs("limit=100000"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "from not a timestamp",
        "GET",
        logs("from=yesterday"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "from after to",
        "GET",
        logs("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "status not a code or class",
        "GET",
        logs("status=abc"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "client_ip not an address",
        "GET",
        logs("client_ip=999.1.1.1"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "client_ip CIDR /99",
        "GET",
        logs("client_ip=10.0.0.0/99"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "success not a boolean",
        "GET",
        logs("success=maybe"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "order injection",
        "GET",
        logs("order=desc%3B%20DROP%20TABLE%20auditline.events"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "unknown parameter",
        "GET",
        logs("colour=red"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "q over 200 characters",
        "GET",
        logs(&format!("q={}", "a".repeat(201))),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "forged cursor (random text)",
        "GET",
        logs("cursor=AAAAbm90LWEtY3Vyc29y"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "forged cursor (not base64)",
        "GET",
        logs("cursor=%25%25%25"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "NUL in user_id",
        "GET",
        logs("user_id=a%00b"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    for (what, q) in [
        ("injection in user_id", "user_id=%27%20OR%201%3D1%20--"),
        (
            "injection in session_id",
            "session_id=x%27%3B%20DELETE%20FROM%20auditline.events%3B%20--",
        ),
        ("injection in service", "service=billing%27--"),
        (
            "injection in endpoint",
            "endpoint=%2F%27%20OR%20%27%27%3D%27",
        ),
        ("injection in q", "q=%25%27%20OR%201%3D1%20--"),
        ("LIKE wildcards in endpoint", "endpoint=%25"),
    ] {
        admin(what, "GET", logs(q), Tok::Read, vec![], 200, "");
    }
    admin(
        "injection in action_type (charset)",
        "GET",
        logs("action_type=x%27%20OR%201%3D1"),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "event id not a UUID",
        "GET",
        "/admin/audit/logs/not-a-uuid".into(),
        Tok::Read,
        vec![],
        400,
        bad,
    );
    admin(
        "user id of 10,000 characters",
        "GET",
        format!("/admin/audit/users/{}", "u".repeat(10_000)),
        Tok::Read,
        vec![],
        414,
        "request_too_long_to_record",
    );
    admin(
        "parameters padded past the 16 KiB an audit record holds",
        "GET",
        logs(&format!(
            "{}user_id=bob",
            format!("user_id={}&", "u".repeat(250)).repeat(70)
        )),
        Tok::Read,
        vec![],
        414,
        "request_too_long_to_record",
    );
    admin(
        "no token",
        "GET",
        logs(""),
        Tok::None,
        vec![],
        401,
        "unauthorized",
    );
    admin(
        "revoked token",
        "GET",
        logs(""),
        Tok::Revoked,
        vec![],
        401,
        "unauthorized",
    );
    admin(
        "expired token",
        "GET",
        logs(""),
        Tok::Expired,
        vec![],
        401,
        "unauthorized",
    );
    admin(
        "publish token (wrong scope)",
        "GET",
        logs(""),
        Tok::Publish,
        vec![],
        403,
        "forbidden",
    );
    admin(
        "malformed Authorization header",
        "GET",
        logs(""),
        Tok::Raw("Basic YWxpY2U6c2VjcmV0"),
        vec![],
        401,
        "unauthorized",
    );
    admin(
        "export format xml",
        "GET",
        "/admin/audit/export?format=xml".into(),
        Tok::Export,
        vec![],
        400,
        bad,
    );
    admin(
        "export compression gzip",
        "GET",
        "/admin/audit/export?format=csv&compression=gzip".into(),
        Tok::Export,
        vec![],
        400,
        bad,
    );
    admin(
        "export with a read token",
        "GET",
        "/admin/audit/export?format=csv".into(),
        Tok::Read,
        vec![],
        403,
        "forbidden",
    );
    admin(
        "export job: body not JSON",
        "POST",
        "/admin/audit/exports".into(),
        Tok::Export,
        b"{format: csv".to_vec(),
        400,
        body,
    );
    admin(
        "export job: path traversal as destination",
        "POST",
        "/admin/audit/exports".into(),
        Tok::Export,
        json!({"format": "csv", "destination": "../../etc"})
            .to_string()
            .into_bytes(),
        400,
        body,
    );
    admin(
        "export job: unknown field",
        "POST",
        "/admin/audit/exports".into(),
        Tok::Export,
        json!({"format": "csv", "file": "../../etc/passwd"})
            .to_string()
            .into_bytes(),
        400,
        body,
    );
    admin(
        "export job: filters of the wrong type",
        "POST",
        "/admin/audit/exports".into(),
        Tok::Export,
        json!({"format": "csv", "filters": {"limit": "x", "status": {}}})
            .to_string()
            .into_bytes(),
        400,
        body,
    );
    admin(
        "export job: an array of fields instead of an object",
        "POST",
        "/admin/audit/exports".into(),
        Tok::Export,
        b"[null, null]".to_vec(),
        400,
        body,
    );
    admin(
        "export job: a filter given twice as an array where one value is allowed",
        "POST",
        "/admin/audit/exports".into(),
        Tok::Export,
        json!({"filters": {"success": [true, false]}})
            .to_string()
            .into_bytes(),
        400,
        body,
    );
    admin(
        "download: path traversal as job id",
        "GET",
        "/admin/audit/exports/..%2F..%2Fetc%2Fpasswd/download".into(),
        Tok::Export,
        vec![],
        400,
        bad,
    );
    admin(
        "download: unknown job",
        "GET",
        "/admin/audit/exports/0192f0a4-7a5e-7c3e-8a4b-000000000001/download".into(),
        Tok::Export,
        vec![],
        404,
        "not_found",
    );
    admin(
        "schedule: invalid cron",
        "POST",
        "/admin/audit/export-schedules".into(),
        Tok::Export,
        json!({"cron": "every day", "window": "previous_hour"})
            .to_string()
            .into_bytes(),
        400,
        body,
    );
    admin(
        "schedule: cron every second",
        "POST",
        "/admin/audit/export-schedules".into(),
        Tok::Export,
        json!({"cron": "* * * * * *", "window": "previous_hour"})
            .to_string()
            .into_bytes(),
        400,
        body,
    );
    admin(
        "schedule: traversal as destination",
        "POST",
        "/admin/audit/export-schedules".into(),
        Tok::Export,
        json!({"cron": "0 * * * *", "window": "previous_hour", "destination": "../x"})
            .to_string()
            .into_bytes(),
        400,
        body,
    );
    admin(
        "verify with a read token",
        "GET",
        "/admin/audit/verify".into(),
        Tok::Read,
        vec![],
        403,
        "forbidden",
    );
    admin(
        "verify: from not a timestamp",
        "GET",
        "/admin/audit/verify?from=monday".into(),
        Tok::Admin,
        vec![],
        400,
        bad,
    );
    admin(
        "stream ticket without a token",
        "POST",
        "/admin/audit/stream/ticket".into(),
        Tok::None,
        vec![],
        401,
        "unauthorized",
    );
    admin(
        "stream ticket with a publish token",
        "POST",
        "/admin/audit/stream/ticket".into(),
        Tok::Publish,
        vec![],
        403,
        "forbidden",
    );
    admin(
        "export job: duplicate key",
        "POST",
        "/admin/audit/exports".into(),
        Tok::Export,
        br#"{"format": "csv", "filters": {"user_id": "alice", "user_id": "bob"}}"#.to_vec(),
        400,
        body,
    );
    admin(
        "schedule: duplicate key",
        "POST",
        "/admin/audit/export-schedules".into(),
        Tok::Export,
        br#"{"cron": "0 * * * *", "window": "previous_hour", "window": "previous_day"}"#.to_vec(),
        400,
        body,
    );
    admin(
        "token in the query string, no header",
        "GET",
        logs("access_token=alt_000000000000_00000000000000000000"),
        Tok::None,
        vec![],
        401,
        "unauthorized",
    );
    admin(
        "export job of another export token",
        "GET",
        "/admin/audit/exports/OTHERS_JOB".into(),
        Tok::Export,
        vec![],
        404,
        "not_found",
    );
    admin(
        "download: another export token's job",
        "GET",
        "/admin/audit/exports/OTHERS_JOB/download".into(),
        Tok::Export,
        vec![],
        404,
        "not_found",
    );
    admin(
        "cancel: another export token's job",
        "DELETE",
        "/admin/audit/exports/OTHERS_JOB".into(),
        Tok::Export,
        vec![],
        404,
        "not_found",
    );
    admin(
        "schedule of another export token",
        "GET",
        "/admin/audit/export-schedules/OTHERS_SCHEDULE".into(),
        Tok::Export,
        vec![],
        404,
        "not_found",
    );
    admin(
        "delete: another export token's schedule",
        "DELETE",
        "/admin/audit/export-schedules/OTHERS_SCHEDULE".into(),
        Tok::Export,
        vec![],
        404,
        "not_found",
    );
    cases
}

/// Websocket handshakes: (id, what, query, origin, status, code).
/// A websocket handshake case: id, what, query, origin, status, code.
type StreamCase = (
    &'static str,
    &'static str,
    String,
    Option<&'static str>,
    u16,
    &'static str,
);

fn stream_cases() -> Vec<StreamCase> {
    vec![
        (
            "W01",
            "no ticket",
            String::new(),
            None,
            401,
            "ticket_required",
        ),
        (
            "W02",
            "forged ticket",
            format!("ticket={}", "ab".repeat(32)),
            None,
            401,
            "invalid_ticket",
        ),
        (
            "W03",
            "ticket with SQL in it",
            "ticket=%27%20OR%20%271%27%3D%271".into(),
            None,
            401,
            "invalid_ticket",
        ),
        (
            "W04",
            "a used ticket",
            "ticket=USED".into(),
            None,
            401,
            "invalid_ticket",
        ),
        (
            "W05",
            "an origin not allowed",
            "ticket=FRESH".into(),
            Some("https://evil.example"),
            403,
            "origin_not_allowed",
        ),
        (
            "W06",
            "an unknown parameter",
            "ticket=x&filters=1".into(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "W07",
            "a ticket refused for its origin (W05), again",
            "ticket=FRESH".into(),
            None,
            401,
            "invalid_ticket",
        ),
        (
            "W08",
            "a ticket refused for a bad parameter, again",
            "ticket=REFUSED".into(),
            None,
            401,
            "invalid_ticket",
        ),
        (
            "W09",
            "a ticket whose token was revoked since",
            "ticket=ORPHAN".into(),
            None,
            401,
            "invalid_ticket",
        ),
    ]
}

/// The catalog as a markdown table.
fn table() -> String {
    let mut out = String::from(
        "# Bad-input catalog\n\n\
         Every row is checked by `tests/pipeline/bad_input.rs` against the real\n\
         services: the status and JSON error code, and that nothing was stored,\n\
         published or changed (`UPDATE_CATALOG=1` regenerates this table from the\n\
         test). Injection strings in free-text filters are values, not errors: they\n\
         must answer 200 and match nothing. Websocket frames (bad filters, oversized\n\
         frames, silence) are covered by `tests/pipeline/live.rs`.\n\n\
         | id | surface | input | status | code |\n|---|---|---|---|---|\n",
    );
    for c in cases() {
        let surface = match c.target {
            Target::Ingest => "ingest `POST /v1/events`".to_owned(),
            Target::Admin => {
                let path: String = c.path.chars().take(60).collect();
                format!("admin `{} {}`", c.method, path.replace('|', "\\|"))
            }
        };
        let code = if c.code.is_empty() {
            "(no match)"
        } else {
            c.code
        };
        out.push_str(&format!(
            "| {} | {surface} | {} | {} | `{code}` |\n",
            c.id, c.what, c.status
        ));
    }
    for (id, what, query, _, status, code) in stream_cases() {
        let query: String = query.chars().take(40).collect();
        out.push_str(&format!("| {id} | websocket `GET /admin/audit/stream?{query}` | {what} | {status} | `{code}` |\n"));
    }
    out.push_str(TAMPERING);
    out
}

/// Attacks by someone with power over the system, each checked by the test
/// it names.
const TAMPERING: &str = "
## Attacks by someone with power over the system

Each is a test against the real PostgreSQL, RabbitMQ and file system, named
in the last column (`tests/pipeline/`). The outcome is what an operator sees:
a `verify` finding (its `kind`), a refused checkpoint
(`auditline_integrity_violations_total`, the `AuditlineIntegrityViolation`
alert), a failed job. Tamper cases wait for at least two checkpoints after
the tampering before verifying.

| id | who | attack | outcome | test |
|---|---|---|---|---|
| T01 | database superuser | delete a whole seal chain (its events and batch rows, triggers bypassed), then wait | checkpoints refused; `truncated` naming the chain (CLI and API), however many checkpoints follow | `integrity::a_removed_chain_stays_detected_after_later_checkpoints` |
| T02 | storage writer | replace `checkpoint-latest.json` with an older checkpoint | `checkpoint_regression`: not the newest | same |
| T03 | storage writer | delete a checkpoint from the middle of the history | `checkpoint_regression`: its successor does not name its predecessor | same |
| T04 | database superuser | change a row of an old batch and recompute every seal after it (no writer key to give it away) | checkpoints refused; `checkpoint_mismatch` and nothing else | `integrity::a_recomputed_chain_stays_a_checkpoint_mismatch` |
| T05 | database superuser | a new chain (seq 1, zero previous hash, correct digests), unsigned | `unsigned_seal` at once; never anchored, checkpoints refused | `integrity::a_forged_chain_fails_at_once_and_is_never_anchored` |
| T06 | database superuser | a new chain with a back-dated event, signed with the attacker's own key | `forged_seal` at once; never anchored | same |
| T07 | database superuser | change one byte of a row, delete a row, insert a copy, delete the newest batch with its seal | `changed_row`, `removed_row`, `inserted_row`, `truncated` | `integrity::verify_names_a_changed_removed_and_inserted_row_and_a_truncated_chain` |
| T08 | holder of another key | `auditline checkpoint` with another signing key; a forged checkpoint file in storage | the checkpoint is refused (exit 1); `bad_checkpoint` | same |
| T09 | full disk | checkpoints and an export job on a full file system | `auditline_checkpoint_failures_total` rises, the latest checkpoint stays whole, the job ends `failed` saying `No space left`, no empty file or manifest left; checkpoints resume with space | `full_disk::a_full_disk_fails_checkpoints_and_exports_loudly_and_leaves_no_empty_file` |
| T10 | database superuser | drop a day's partition and forge its drop record | `bad_drop_record`; the day's rows still expected (`removed_row`) | `retention::retention_archives_verifies_and_drops_and_verify_accepts_the_gap` |
| T11 | holder of a revoked token | keep a live-stream websocket open after `auditline token revoke` | closed with 1008 `token revoked` within `stream.token_check_secs` (5 s at most in the test); nothing sent after it; other tokens' streams go on | `live::revoking_a_token_closes_its_open_streams_with_1008_within_5_seconds` |
| T12 | holder of an expiring token | keep a live-stream websocket open past the token's expiry | closed with 1008 `token expired` within 5 s of the expiry | `live::an_expiring_token_ends_its_stream_with_1008` |
| T13 | holder of a revoked token | on a still-open websocket, subscribe with `since` to replay stored history | no stored event sent; closed with 1008 `token revoked` | `live::a_since_replay_after_revocation_sends_no_history` |
| T14 | holder of an export token | queue full-history export jobs as fast as possible | the 6th queued or running job is a 429 `too_many_jobs` with `Retry-After` (`exports.max_queued_per_token`); other tokens still queue | `export_guard::the_sixth_queued_job_of_one_token_is_429_with_retry_after` |
| T15 | holder of an export token | open streamed exports and read slowly, to hold pooled connections and snapshots | beyond `exports.max_streams`, 503 `too_many_exports` with `Retry-After`; searches go on | `export_guard::a_second_streamed_export_beyond_the_cap_is_503_while_a_slow_reader_holds_the_first` |
| T16 | holder of an export token | start a streamed export and stop reading | cut after `exports.stream_send_timeout_secs` (an unfinished transfer); its snapshot transaction ends and the slot is free | `export_guard::a_reader_that_stops_reading_is_cut_and_its_snapshot_released` |
| T17 | holder of another export token | list, show, download or delete another token's jobs and schedules | not listed; 404 as for an unknown id (A52-A56); an admin token sees all; scheduled archives are deleted by admin tokens only | `export_guard::another_tokens_jobs_and_schedules_are_404_and_an_admin_sees_them_all` |
";

#[actix_web::test]
async fn every_bad_input_gets_its_4xx_and_changes_nothing() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bad-input.md");
    let expected = table();
    if std::env::var_os("UPDATE_CATALOG").is_some() {
        std::fs::write(&path, &expected).expect("write the catalog");
    }
    let documented = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        documented == expected,
        "docs/bad-input.md is not the test's catalog; run with UPDATE_CATALOG=1"
    );
    assert!(cases().len() + stream_cases().len() >= 60);

    let env = TestEnv::new().await;
    let gateway = InProcessIngest::start_with(env.settings.clone()).await;
    let mut second = env.settings.clone();
    second.ingest.spool_dir = format!("{}-admin", env.settings.ingest.spool_dir);
    let admin = InProcessAdmin::start_with(second).await;
    let make =
        |scopes: Vec<Scope>, service: Option<&str>, expires: Option<chrono::DateTime<Utc>>| {
            let pool = env.pool.clone();
            let service = service.map(str::to_owned);
            async move {
                auditline_shared::auth::create(
                    &pool,
                    NewToken {
                        name: "catalog".into(),
                        scopes,
                        service,
                        expires_at: expires,
                    },
                )
                .await
                .expect("token")
            }
        };
    let (_, publish) = make(vec![Scope::Publish], Some("billing"), None).await;
    let (_, read) = make(vec![Scope::Read], None, None).await;
    let (_, export) = make(vec![Scope::Export], None, None).await;
    let (_, administrator) = make(vec![Scope::Admin], None, None).await;
    let (revoked_id, revoked) =
        make(vec![Scope::Read, Scope::Publish], Some("billing"), None).await;
    auditline_shared::auth::revoke(&env.pool, &revoked_id.token_id)
        .await
        .expect("revoke");
    let (_, expired) = make(
        vec![Scope::Read, Scope::Publish],
        Some("billing"),
        Some(Utc::now() - chrono::Duration::hours(1)),
    )
    .await;
    // A finished job and a schedule of another export token: the catalog's
    // export token must not find, download or delete them.
    let (others, _) = make(vec![Scope::Export], None, None).await;
    let others_job = uuid::Uuid::now_v7();
    let others_schedule = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO auditline.export_jobs (id, state, format, compression, window_from, \
         window_to, requested_by, owner_token_id, file_name) \
         VALUES ($1, 'done', 'csv', 'none', now() - interval '1 hour', now(), 'others', $2, \
                 'export-others.csv')",
    )
    .bind(others_job)
    .bind(&others.token_id)
    .execute(&env.pool)
    .await
    .expect("another token's job");
    sqlx::query(
        "INSERT INTO auditline.export_schedules (id, name, cron, window_unit, format, \
         compression, created_by, owner_token_id, next_run_at) \
         VALUES ($1, 'others', '0 0 1 1 *', 'day', 'csv', 'none', 'others', $2, \
                 now() + interval '300 days')",
    )
    .bind(others_schedule)
    .bind(&others.token_id)
    .execute(&env.pool)
    .await
    .expect("another token's schedule");

    // A few genuine events first, so "nothing changed" has something to keep.
    let seed: Vec<_> = (0..5).map(|i| event_at("billing", Utc::now(), i)).collect();
    let body: Vec<u8> = auditline_shared::event::to_ndjson(&seed);
    let (status, _, accepted) = gateway
        .post(Some(&publish), "application/x-ndjson", &body)
        .await;
    assert_eq!(status, 202, "{accepted}");

    let mut failures = Vec::new();
    for case in cases() {
        let token = match case.token {
            Tok::None => None,
            Tok::Publish => Some(format!("Bearer {publish}")),
            Tok::Read => Some(format!("Bearer {read}")),
            Tok::Export => Some(format!("Bearer {export}")),
            Tok::Admin => Some(format!("Bearer {administrator}")),
            Tok::Revoked => Some(format!("Bearer {revoked}")),
            Tok::Expired => Some(format!("Bearer {expired}")),
            Tok::Raw(raw) if raw.starts_with("Basic") => Some(raw.to_owned()),
            Tok::Raw(raw) => Some(format!("Bearer {raw}")),
        };
        let mut headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(t) = token.as_deref() {
            headers.push(("Authorization", t));
        }
        let port = if case.target == Target::Ingest {
            gateway.port
        } else {
            admin.port
        };
        let path = case
            .path
            .replace("OTHERS_JOB", &others_job.to_string())
            .replace("OTHERS_SCHEDULE", &others_schedule.to_string());
        let (status, _, text) = http(port, case.method, &path, &headers, &case.body).await;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let ok = if case.code.is_empty() {
            status == 200 && body["events"].as_array().is_some_and(Vec::is_empty)
        } else {
            status == case.status
                && body["error"]["code"] == case.code
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
        };
        if !ok {
            failures.push(format!(
                "{} {}: want {} {:?}, got {status} {}",
                case.id,
                case.what,
                case.status,
                case.code,
                text.chars().take(300).collect::<String>()
            ));
        }
    }

    // Websocket handshakes; W04 uses a ticket spent on a plain GET first.
    let ticket = |admin_port| {
        let read = read.clone();
        async move {
            let auth = format!("Bearer {read}");
            let (status, _, text) = http(
                admin_port,
                "POST",
                "/admin/audit/stream/ticket",
                &[("Authorization", auth.as_str())],
                &[],
            )
            .await;
            assert_eq!(status, 201, "{text}");
            serde_json::from_str::<Value>(&text).expect("ticket")["ticket"]
                .as_str()
                .expect("ticket")
                .to_owned()
        }
    };
    let used = ticket(admin.port).await;
    let (status, _, _) = http(
        admin.port,
        "GET",
        &format!("/admin/audit/stream?ticket={used}"),
        &[],
        &[],
    )
    .await;
    assert_eq!(status, 400, "not a websocket handshake");
    let fresh = ticket(admin.port).await;
    // W08: spent by a handshake refused for an unknown parameter.
    let refused = ticket(admin.port).await;
    let (status, _, _) = http(
        admin.port,
        "GET",
        &format!("/admin/audit/stream?ticket={refused}&since=0"),
        &[],
        &[],
    )
    .await;
    assert_eq!(status, 400, "an unknown parameter");
    // W09: issued to a token revoked afterwards.
    let (doomed_id, doomed) = make(vec![Scope::Read], None, None).await;
    let orphan = {
        let auth = format!("Bearer {doomed}");
        let (status, _, text) = http(
            admin.port,
            "POST",
            "/admin/audit/stream/ticket",
            &[("Authorization", auth.as_str())],
            &[],
        )
        .await;
        assert_eq!(status, 201, "{text}");
        serde_json::from_str::<Value>(&text).expect("ticket")["ticket"]
            .as_str()
            .expect("ticket")
            .to_owned()
    };
    auditline_shared::auth::revoke(&env.pool, &doomed_id.token_id)
        .await
        .expect("revoke");
    for (id, what, query, origin, want, code) in stream_cases() {
        let query = query
            .replace("USED", &used)
            .replace("FRESH", &fresh)
            .replace("REFUSED", &refused)
            .replace("ORPHAN", &orphan);
        let mut headers = vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        if let Some(origin) = origin {
            headers.push(("Origin", origin));
        }
        let (status, _, text) = http(
            admin.port,
            "GET",
            &format!("/admin/audit/stream?{query}"),
            &headers,
            &[],
        )
        .await;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != want || body["error"]["code"] != code {
            failures.push(format!(
                "{id} {what}: want {want} {code}, got {status} {text}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing was stored, published or changed: only the seed (and the admin
    // service's own audit events) reach the table once a writer drains the queue.
    let writer = InProcessWriter::start(&env).await;
    let drained = crate::helpers::wait_until(Duration::from_secs(30), || async {
        env.queued().await == 0 && env.count().await.0 >= 5
    })
    .await;
    assert!(drained, "the writer drained the queue");
    tokio::time::sleep(Duration::from_secs(1)).await;
    writer.stop().await;
    let billing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM auditline.events WHERE service <> 'auditline-admin'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(billing, 5, "only the seed was stored");
    let (jobs, schedules, revoked_tokens, tokens): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM auditline.export_jobs), (SELECT count(*) FROM auditline.export_schedules), \
                (SELECT count(*) FROM auditline.tokens WHERE revoked_at IS NOT NULL), (SELECT count(*) FROM auditline.tokens)",
    )
    .fetch_one(&env.pool)
    .await
    .expect("state");
    assert_eq!((jobs, schedules, revoked_tokens, tokens), (1, 1, 2, 8));
    let others_state: String =
        sqlx::query_scalar("SELECT state FROM auditline.export_jobs WHERE id = $1")
            .bind(others_job)
            .fetch_one(&env.pool)
            .await
            .expect("state");
    assert_eq!(others_state, "done", "another token's job was left alone");
    gateway.stop().await;
    admin.stop().await;
    env.assert_verifies().await;
    env.cleanup().await;
}
