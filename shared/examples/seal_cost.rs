//! How long a row digest, a batch's seal and its signature take:
//! `cargo run --release -p auditline-shared --example seal_cost`.
use auditline_shared::{AuditEvent, seal, signing::SigningKey};
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
    // A 5,000-event batch: its entries, the seal hash, and the signature
    // the writer adds (one per batch).
    let (seed, _) = SigningKey::generate().expect("key");
    let key = SigningKey::from_seed_hex(&seed, "key").expect("key");
    let batch = &events[..5_000];
    for _ in 0..3 {
        let rounds = 20;
        let start = Instant::now();
        let mut hash = [0u8; 32];
        for _ in 0..rounds {
            let mut entries: Vec<seal::Entry> = batch
                .iter()
                .map(|e| seal::Entry::of(e, now, uuid::Uuid::nil()))
                .collect();
            let encoded = seal::encode_entries(&mut entries);
            hash = seal::seal_hash(&seal::SealInput {
                chain: "w/0",
                seq: 1,
                prev_hash: &hash,
                batch_id: uuid::Uuid::nil(),
                entry_count: entries.len() as i64,
                entries_hash: &seal::sha256(&encoded),
            });
        }
        let seal_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
        let signs = 2_000;
        let start = Instant::now();
        let mut x = 0u8;
        for _ in 0..signs {
            x ^= key.sign(&seal::signed_message(&hash))[0];
        }
        let sign_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(signs);
        println!(
            "5,000-event batch: seal {seal_us:.0} us, signature {sign_us:.1} us \
             ({:.2} ns per event, {:.2}% of the seal) ({x})",
            sign_us * 1000.0 / 5000.0,
            100.0 * sign_us / seal_us
        );
    }
}
