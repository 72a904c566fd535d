//! Compression of a 500-event NDJSON message (the audit middleware's default
//! message) at several zstd levels: CPU per event and size, side by side.
//! `cargo run --release -p auditline-shared --example zstd_levels`
use auditline_shared::AuditEvent;
use chrono::Utc;
use std::time::Instant;

fn main() {
    let now = Utc::now();
    let mut body = Vec::new();
    let events = 500;
    for i in 0..events {
        let json = format!(
            r#"{{"occurred_at":"{}","service":"demo-app","session_id":"bench","user_id":"alice","client_ip":"127.0.0.1","action_type":"file_read","endpoint":"/files/42","route":"/files/{{id}}","http_method":"GET","request_size":0,"response_size":{},"response_time_ms":0.0{},"status_code":200,"success":true}}"#,
            now.to_rfc3339(),
            20 + i % 7,
            17 + i % 83,
        );
        AuditEvent::parse_at(json.as_bytes(), now)
            .expect("event")
            .write_json(&mut body);
        body.push(b'\n');
    }
    println!(
        "message: {events} events, {} bytes ({} bytes an event)",
        body.len(),
        body.len() / events
    );
    for (name, reuse) in [("a context per message", false), ("a reused context", true)] {
        let rounds = 400;
        let start = Instant::now();
        for _ in 0..rounds {
            let out = if reuse {
                auditline_shared::amqp::compress(&body).expect("compressed")
            } else {
                zstd::bulk::compress(&body, 1).expect("compress")
            };
            std::hint::black_box(out);
        }
        let ns = start.elapsed().as_nanos() as f64 / (rounds * events) as f64;
        println!("level 1, {name}: {ns:.0} ns an event");
    }
    let parts: Vec<&[u8]> = body.chunks(body.len() / 8 + 1).collect();
    let mut bulk = zstd::bulk::Compressor::new(1).expect("context");
    for (name, streamed) in [("bulk, one body", false), ("streamed, 8 parts", true)] {
        let rounds = 400;
        let start = Instant::now();
        for _ in 0..rounds {
            let out = if streamed {
                auditline_shared::amqp::compress_parts(&parts)
            } else {
                bulk.compress(&body).ok()
            };
            std::hint::black_box(out);
        }
        let ns = start.elapsed().as_nanos() as f64 / (rounds * events) as f64;
        println!("level 1, {name}: {ns:.0} ns an event");
    }
    for level in [3, 1, -1, -3, -5, -10] {
        let rounds = 400;
        let mut size = 0;
        let start = Instant::now();
        for _ in 0..rounds {
            size = zstd::bulk::compress(&body, level).expect("compress").len();
        }
        let ns = start.elapsed().as_nanos() as f64 / (rounds * events) as f64;
        println!(
            "level {level:>3}: {ns:>6.0} ns an event, {size:>6} bytes ({:.1}x)",
            body.len() as f64 / size as f64
        );
    }
}
