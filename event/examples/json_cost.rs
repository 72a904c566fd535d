//! Cost of writing a typical middleware event as JSON (EventView) on this
//! machine: `cargo run --release -p auditline-event --example json_cost`
use auditline_event::event::EventView;
use chrono::Utc;
use std::time::Instant;

fn main() {
    let now = Utc::now();
    let mut out = Vec::with_capacity(1 << 20);
    let rounds = 2_000_000;
    let start = Instant::now();
    for i in 0..rounds {
        if out.len() > (1 << 20) - 1024 {
            out.clear();
        }
        EventView {
            event_id: uuid::Uuid::now_v7(),
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
        .write_json(&mut out);
        out.push(b'\n');
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(rounds);
    println!("write_json with now_v7: {ns:.0} ns an event");
}
