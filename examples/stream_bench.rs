//! Live-stream benchmark client (run by `deploy/scripts/bench-stream.sh`).
//!
//! Opens CLIENTS websocket clients on the admin service with mixed filters,
//! plus one client that subscribes to everything and never reads, then
//! publishes RATE events/s for SECONDS through the ingest gateway (NDJSON
//! posts every 50 ms) and measures, for every delivered event, the time from
//! just before its post to its arrival at the client (`occurred_at` is set to
//! that moment). Prints deliveries, delivery latency percentiles, and what the
//! stalled client was told.
//!
//!   stream_bench <admin port> <ingest port> <read token> <publish token> \
//!                [clients=500] [rate=2000] [seconds=20]

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{connect_async, tungstenite::Message};

const SERVICES: usize = 10;
const ACTIONS: [&str; 4] = ["file", "auth", "code_exec", "data"];

#[derive(Default)]
struct Totals {
    delivered: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

async fn post(
    port: u16,
    path: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

async fn ticket(admin: u16, token: &str) -> String {
    let (status, body) = post(
        admin,
        "/admin/audit/stream/ticket",
        token,
        "application/json",
        b"",
    )
    .await;
    assert_eq!(status, 201, "ticket: {body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["ticket"].as_str().expect("ticket").to_owned()
}

/// The filter of client `i`: one service each, every third also one action
/// type, every fifth only failures.
fn filter(i: usize) -> Value {
    let mut f = serde_json::Map::new();
    f.insert("service".into(), json!(format!("svc-{}", i % SERVICES)));
    if i.is_multiple_of(3) {
        f.insert("action_type".into(), json!(ACTIONS[i % ACTIONS.len()]));
    }
    if i.is_multiple_of(5) {
        f.insert("success".into(), json!(false));
    }
    Value::Object(f)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (admin, ingest) = (arg(1, 18380) as u16, arg(2, 18381) as u16);
    let read_token = args[3].clone();
    // One publish token per service svc-0 … svc-9, comma-separated.
    let publish_tokens: Vec<String> = args[4].split(',').map(str::to_owned).collect();
    assert_eq!(publish_tokens.len(), SERVICES, "ten publish tokens");
    let (clients, rate, seconds) = (arg(5, 500) as usize, arg(6, 2000), arg(7, 20));
    let totals = Arc::new(Totals::default());

    let mut tasks = Vec::new();
    for i in 0..clients {
        let ticket = ticket(admin, &read_token).await;
        let url = format!("ws://127.0.0.1:{admin}/admin/audit/stream?ticket={ticket}");
        let (mut socket, _) = connect_async(url).await.expect("websocket");
        let message = json!({"type": "subscribe", "filter": filter(i)});
        socket
            .send(Message::text(message.to_string()))
            .await
            .expect("send");
        let totals = totals.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                let mut latencies = Vec::new();
                let Message::Text(text) = message else {
                    continue;
                };
                let now = chrono::Utc::now();
                let v: Value = serde_json::from_str(&text).expect("JSON");
                if v["type"] == "error" {
                    panic!("client {i}: {v}");
                }
                for e in v["events"].as_array().into_iter().flatten() {
                    let at: chrono::DateTime<chrono::Utc> = e["occurred_at"]
                        .as_str()
                        .expect("time")
                        .parse()
                        .expect("time");
                    let us = (now - at).num_microseconds().unwrap_or(0).max(0);
                    latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                totals
                    .delivered
                    .fetch_add(latencies.len() as u64, Ordering::Relaxed);
                totals.latencies_us.lock().expect("lock").extend(latencies);
            }
        }));
    }
    // The stalled client: everything, never read until the end.
    let ticket = ticket(admin, &read_token).await;
    let url = format!("ws://127.0.0.1:{admin}/admin/audit/stream?ticket={ticket}");
    let (mut stalled, _) = connect_async(url).await.expect("websocket");
    stalled
        .send(Message::text(
            json!({"type": "subscribe", "filter": {}}).to_string(),
        ))
        .await
        .expect("send");
    eprintln!(
        "{clients} clients and 1 stalled client connected; publishing {rate} events/s for {seconds} s"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let per_post = (rate / 20).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut sent = 0u64;
    let mut n = 0usize;
    for _ in 0..(seconds * 20) {
        tick.tick().await;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let body: String = (0..per_post)
            .map(|_| {
                n += 1;
                let line = json!({
                    "occurred_at": now,
                    "session_id": format!("s{}", n % 50),
                    "user_id": format!("u{}", n % 200),
                    "action_type": ACTIONS[n % ACTIONS.len()],
                    "endpoint": format!("/x/{n}"),
                    "http_method": "GET",
                    "status_code": if n.is_multiple_of(7) { 500 } else { 200 },
                    "success": !n.is_multiple_of(7),
                    "response_time_ms": 3.5,
                });
                format!("{line}\n")
            })
            .collect();
        // The gateway stamps the token's service: the service rotates per post.
        let (status, text) = post(
            ingest,
            "/v1/events",
            &publish_tokens[(n / per_post) % SERVICES],
            "application/x-ndjson",
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 202, "post: {text}");
        sent += per_post as u64;
    }
    // Let the last commits arrive, then close everything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered = totals.delivered.load(Ordering::Relaxed);
    let mut lagged = 0u64;
    let mut stalled_got = 0u64;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(500), stalled.next()).await
    {
        if let Message::Text(text) = message {
            let v: Value = serde_json::from_str(&text).expect("JSON");
            if v["type"] == "lagged" {
                lagged += v["dropped"].as_u64().unwrap_or(0);
            }
            stalled_got += v["events"].as_array().map_or(0, Vec::len) as u64;
        }
    }
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut latencies = std::mem::take(&mut *totals.latencies_us.lock().expect("lock"));
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    println!(
        "published {sent} events; {} deliveries to {clients} clients; latency ms p50 {:.1} p95 {:.1} p99 {:.1} max {:.1}; stalled client: {stalled_got} received, lagged dropped {lagged}",
        delivered,
        pct(0.50),
        pct(0.95),
        pct(0.99),
        pct(1.0),
    );
}
