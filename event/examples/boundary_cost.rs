//! What the boundary checks of issue 19 cost, side by side in one run:
//! `cargo run --release -p auditline-event --example boundary_cost`
//!
//! 1. Strict JSON (duplicate keys, exact numbers) on loadgen-shaped events
//!    (a ~440-byte NDJSON line, metadata with a request id and a user agent;
//!    every fourth one with resource usage). Rounds alternate
//!    `AuditEvent::parse_at` (which runs the check first) and the check
//!    alone; the added share is check / (parse − check).
//! 2. Redaction of a request target, as the audit middleware does it for
//!    every request, against writing that request's event line
//!    (`EventView::write_json`, the middleware's own hot path).
use auditline_event::{AuditEvent, event::EventView, redact::Redactor, strict_json};
use chrono::Utc;
use std::{hint::black_box, time::Instant};

fn main() {
    let now = Utc::now();
    let lines: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| {
            let usage = if i % 4 == 0 {
                format!(r#","resource_usage":{{"cpu_ms":{},"memory_bytes":{}}}"#, i % 5000, 1_000_000 + u64::from(i) * 977)
            } else {
                String::new()
            };
            format!(
                r#"{{"event_id":"{}","occurred_at":"{}","service":"loadgen","session_id":"sess-{}-{}","user_id":"user-{:05}","client_ip":"10.{}.{}.{}","action_type":"file","endpoint":"/files/{}","route":"/files/{{id}}","http_method":"GET","request_size":{},"response_size":{},"response_time_ms":{}.0,"status_code":200,"success":true{usage},"metadata":{{"request_id":"{}","user_agent":"loadgen/1"}}}}"#,
                uuid::Uuid::now_v7(),
                auditline_event::event::rfc3339_text(now),
                i % 500,
                i % 4,
                i % 500,
                i % 256,
                i / 256 % 256,
                i % 7,
                i * 13 % 100_000,
                i % 4096,
                i * 31 % 65_536,
                2 + i % 800,
                uuid::Uuid::new_v4().simple(),
            )
            .into_bytes()
        })
        .collect();
    let bytes: usize = lines.iter().map(Vec::len).sum();
    for line in &lines {
        AuditEvent::parse_at(line, now).expect("valid");
    }
    let (mut parse, mut check) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let start = Instant::now();
        for line in &lines {
            black_box(AuditEvent::parse_at(black_box(line), now).is_ok());
        }
        parse.push(start.elapsed().as_nanos() as f64 / lines.len() as f64);
        let start = Instant::now();
        for line in &lines {
            black_box(strict_json::check(black_box(line), true).is_ok());
        }
        check.push(start.elapsed().as_nanos() as f64 / lines.len() as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (parse, check) = (median(&mut parse), median(&mut check));
    println!(
        "{} events, {} bytes each on average; medians of 30 rounds:",
        lines.len(),
        bytes / lines.len()
    );
    println!("parse_at (with the check): {parse:.0} ns an event");
    println!("strict check alone:        {check:.0} ns an event");
    println!(
        "the check adds {:.1}% to the parse without it",
        100.0 * check / (parse - check)
    );

    let redactor = Redactor::default();
    let targets = [
        "/files/42",
        "/files/42?version=3&download=true",
        "/admin/audit/logs?user_id=alice&action_type=file&action_type=auth&limit=100",
    ];
    let mut out = Vec::with_capacity(1 << 20);
    for target in targets {
        let (mut redact, mut write) = (Vec::new(), Vec::new());
        let n = 200_000u32;
        for _ in 0..15 {
            let start = Instant::now();
            for _ in 0..n {
                black_box(redactor.path_and_query(black_box(target)).len());
            }
            redact.push(start.elapsed().as_nanos() as f64 / f64::from(n));
            let start = Instant::now();
            for i in 0..n {
                if out.len() > (1 << 20) - 1024 {
                    out.clear();
                }
                EventView {
                    event_id: uuid::Uuid::nil(),
                    occurred_at: now,
                    service: "demo-app",
                    session_id: "bench",
                    user_id: Some("alice"),
                    client_ip: Some(std::net::IpAddr::from([127, 0, 0, 1])),
                    action_type: "file",
                    endpoint: black_box(target),
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
                .write_json(&mut out);
            }
            write.push(start.elapsed().as_nanos() as f64 / f64::from(n));
        }
        let (redact, write) = (median(&mut redact), median(&mut write));
        println!(
            "redact {target:?}: {redact:.1} ns, writing its event {write:.0} ns: +{:.1}%",
            100.0 * redact / write
        );
    }
}
