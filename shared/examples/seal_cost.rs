//! How long a row digest takes: `cargo run --release -p auditline-shared --example seal_cost`.
use auditline_shared::{AuditEvent, seal};
use chrono::Utc;
use std::time::Instant;

fn main() {
    let now = Utc::now();
    let events: Vec<AuditEvent> = (0..100_000)
        .map(|i| {
            let json = format!(
                r#"{{"occurred_at":"{}","service":"loadgen","session_id":"sess-{i}","user_id":"user-{:05}","client_ip":"10.1.2.3","action_type":"file_read","endpoint":"/files/{i}","route":"/files/{{id}}","http_method":"GET","request_size":512,"response_size":2048,"response_time_ms":12.5,"status_code":200,"success":true,"resource_usage":{{"cpu_ms":42,"memory_bytes":123456789}},"metadata":{{"request_id":"{:032x}","user_agent":"loadgen/1"}}}}"#,
                now.to_rfc3339(),
                i % 1000,
                i as u128 * 7919
            );
            AuditEvent::parse_at(json.as_bytes(), now).expect("event")
        })
        .collect();
    for _ in 0..3 {
        let start = Instant::now();
        let mut x = 0u8;
        for e in &events {
            x ^= seal::Entry::of(e, now, uuid::Uuid::nil()).digest[0];
        }
        let per = start.elapsed().as_nanos() as f64 / events.len() as f64;
        println!("Entry::of: {per:.0} ns per event ({x})");
        let start = Instant::now();
        let mut body = Vec::new();
        for e in &events {
            body.clear();
            e.write_json(&mut body);
        }
        let per = start.elapsed().as_nanos() as f64 / events.len() as f64;
        println!("write_json (for scale): {per:.0} ns per event");
    }
}
