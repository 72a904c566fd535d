//! Fault drills that can run beside other tests (each on its own database and
//! namespace). Each ends with the exactly-once check over everything that was
//! confirmed, and `auditline verify`. The drills that restart PostgreSQL or
//! RabbitMQ themselves are in `tests/drills` (run alone).

use crate::helpers::{
    InProcessAdmin, Process, TestEnv, event_at, events, free_port, http_get, wait_until,
};
use auditline_client::Publisher;
use auditline_shared::auth::Scope;
use chrono::Utc;
use serde_json::{Value, json};
use std::{collections::HashSet, time::Duration};
use uuid::Uuid;

/// A publisher that sends plain (uncompressed) NDJSON, so dead letters can be read back.
async fn plain_publisher(env: &TestEnv) -> Publisher {
    let mut settings = env.settings.clone();
    settings.publisher.compress = false;
    Publisher::connect(&settings.client(), "drill-publisher")
        .await
        .expect("publisher")
}

/// The event ids in the dead letters' NDJSON bodies.
fn dead_ids(dead: &[(Vec<u8>, Option<String>)]) -> Vec<Uuid> {
    dead.iter()
        .flat_map(|(body, _)| body.split(|b| *b == b'\n'))
        .filter(|line| !line.is_empty())
        .map(|line| {
            let v: Value = serde_json::from_slice(line).expect("dead letter line is JSON");
            v["event_id"]
                .as_str()
                .expect("event_id")
                .parse()
                .expect("uuid")
        })
        .collect()
}

async fn stored_ids(env: &TestEnv) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM auditline.events")
        .fetch_all(&env.pool)
        .await
        .expect("ids")
}

#[actix_web::test]
async fn twenty_five_writer_crashes_holding_unacked_messages_drop_nothing_silently() {
    let env = TestEnv::new().await;
    let batch = events(2_000);
    let confirmed: HashSet<Uuid> = plain_publisher(&env)
        .await
        .publish_batch(&batch)
        .await
        .expect("confirmed")
        .into_iter()
        .collect();
    assert_eq!(confirmed.len(), 2_000);

    // A writer that receives everything and never writes (its batch waits
    // ten minutes), killed as soon as it holds messages: 25 times in a row.
    let mut held_rounds = 0;
    for _ in 0..25 {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut writer = Process::spawn_with(
            &env,
            &["writer"],
            &[
                ("AUDITLINE_WRITER_LISTEN", listen.as_str()),
                ("AUDITLINE_WRITER__BATCH__TIMEOUT_MS", "600000"),
                ("AUDITLINE_WRITER__BATCH__MAX_EVENTS", "1000000"),
                ("AUDITLINE_WRITER__BATCH__MAX_BYTES", "1000000000"),
            ],
        );
        let held = wait_until(Duration::from_secs(5), || async {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                return false;
            }
            let (status, body) = http_get(port, "/metrics").await;
            status == 200
                && body.lines().any(|l| {
                    l.starts_with("auditline_writer_messages_received_total ") && !l.ends_with(" 0")
                })
        })
        .await;
        held_rounds += usize::from(held);
        writer.signal("KILL");
        assert_eq!(writer.wait(Duration::from_secs(10)).await, None);
    }
    // Once the broker has dead-lettered them (delivery limit 20), the
    // remaining writers get nothing to hold.
    assert!(
        held_rounds >= 15,
        "the writers held messages ({held_rounds} rounds)"
    );
    assert_eq!(
        env.count().await.0,
        0,
        "nothing was written by the crashing writers"
    );

    // Past the delivery limit (20) the broker dead-letters what kept coming
    // back; a healthy writer stores whatever is left. Every confirmed event is
    // in exactly one of the two places.
    let writer = Process::spawn(&env, &["writer"]);
    let mut dead = Vec::new();
    let started = std::time::Instant::now();
    let accounted = loop {
        dead.extend(env.dead_letters().await);
        if env.count().await.0 as usize + dead_ids(&dead).len() >= 2_000 {
            break true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(writer);
    let dead = dead_ids(&dead);
    let stored = stored_ids(&env).await;
    assert!(
        accounted,
        "stored {} + dead {} of 2000",
        stored.len(),
        dead.len()
    );
    assert!(
        !dead.is_empty(),
        "25 redeliveries exceed the delivery limit"
    );
    let mut all: Vec<Uuid> = stored.iter().chain(dead.iter()).copied().collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(
        before,
        all.len(),
        "no event is both stored and dead, or stored twice"
    );
    assert_eq!(all.into_iter().collect::<HashSet<_>>(), confirmed);
    env.assert_verifies().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn two_writers_and_two_admins_share_the_work_without_doing_it_twice() {
    let env = TestEnv::new().await;
    let w1 = Process::spawn_with(
        &env,
        &["writer"],
        &[("AUDITLINE_WRITER__WRITER_ID", "drill-w1")],
    );
    let w2 = Process::spawn_with(
        &env,
        &["writer"],
        &[("AUDITLINE_WRITER__WRITER_ID", "drill-w2")],
    );
    let publisher = env.publisher().await;
    let mut confirmed = Vec::new();
    for _ in 0..20 {
        let chunk = events(1_000);
        confirmed.extend(publisher.publish_batch(&chunk).await.expect("confirmed"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.wait_for_rows(20_000, Duration::from_secs(120)).await;
    confirmed.sort();
    env.assert_exactly(&confirmed).await;
    let writers: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT writer_id) FROM auditline.batches WHERE inserted_count > 0",
    )
    .fetch_one(&env.pool)
    .await
    .expect("writers");
    assert_eq!(writers, 2, "both writers stored batches");
    drop((w1, w2));

    // Two admin instances take export jobs from one table.
    // One token queues all eight: above the default per-token quota of 5.
    let mut first = env.settings.clone();
    first.exports.max_queued_per_token = 8;
    let mut second = first.clone();
    second.ingest.spool_dir = format!("{}-2", env.settings.ingest.spool_dir);
    let a1 = InProcessAdmin::start_with(first).await;
    let a2 = InProcessAdmin::start_with(second).await;
    let token = env
        .named_token("drill", &[Scope::Export, Scope::Read])
        .await;
    let body = json!({"format": "ndjson", "filters": {"from": (Utc::now() - chrono::Duration::hours(1)), "to": Utc::now() + chrono::Duration::minutes(1)}}).to_string();
    let mut ids = Vec::new();
    for i in 0..8 {
        let port = if i % 2 == 0 { a1.port } else { a2.port };
        let auth = format!("Bearer {token}");
        let (status, _, text) = crate::helpers::http(
            port,
            "POST",
            "/admin/audit/exports",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 202, "{text}");
        let job: Value = serde_json::from_str(&text).expect("job");
        ids.push(job["id"].as_str().expect("id").to_owned());
    }
    let done = wait_until(Duration::from_secs(120), || async {
        let finished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM auditline.export_jobs WHERE state = 'done'")
                .fetch_one(&env.pool)
                .await
                .expect("jobs");
        finished == 8
    })
    .await;
    assert!(done, "every job finished");
    let rows: Vec<(i32, i64, Option<String>)> =
        sqlx::query_as("SELECT attempts, rows_written, claimed_by FROM auditline.export_jobs")
            .fetch_all(&env.pool)
            .await
            .expect("jobs");
    for (attempts, n, _) in &rows {
        assert_eq!(*attempts, 1, "no job was run twice");
        assert_eq!(*n, 20_000);
    }
    let instances: HashSet<_> = rows.iter().filter_map(|(_, _, by)| by.clone()).collect();
    assert_eq!(
        instances.len(),
        2,
        "both admin instances ran jobs: {instances:?}"
    );
    a1.stop().await;
    a2.stop().await;
    env.assert_verifies().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn a_full_queue_refuses_new_events_and_keeps_the_oldest() {
    let env = TestEnv::new().await;
    let policy = format!("auditline-drill-{}", env.id);
    let pattern = format!("^{}\\.writer$", regex_escape(&env.settings.namespace));
    let status = tokio::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "set_policy",
            "--apply-to",
            "queues",
            &policy,
            &pattern,
        ])
        .arg(r#"{"max-length": 50}"#)
        .status()
        .await
        .expect("rabbitmqctl");
    assert!(status.success());
    let publisher = plain_publisher(&env).await;
    let now = Utc::now();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for i in 0..100 {
        let event = event_at("tests", now, i);
        match publisher.publish(&event).await {
            Ok(id) => {
                assert!(refused.is_empty(), "once full, the queue stays full");
                accepted.push(id);
            }
            Err(e) => {
                assert!(e.to_string().contains("nack"), "{e}");
                refused.push(event.event_id);
            }
        }
    }
    let _ = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "clear_policy", &policy])
        .status()
        .await;
    // RabbitMQ checks a quorum queue's length before it appends: it may take
    // one message past the limit, never fewer.
    assert!(
        (50..=51).contains(&accepted.len()),
        "the queue took {}",
        accepted.len()
    );
    assert_eq!(
        accepted.len() + refused.len(),
        100,
        "the publisher was told about the rest"
    );
    assert_eq!(env.queued().await as usize, accepted.len());

    // What was accepted is what gets stored: the head was not dropped.
    let writer = Process::spawn(&env, &["writer"]);
    env.wait_for_rows(accepted.len() as i64, Duration::from_secs(30))
        .await;
    drop(writer);
    accepted.sort();
    env.assert_exactly(&accepted).await;
    env.assert_verifies().await;
    env.cleanup().await;
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = !c.is_ascii_alphanumeric() && c != '_';
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}
