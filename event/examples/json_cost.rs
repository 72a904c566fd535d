//! What the hand-written event JSON writer (`EventView::write_json`, with its
//! own RFC 3339, IP and number writers) buys over serde_json serializing the
//! same event (`WireEvent`), side by side in one run, rounds alternating
//! which goes first; checks first that both write equal JSON.
//!   cargo run --release -p auditline-event --example json_cost
use auditline_event::event::{EventView, WireEvent};
use chrono::{DateTime, Utc};
use std::{hint::black_box, time::Instant};

fn view(now: DateTime<Utc>, i: u32) -> EventView<'static> {
    EventView {
        event_id: uuid::Uuid::from_u128(0x0193_8f2e_5d1c_7abc_8def_0123_4567_89ab + u128::from(i)),
        occurred_at: now,
        service: "demo-app",
        session_id: "bench",
        user_id: Some("alice"),
        client_ip: Some(std::net::IpAddr::from([127, 0, 0, 1])),
        action_type: "file",
        endpoint: "/files/42",
        route: Some("/files/{id}"),
        http_method: "GET",
        request_size: None,
        response_size: Some(58),
        response_time_ms: Some(0.017 + f64::from(i % 100) / 1000.0),
        status_code: Some(200),
        success: true,
        resource_usage: None,
        metadata: None,
    }
}

fn wire(v: &EventView<'_>) -> WireEvent {
    WireEvent {
        event_id: Some(v.event_id),
        occurred_at: v.occurred_at,
        service: v.service.into(),
        session_id: v.session_id.into(),
        user_id: v.user_id.map(Into::into),
        client_ip: v.client_ip,
        action_type: v.action_type.into(),
        endpoint: v.endpoint.into(),
        route: v.route.map(Into::into),
        http_method: v.http_method.into(),
        request_size: v.request_size,
        response_size: v.response_size,
        response_time_ms: v.response_time_ms,
        status_code: v.status_code,
        success: v.success,
        resource_usage: None,
        metadata: None,
    }
}

/// The same event borrowed, for serde_json without copying a string.
#[derive(serde::Serialize)]
struct Borrowed<'a> {
    event_id: uuid::Uuid,
    occurred_at: DateTime<Utc>,
    service: &'a str,
    session_id: &'a str,
    user_id: Option<&'a str>,
    client_ip: Option<std::net::IpAddr>,
    action_type: &'a str,
    endpoint: &'a str,
    route: Option<&'a str>,
    http_method: &'a str,
    request_size: Option<u64>,
    response_size: Option<u64>,
    response_time_ms: Option<f64>,
    status_code: Option<u16>,
    success: bool,
    resource_usage: Option<()>,
    metadata: Option<()>,
}

fn borrowed<'a>(v: &EventView<'a>) -> Borrowed<'a> {
    Borrowed {
        event_id: v.event_id,
        occurred_at: v.occurred_at,
        service: v.service,
        session_id: v.session_id,
        user_id: v.user_id,
        client_ip: v.client_ip,
        action_type: v.action_type,
        endpoint: v.endpoint,
        route: v.route,
        http_method: v.http_method,
        request_size: v.request_size,
        response_size: v.response_size,
        response_time_ms: v.response_time_ms,
        status_code: v.status_code,
        success: v.success,
        resource_usage: None,
        metadata: None,
    }
}

/// Nanoseconds an event for `rounds` events written by `write`.
fn time(rounds: u32, mut write: impl FnMut(u32, &mut Vec<u8>)) -> f64 {
    let mut out = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    for i in 0..rounds {
        if out.len() > (1 << 20) - 1024 {
            out.clear();
        }
        write(i, &mut out);
        out.push(b'\n');
    }
    black_box(&out);
    start.elapsed().as_nanos() as f64 / f64::from(rounds)
}

fn main() {
    let now = Utc::now();
    let (mut hand, mut library) = (Vec::new(), Vec::new());
    view(now, 7).write_json(&mut hand);
    serde_json::to_writer(&mut library, &wire(&view(now, 7))).expect("JSON");
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&hand).expect("JSON"),
        serde_json::from_slice(&library).expect("JSON"),
    );
    assert_eq!(a, b, "both write the same event");
    println!("byte-identical: {}", hand == library);
    let rounds = 1_000_000;
    let mut ratios = Vec::new();
    let mut owned = Vec::new();
    for round in 1..=5 {
        let hand_written = |i: u32, out: &mut Vec<u8>| view(now, i).write_json(out);
        // The library path as the middleware would need it: an owned event
        // (the strings copied), then serde_json.
        let serde = |i: u32, out: &mut Vec<u8>| {
            serde_json::to_writer(&mut *out, &wire(&view(now, i))).expect("JSON");
        };
        let serde_borrowed = |i: u32, out: &mut Vec<u8>| {
            serde_json::to_writer(&mut *out, &borrowed(&view(now, i))).expect("JSON");
        };
        let (h, s, b) = if round % 2 == 1 {
            let h = time(rounds, hand_written);
            let b = time(rounds, serde_borrowed);
            (h, time(rounds, serde), b)
        } else {
            let s = time(rounds, serde);
            let b = time(rounds, serde_borrowed);
            (time(rounds, hand_written), s, b)
        };
        println!(
            "[round {round}] write_json {h:.0} ns, serde_json on borrowed fields {b:.0} ns, \
             serde_json on an owned WireEvent {s:.0} ns an event"
        );
        ratios.push(b / h);
        owned.push(s / h);
    }
    for (name, mut r) in [("borrowed", ratios), ("owned WireEvent", owned)] {
        r.sort_by(f64::total_cmp);
        println!(
            "serde_json ({name}) / write_json, per round sorted: {:?}; median {:.2}",
            r.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>(),
            r[r.len() / 2]
        );
    }
}
