//! Fault drills that restart the shared PostgreSQL or RabbitMQ server. They
//! run in their own test binary, one at a time (cargo runs test binaries one
//! after another, so no other suite is running meanwhile). Each ends with the
//! exactly-once check over everything that was confirmed, and `verify`.

#[allow(dead_code)]
#[path = "../pipeline/helpers.rs"]
mod helpers;

use helpers::{Process, TestEnv, events};
use std::{collections::HashSet, time::Duration};
use uuid::Uuid;

/// One drill at a time: each restarts a server every test depends on.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a command as root (directly, or through sudo).
async fn as_root(program: &str, args: &[&str]) {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let mut command = if root {
        tokio::process::Command::new(program)
    } else {
        let mut sudo = tokio::process::Command::new("sudo");
        sudo.arg(program);
        sudo
    };
    let status = command.args(args).status().await.expect(program);
    assert!(status.success(), "{program} {args:?} failed");
}

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Publishes 30 chunks of 1,000 events with pauses; returns the confirmed
/// ids and every id that was sent (confirmed or not).
fn stream(env: &TestEnv) -> tokio::task::JoinHandle<(Vec<Uuid>, HashSet<Uuid>)> {
    let settings = env.settings.clone();
    tokio::spawn(async move {
        let publisher = auditline_client::Publisher::connect(&settings.client(), "drill")
            .await
            .expect("publisher");
        let mut confirmed = Vec::new();
        let mut sent = HashSet::new();
        for _ in 0..30 {
            let chunk = events(1_000);
            sent.extend(chunk.iter().map(|e| e.event_id));
            match publisher.publish_batch(&chunk).await {
                Ok(ids) => confirmed.extend(ids),
                Err(e) => eprintln!("a chunk was not confirmed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        (confirmed, sent)
    })
}

/// Everything confirmed is stored once; nothing stored was never sent.
async fn check(env: &TestEnv, mut confirmed: Vec<Uuid>, sent: &HashSet<Uuid>) {
    assert!(
        confirmed.len() >= 25_000,
        "the publisher rode out the restart ({} confirmed)",
        confirmed.len()
    );
    env.wait_for_rows(confirmed.len() as i64, Duration::from_secs(180))
        .await;
    confirmed.sort();
    env.assert_exactly(&confirmed).await;
    let (rows, distinct) = env.count().await;
    assert_eq!(rows, distinct, "no event stored twice");
    let stored: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM auditline.events")
        .fetch_all(&env.pool)
        .await
        .expect("ids");
    assert!(stored.iter().all(|id| sent.contains(id)));
    env.assert_verifies().await;
}

/// Streams events to a writer, runs `restart` once they flow, then checks
/// the outcome.
async fn restart_while_streaming<F, Fut>(restart: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let writer = Process::spawn(&env, &["writer"]);
    let publishing = stream(&env);
    let flowing = helpers::wait_until(Duration::from_secs(60), || async {
        env.count().await.0 >= 3_000
    })
    .await;
    assert!(flowing, "events were flowing before the restart");
    restart().await;
    let (confirmed, sent) = publishing.await.expect("publisher task");
    check(&env, confirmed, &sent).await;
    drop(writer);
    env.cleanup().await;
}

#[actix_web::test]
async fn a_broker_restart_while_publishing_loses_and_duplicates_nothing() {
    restart_while_streaming(|| async {
        as_root("rabbitmqctl", &["-q", "stop_app"]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        as_root("rabbitmqctl", &["-q", "start_app"]).await;
        as_root("rabbitmqctl", &["-q", "await_startup"]).await;
    })
    .await;
}

#[actix_web::test]
async fn a_database_restart_while_writing_loses_and_duplicates_nothing() {
    restart_while_streaming(|| async {
        let version = std::fs::read_dir("/etc/postgresql")
            .expect("/etc/postgresql")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
            .expect("a PostgreSQL cluster");
        as_root(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &version, "main", "restart"],
        )
        .await;
        let up = helpers::wait_until(Duration::from_secs(60), || port_open(5432)).await;
        assert!(up, "PostgreSQL came back");
    })
    .await;
}
