use crate::helpers::{
    ADMIN_URL, InProcessWriter, Process, Proxy, TestEnv, events, http_get, wait_until,
};
use auditline_client::Publisher;
use auditline_shared::settings::SecretUrl;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// Publishes `chunks` batches of 1,000 events, pausing between them so the
/// stream lasts a while; returns the ids of every confirmed event.
fn publish_stream(
    publisher: Publisher,
    chunks: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<Vec<Uuid>> {
    tokio::spawn(async move {
        let mut confirmed = Vec::new();
        for _ in 0..chunks {
            let chunk = events(1_000);
            publisher
                .publish_batch(&chunk)
                .await
                .expect("publish confirmed");
            confirmed.extend(chunk.iter().map(|e| e.event_id));
            tokio::time::sleep(pause).await;
        }
        confirmed
    })
}

#[actix_web::test]
async fn a_writer_killed_mid_stream_loses_and_duplicates_nothing() {
    let env = TestEnv::new().await;
    let mut writer = Process::spawn(&env, &["writer"]);
    let stream = publish_stream(env.publisher().await, 30, Duration::from_millis(100));
    let flowing = wait_until(Duration::from_secs(60), || async {
        env.count().await.0 >= 5_000
    })
    .await;
    assert!(flowing, "the writer did not start storing events");
    writer.signal("KILL");
    assert_eq!(
        writer.wait(Duration::from_secs(10)).await,
        None,
        "killed by SIGKILL"
    );
    let stored_at_kill = env.count().await.0;

    let mut writer = Process::spawn(&env, &["writer"]);
    let mut confirmed = stream.await.expect("publisher task");
    assert!(
        stored_at_kill < confirmed.len() as i64,
        "the kill happened before the stream ended"
    );
    env.wait_for_rows(confirmed.len() as i64, Duration::from_secs(120))
        .await;
    confirmed.sort();
    env.assert_exactly(&confirmed).await;

    // SIGTERM: flush, ack and exit cleanly.
    env.publisher()
        .await
        .publish_batch(&events(2_000))
        .await
        .expect("confirmed");
    writer.signal("TERM");
    assert_eq!(
        writer.wait(Duration::from_secs(30)).await,
        Some(0),
        "clean exit on SIGTERM"
    );
    let mut writer = Process::spawn(&env, &["writer"]);
    env.wait_for_rows(confirmed.len() as i64 + 2_000, Duration::from_secs(60))
        .await;
    env.publisher()
        .await
        .publish_batch(&events(1_000))
        .await
        .expect("confirmed");
    env.wait_for_rows(confirmed.len() as i64 + 3_000, Duration::from_secs(60))
        .await;
    writer.signal("TERM");
    assert_eq!(writer.wait(Duration::from_secs(30)).await, Some(0));
    env.assert_verifies().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn the_writer_rides_out_a_database_refusing_connections() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let stream = publish_stream(env.publisher().await, 30, Duration::from_millis(200));
    let flowing = wait_until(Duration::from_secs(60), || async {
        env.count().await.0 >= 3_000
    })
    .await;
    assert!(flowing, "the writer did not start storing events");

    let admin = PgPool::connect(ADMIN_URL).await.expect("admin connection");
    let set_allowed = |allowed: bool| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allowed}",
            env.db_name
        )))
    };
    set_allowed(false)
        .execute(&admin)
        .await
        .expect("refuse connections");
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&env.db_name)
    .fetch_all(&admin)
    .await
    .expect("terminate");
    assert!(!terminated.is_empty(), "the writer had connections to cut");
    tokio::time::sleep(Duration::from_secs(3)).await;
    set_allowed(true)
        .execute(&admin)
        .await
        .expect("accept connections again");

    let mut confirmed = stream.await.expect("publisher task");
    env.wait_for_rows(confirmed.len() as i64, Duration::from_secs(120))
        .await;
    confirmed.sort();
    env.assert_exactly(&confirmed).await;
    let (_, metrics) = http_get(writer.port, "/metrics").await;
    let retried = metrics.lines().any(|l| {
        l.starts_with("auditline_writer_retries_total{stage=\"database\"}") && !l.ends_with(" 0")
    });
    assert!(retried, "the outage was felt and retried:\n{metrics}");
    writer.stop().await;
    admin.close().await;
    env.assert_verifies().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn broker_connections_cut_mid_stream_lose_and_duplicate_nothing() {
    let env = TestEnv::new().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut through_proxy = env.settings.clone();
    through_proxy.amqp_url =
        SecretUrl::new(format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port));
    let writer = InProcessWriter::start_with(through_proxy.clone()).await;
    let publisher = auditline_client::Publisher::connect(&through_proxy.client(), "test-publisher")
        .await
        .expect("publisher connects through the proxy");
    let stream = publish_stream(publisher, 25, Duration::from_millis(150));
    let flowing = wait_until(Duration::from_secs(60), || async {
        env.count().await.0 >= 2_000
    })
    .await;
    assert!(flowing, "the writer did not start storing events");

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.set_up(false);
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_up(true);

    let mut confirmed = stream
        .await
        .expect("every publish confirmed despite the cuts");
    env.wait_for_rows(confirmed.len() as i64, Duration::from_secs(120))
        .await;
    confirmed.sort();
    env.assert_exactly(&confirmed).await;
    let ready = wait_until(Duration::from_secs(30), || async {
        http_get(writer.port, "/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "both pipelines reconnected");
    writer.stop().await;
    env.assert_verifies().await;
    env.cleanup().await;
}
