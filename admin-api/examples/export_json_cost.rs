//! What export's own JSON framing (`Encoder`, NDJSON: serde_json for each
//! text, PostgreSQL's jsonb text spliced in as it is) buys over deriving
//! `Serialize` on the row, which has to turn each jsonb text into a
//! `RawValue` (and so parse it) first. Side by side in one run, rounds
//! alternating; checks first that both write equal JSON.
//!   cargo run --release -p auditline-admin-api --example export_json_cost
use auditline_admin_api::query::export::{Compression, Encoder, ExportRow, Format};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use std::{hint::black_box, time::Instant};

#[derive(Serialize)]
struct Derived<'a> {
    event_id: uuid::Uuid,
    occurred_at: String,
    received_at: String,
    service: &'a str,
    session_id: &'a str,
    user_id: Option<&'a str>,
    client_ip: Option<&'a str>,
    action_type: &'a str,
    endpoint: &'a str,
    route: Option<&'a str>,
    http_method: &'a str,
    request_size: Option<i64>,
    response_size: Option<i64>,
    response_time_ms: Option<f64>,
    status_code: Option<i16>,
    success: bool,
    resource_usage: Option<Box<RawValue>>,
    metadata: Option<Box<RawValue>>,
}

fn time(at: DateTime<Utc>) -> String {
    auditline_shared::event::rfc3339_text(at)
}

fn derived(r: &ExportRow) -> Derived<'_> {
    let raw = |v: &Option<String>| {
        v.clone()
            .map(|text| RawValue::from_string(text).expect("JSON"))
    };
    Derived {
        event_id: r.event_id,
        occurred_at: time(r.occurred_at),
        received_at: time(r.received_at),
        service: &r.service,
        session_id: &r.session_id,
        user_id: r.user_id.as_deref(),
        client_ip: r.client_ip.as_deref(),
        action_type: &r.action_type,
        endpoint: &r.endpoint,
        route: r.route.as_deref(),
        http_method: &r.http_method,
        request_size: r.request_size,
        response_size: r.response_size,
        response_time_ms: r.response_time_ms,
        status_code: r.status_code,
        success: r.success,
        resource_usage: raw(&r.resource_usage),
        metadata: raw(&r.metadata),
    }
}

fn rows() -> Vec<ExportRow> {
    (0..1000)
        .map(|i| ExportRow {
            event_id: uuid::Uuid::from_u128(0x0193_8f2e_5d1c_7abc_8def_0000_0000_0000 + i),
            occurred_at: DateTime::from_timestamp_micros(1_764_756_000_123_456).expect("time"),
            received_at: DateTime::from_timestamp_micros(1_764_756_000_223_456).expect("time"),
            service: "files".into(),
            session_id: format!("session-{}", i % 97),
            user_id: Some(format!("user-{}", i % 1000)),
            client_ip: Some("10.1.2.3".into()),
            action_type: "file".into(),
            endpoint: format!("/files/{i}"),
            route: Some("/files/{id}".into()),
            http_method: "GET".into(),
            request_size: Some(0),
            response_size: Some(1234),
            response_time_ms: Some(12.5),
            status_code: Some(200),
            success: true,
            resource_usage: Some(r#"{"cpu_ms": 3, "quota_units": 1}"#.into()),
            metadata: Some(format!(
                r#"{{"request_id": "req-{i:08}", "tags": ["a", "b"], "note": "an ordinary note of some length"}}"#
            )),
        })
        .collect()
}

fn main() {
    let rows = rows();
    let mut own = Encoder::new(Format::Ndjson, Compression::None).expect("encoder");
    own.write_rows(&rows[..1]).expect("row");
    let own_text = own.finish().expect("finish");
    let mut serde_text = serde_json::to_vec(&derived(&rows[0])).expect("JSON");
    serde_text.push(b'\n');
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&own_text).expect("JSON"),
        serde_json::from_slice(&serde_text).expect("JSON"),
    );
    assert_eq!(a, b, "both write the same row");
    let batches = 500;
    let own_run = || {
        let start = Instant::now();
        for _ in 0..batches {
            let mut e = Encoder::new(Format::Ndjson, Compression::None).expect("encoder");
            e.write_rows(&rows).expect("rows");
            black_box(e.finish().expect("finish"));
        }
        start.elapsed().as_nanos() as f64 / (batches * rows.len()) as f64
    };
    let serde_run = || {
        let start = Instant::now();
        for _ in 0..batches {
            let mut out = Vec::with_capacity(1 << 20);
            for r in &rows {
                serde_json::to_writer(&mut out, &derived(r)).expect("JSON");
                out.push(b'\n');
            }
            black_box(out);
        }
        start.elapsed().as_nanos() as f64 / (batches * rows.len()) as f64
    };
    let mut ratios = Vec::new();
    for round in 1..=5 {
        let (o, s) = if round % 2 == 1 {
            let o = own_run();
            (o, serde_run())
        } else {
            let s = serde_run();
            (own_run(), s)
        };
        println!("[round {round}] export's framing {o:.0} ns, derived Serialize {s:.0} ns a row");
        ratios.push(s / o);
    }
    ratios.sort_by(f64::total_cmp);
    println!("derived / own, median of rounds: {:.2}", ratios[2]);
}
