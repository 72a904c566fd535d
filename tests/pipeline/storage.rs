use crate::helpers::{InProcessWriter, TestEnv, event_at, events, http_get};
use chrono::{Days, Duration as ChronoDuration, Utc};
use std::time::Duration;

#[actix_web::test]
async fn fifty_thousand_events_land_once_and_a_republish_adds_nothing() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let publisher = env.publisher().await;
    let batch = events(45_000);
    publisher
        .publish_batch(&batch)
        .await
        .expect("batch publish confirmed");
    let singles = events(5_000);
    publisher
        .publish_each(&singles)
        .await
        .expect("single publishes confirmed");
    env.wait_for_rows(50_000, Duration::from_secs(120)).await;

    // The same events again, as a redelivery or a publisher retry would send them.
    publisher
        .publish_batch(&batch)
        .await
        .expect("republish confirmed");
    publisher
        .publish_each(&singles)
        .await
        .expect("republish confirmed");
    let processed = crate::helpers::wait_until(Duration::from_secs(120), || async {
        env.processed().await >= 100_000
    })
    .await;
    assert!(
        processed,
        "the writer did not process the republished events"
    );
    let (n, distinct) = env.count().await;
    assert_eq!(
        (n, distinct),
        (50_000, 50_000),
        "a republished event added a row"
    );
    let mut ids: Vec<_> = batch.iter().chain(&singles).map(|e| e.event_id).collect();
    ids.sort();
    env.assert_exactly(&ids).await;

    let (status, metrics) = http_get(writer.port, "/metrics").await;
    assert_eq!(status, 200);
    let dups: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("auditline_writer_duplicates_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("duplicates metric");
    assert_eq!(
        dups, 50_000.0,
        "every republished event is counted as absorbed"
    );
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn the_writer_holds_a_bounded_number_of_parsed_events_whatever_the_message_size() {
    // Four batches of 50 events, plus one message, a pipeline.
    held_events_stay_bounded(50, 8 << 20, 2.0 * (4.0 * 50.0 + 500.0)).await;
}

#[actix_web::test]
async fn the_writer_holds_a_bounded_number_of_parsed_bytes_whatever_the_message_size() {
    // Four batches of 20 kB (events of 200 bytes at least), plus one
    // message, a pipeline.
    held_events_stay_bounded(5_000, 20_000, 2.0 * (4.0 * 20_000.0 / 200.0 + 500.0)).await;
}

/// 40 messages of 500 events wait in the queue before the writer starts: the
/// prefetch (500 messages) would let it parse all 20,000 at once.
async fn held_events_stay_bounded(max_events: usize, max_bytes: usize, bound: f64) {
    let env = TestEnv::new().await;
    let publisher = env.publisher().await;
    let batch = events(20_000);
    publisher
        .publish_batch_of(&batch, 500)
        .await
        .expect("batch publish confirmed");
    let mut settings = env.settings.clone();
    settings.writer.batch.max_events = max_events;
    settings.writer.batch.max_bytes = max_bytes;
    settings.writer.consumers = 2;
    let writer = InProcessWriter::start_with(settings).await;
    let mut most: f64 = 0.0;
    let mut samples = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, metrics) = http_get(writer.port, "/metrics").await;
        assert_eq!(status, 200);
        let held = crate::helpers::metric(&metrics, "auditline_writer_events_held");
        most = most.max(held);
        samples += 1;
        if env.count().await.0 == 20_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer did not store the 20,000 events in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        most <= bound,
        "the writer held {most} parsed events at once (bound {bound})"
    );
    assert!(
        most >= 500.0 && samples > 5,
        "the gauge never showed the work ({most} at most over {samples} samples)"
    );
    let mut ids: Vec<_> = batch.iter().map(|e| e.event_id).collect();
    ids.sort();
    env.assert_exactly(&ids).await;
    let settled = crate::helpers::wait_until(Duration::from_secs(10), || async {
        let (_, metrics) = http_get(writer.port, "/metrics").await;
        crate::helpers::metric(&metrics, "auditline_writer_events_held") == 0.0
    })
    .await;
    assert!(settled, "events still counted as held once all are written");
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn zstd_batches_are_stored_and_undecodable_ones_dead_lettered_as_they_came() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let good = events(30);
    let packed = auditline_shared::amqp::compress(&auditline_shared::event::to_ndjson(&good))
        .expect("compressed");
    let garbage = b"\x28\xb5\x2f\xfd but not really zstd".to_vec();
    env.publish_encoded(&[
        ("application/x-ndjson", Some("zstd"), packed),
        ("application/x-ndjson", Some("zstd"), garbage.clone()),
        ("application/x-ndjson", Some("br"), b"{}".to_vec()),
    ])
    .await;
    env.wait_for_rows(30, Duration::from_secs(30)).await;
    let mut ids: Vec<_> = good.iter().map(|e| e.event_id).collect();
    ids.sort();
    env.assert_exactly(&ids).await;
    let dead = env.wait_dead_letters(2).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let reasons: Vec<String> = dead.iter().filter_map(|(_, r)| r.clone()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("cannot decode the zstd body")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unsupported content encoding \"br\"")),
        "{reasons:?}"
    );
    assert!(
        dead.iter().any(|(body, _)| *body == garbage),
        "the undecodable body is kept as it arrived"
    );
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn malformed_messages_go_to_dead_letters_with_a_reason_and_valid_ones_are_stored() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let good: Vec<_> = events(5);
    let json_of = |e: &auditline_shared::AuditEvent| e.to_json();
    let mut missing_session = serde_json::to_value(&good[0]).expect("json");
    missing_session
        .as_object_mut()
        .map(|o| o.remove("session_id"));
    let mut ndjson = json_of(&good[2]);
    ndjson.push(b'\n');
    ndjson.extend_from_slice(br#"{"occurred_at": "not a time"}"#);
    ndjson.push(b'\n');
    ndjson.extend(json_of(&good[3]));
    env.publish_raw(&[
        ("application/json", json_of(&good[1])),
        ("application/json", b"this is not json".to_vec()),
        (
            "application/json",
            serde_json::to_vec(&missing_session).expect("json"),
        ),
        ("application/x-ndjson", ndjson),
        ("text/plain", b"hello".to_vec()),
        ("application/json", json_of(&good[4])),
    ])
    .await;
    env.wait_for_rows(4, Duration::from_secs(30)).await;
    let mut ids: Vec<_> = [1, 2, 3, 4].iter().map(|&i| good[i].event_id).collect();
    ids.sort();
    env.assert_exactly(&ids).await;

    let dead = env.wait_dead_letters(4).await;
    assert_eq!(
        dead.len(),
        4,
        "every unusable message or line is dead-lettered: {dead:?}"
    );
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, r)| r.clone().expect("reason header"))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("malformed JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("session_id")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("line 2") && r.contains("occurred_at")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unsupported content type")),
        "{reasons:?}"
    );
    assert!(
        dead.iter().any(|(body, _)| body == b"this is not json"),
        "the original body is kept"
    );
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn old_events_get_their_own_partition_and_the_runway_exists() {
    let env = TestEnv::new().await;
    let today = Utc::now().date_naive();
    for offset in 0..=7 {
        let day = today + Days::new(offset);
        let name = format!("auditline.events_{}", day.format("%Y%m%d"));
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(&name)
            .fetch_one(&env.pool)
            .await
            .expect("query");
        assert!(exists.is_some(), "partition {name} missing after migrate");
    }
    let writer = InProcessWriter::start(&env).await;
    let old_at = Utc::now() - ChronoDuration::days(400);
    let old: Vec<_> = (0..10).map(|i| event_at("backfill", old_at, i)).collect();
    let publisher = env.publisher().await;
    publisher.publish_batch(&old).await.expect("confirmed");
    publisher
        .publish_batch(&events(10))
        .await
        .expect("confirmed");
    env.wait_for_rows(20, Duration::from_secs(30)).await;
    let partition = format!("auditline.events_{}", old_at.date_naive().format("%Y%m%d"));
    let in_partition: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {partition}"
    )))
    .fetch_one(&env.pool)
    .await
    .expect("the old day's partition exists");
    assert_eq!(in_partition, 10);
    let (status, body) = http_get(writer.port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("auditline_partitions_ahead_days 7"),
        "runway metric: {body}"
    );
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn stored_events_cannot_be_updated_deleted_or_truncated() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    env.publisher()
        .await
        .publish_batch(&events(3))
        .await
        .expect("confirmed");
    env.wait_for_rows(3, Duration::from_secs(30)).await;
    writer.stop().await;
    let partition = format!(
        "auditline.events_{}",
        Utc::now().date_naive().format("%Y%m%d")
    );
    let statements = [
        "UPDATE auditline.events SET user_id = 'mallory'".to_owned(),
        "DELETE FROM auditline.events".to_owned(),
        "DELETE FROM auditline.events WHERE false".to_owned(),
        "TRUNCATE auditline.events".to_owned(),
        format!("UPDATE {partition} SET success = NOT success"),
        format!("DELETE FROM {partition}"),
        format!("TRUNCATE {partition}"),
        "UPDATE auditline.batches SET event_count = 0".to_owned(),
    ];
    for statement in statements {
        let err = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&env.pool)
            .await
            .expect_err(&format!("{statement} must be refused"));
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    assert_eq!(env.count().await, (3, 3));
    env.cleanup().await;
}

#[actix_web::test]
async fn text_and_json_values_are_stored_exactly_as_published() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let json = serde_json::json!({
        "occurred_at": Utc::now().to_rfc3339(),
        "service": "tricky",
        "session_id": "back\\slash",
        "user_id": "Zoë \"quoted\" O'Brien",
        "client_ip": "2001:db8::1",
        "action_type": "data.export",
        "endpoint": "/search?q=a%09b&x=\\N",
        "http_method": "POST",
        "response_time_ms": 0.125,
        "request_size": 9_007_199_254_740_993_u64,
        "success": true,
        "metadata": {"tab": "a\tb", "newline": "a\nb", "backslash": "\\N", "emoji": "🦀", "nested": {"list": [1, null, true]}},
        "resource_usage": {"cpu_ms": 12, "quota_units": 0.5}
    });
    let event = auditline_shared::AuditEvent::parse(json.to_string().as_bytes()).expect("valid");
    env.publisher()
        .await
        .publish(&event)
        .await
        .expect("confirmed");
    env.wait_for_rows(1, Duration::from_secs(30)).await;
    let row: (String, String, String, String, String, i64, f64, serde_json::Value, serde_json::Value) = sqlx::query_as(
        "SELECT session_id, user_id, host(client_ip), action_type, endpoint, request_size, response_time_ms, metadata, resource_usage \
         FROM auditline.events",
    )
    .fetch_one(&env.pool)
    .await
    .expect("row");
    assert_eq!(row.0, "back\\slash");
    assert_eq!(row.1, "Zoë \"quoted\" O'Brien");
    assert_eq!(row.2, "2001:db8::1");
    assert_eq!(row.3, "data.export");
    assert_eq!(row.4, "/search?q=a%09b&x=\\N");
    assert_eq!(row.5, 9_007_199_254_740_993);
    assert_eq!(row.6, 0.125);
    assert_eq!(row.7, json["metadata"]);
    assert_eq!(row.8, json["resource_usage"]);
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn an_unroutable_publish_is_an_error_not_a_success() {
    let env = TestEnv::new().await;
    let publisher = env.publisher().await;
    // Without the writer queue nothing receives `<ns>.events`.
    let conn = auditline_shared::amqp::connect(&env.settings.amqp_url, "test-admin")
        .await
        .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .queue_delete(
            format!("{}.writer", env.settings.namespace).as_str().into(),
            Default::default(),
        )
        .await
        .expect("queue deleted");
    let err = publisher
        .publish(&events(1)[0])
        .await
        .expect_err("nobody can receive it");
    assert!(
        matches!(err, auditline_client::PublishError::Unroutable(_)),
        "{err}"
    );
    let err = publisher
        .publish_batch(&events(250))
        .await
        .expect_err("nobody can receive it");
    assert!(
        matches!(err, auditline_client::PublishError::Unroutable(_)),
        "{err}"
    );
    env.cleanup().await;
}

#[actix_web::test]
async fn events_older_than_the_accepted_window_are_dead_lettered_and_create_no_partition() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let good = events(2);
    let mut old = events(3);
    let days = [
        "1980-01-01T00:00:00Z",
        "1999-06-15T12:00:00Z",
        "2001-09-09T01:46:40Z",
    ];
    for (event, day) in old.iter_mut().zip(days) {
        event.occurred_at = day.parse().expect("time");
    }
    let mut ndjson = auditline_shared::event::to_ndjson(&old[1..]);
    ndjson.extend(good[1].to_json());
    env.publish_raw(&[
        ("application/json", good[0].to_json()),
        ("application/json", old[0].to_json()),
        ("application/x-ndjson", ndjson),
    ])
    .await;
    env.wait_for_rows(2, Duration::from_secs(30)).await;
    let dead = env.wait_dead_letters(3).await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, r)| r.clone().expect("reason header"))
        .collect();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("occurred_at") && r.contains("accepted window")),
        "{reasons:?}"
    );
    let mut ids: Vec<_> = good.iter().map(|e| e.event_id).collect();
    ids.sort();
    env.assert_exactly(&ids).await;
    let ancient: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'auditline' \
         AND tablename ~ '^events_(19|200)'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("partitions");
    assert_eq!(ancient, 0, "no partition was created for the old days");
    writer.stop().await;
    env.cleanup().await;
}

/// One publisher cannot make the writer create partitions without limit:
/// past `partitions.max_created_per_hour` new days, those days' events are
/// dead-lettered with the reason, and everything else is stored.
#[actix_web::test]
async fn on_demand_partitions_are_capped_per_hour() {
    let mut env = TestEnv::new().await;
    env.settings.partitions.max_created_per_hour = 3;
    let writer = InProcessWriter::start(&env).await;
    let now = Utc::now();
    let mut all = events(2);
    // Six distinct days well before the runway, two events each.
    for back in 10..16 {
        for i in 0..2 {
            let mut event =
                crate::helpers::event_at("tests", now - chrono::Duration::days(back), i);
            event.occurred_at = now - chrono::Duration::days(back);
            all.push(event);
        }
    }
    env.publish_raw(&[(
        "application/x-ndjson",
        auditline_shared::event::to_ndjson(&all),
    )])
    .await;
    // Today's two events and three days' worth are stored.
    env.wait_for_rows(2 + 3 * 2, Duration::from_secs(30)).await;
    let dead = env.wait_dead_letters(1).await;
    let reasons: Vec<String> = dead.iter().filter_map(|(_, r)| r.clone()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("capped") && r.contains("max_created_per_hour")),
        "{reasons:?}"
    );
    let dead_events: usize = dead
        .iter()
        .map(|(body, _)| {
            body.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
        })
        .sum();
    assert_eq!(
        dead_events,
        3 * 2,
        "the capped days' events are all in the dead letter"
    );
    let created: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT occurred_at::date) FROM auditline.events WHERE occurred_at < now() - interval '9 days'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("days");
    assert_eq!(created, 3);
    // A message whose every event is on a refused day stores nothing: its
    // events are dead-lettered, and no empty batch (nor seal) is written.
    let batches_before: i64 = sqlx::query_scalar("SELECT count(*) FROM auditline.batches")
        .fetch_one(&env.pool)
        .await
        .expect("batches");
    let only_refused: Vec<_> = (20..22)
        .map(|back| {
            let mut event =
                crate::helpers::event_at("tests", now - chrono::Duration::days(back), 0);
            event.occurred_at = now - chrono::Duration::days(back);
            event
        })
        .collect();
    env.publish_raw(&[(
        "application/x-ndjson",
        auditline_shared::event::to_ndjson(&only_refused),
    )])
    .await;
    let dead = env.wait_dead_letters(1).await;
    assert_eq!(dead.len(), 1, "the refused message's events, dead-lettered");
    // The ack follows the dead letter; give the writer a moment to finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (batches_after, empty): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE event_count = 0) FROM auditline.batches",
    )
    .fetch_one(&env.pool)
    .await
    .expect("batches");
    assert_eq!(empty, 0, "no empty batch row");
    assert_eq!(batches_after, batches_before, "nothing committed for it");
    writer.stop().await;
    env.cleanup().await;
}
