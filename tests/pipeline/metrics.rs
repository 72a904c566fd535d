//! `/metrics` of every service after real traffic: the named series exist
//! and count what happened.

use std::time::Duration;

use auditline_shared::auth::Scope;
use serde_json::json;

use crate::helpers::{InProcessAdmin, InProcessIngest, InProcessWriter, TestEnv, http_get};

/// The value of the series whose line starts with `series` (name and labels).
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{metrics}"))
}

#[actix_web::test]
async fn every_service_exposes_its_named_series_with_the_right_values() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let ingest = InProcessIngest::start_with(env.settings.clone()).await;
    let admin = InProcessAdmin::start(&env).await;
    let token = env.token(&[Scope::Publish], Some("shop")).await;
    // 90 events: users u0..u2 (u0 the busiest), every 3rd one failed.
    let lines: Vec<String> = (0..90)
        .map(|i| {
            json!({
                "occurred_at": chrono::Utc::now().to_rfc3339(),
                "session_id": "s1",
                "user_id": format!("u{}", if i % 2 == 0 { 0 } else { i % 3 }),
                "action_type": if i % 2 == 0 { "file" } else { "auth" },
                "endpoint": format!("/files/{i}"),
                "route": "/files/{id}",
                "http_method": "GET",
                "status_code": if i % 3 == 0 { 500 } else { 200 },
                "success": i % 3 != 0,
                "response_time_ms": 20.0,
            })
            .to_string()
        })
        .collect();
    let (status, _, body) = ingest
        .post(
            Some(&token),
            "application/x-ndjson",
            lines.join("\n").as_bytes(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    env.wait_for_rows(90, Duration::from_secs(30)).await;

    let (_, metrics) = http_get(ingest.port, "/metrics").await;
    assert_eq!(
        value(&metrics, "auditline_ingest_events_accepted_total"),
        90.0
    );
    assert!(
        value(
            &metrics,
            "auditline_publisher_messages_confirmed_total{publisher=\"auditline-ingest\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(
            &metrics,
            "auditline_publisher_messages_nacked_total{publisher=\"auditline-ingest\"}"
        ),
        0.0
    );

    let (_, metrics) = http_get(writer.port, "/metrics").await;
    assert_eq!(value(&metrics, "auditline_writer_rows_written_total"), 90.0);
    assert_eq!(
        value(
            &metrics,
            "auditline_audit_actions_total{action_type=\"file\"}"
        ),
        45.0
    );
    assert_eq!(
        value(
            &metrics,
            "auditline_audit_failures_total{action_type=\"file\"}"
        ),
        15.0
    );
    assert_eq!(
        value(
            &metrics,
            "auditline_audit_failures_total{action_type=\"auth\"}"
        ),
        15.0
    );
    assert_eq!(
        value(&metrics, "auditline_audit_user_actions_hour{user=\"u0\"}"),
        45.0 + 15.0
    );
    assert_eq!(
        value(
            &metrics,
            "auditline_audit_response_time_seconds_count{method=\"GET\",route=\"/files/{id}\"}"
        ),
        90.0
    );
    assert_eq!(value(&metrics, "auditline_writer_live_events_total"), 90.0);
    // The queue-depth gauge is polled; the queue is drained.
    assert!(
        crate::helpers::wait_until(Duration::from_secs(15), || async {
            let (_, m) = http_get(writer.port, "/metrics").await;
            m.lines().any(|l| l == "auditline_writer_queue_messages 0")
        })
        .await,
        "consumer lag is reported"
    );

    let (_, metrics) = http_get(admin.port, "/metrics").await;
    assert_eq!(value(&metrics, "auditline_stream_clients"), 0.0);
    assert!(value(&metrics, "auditline_stream_events_received_total") >= 90.0);
    assert!(metrics.contains("auditline_export_jobs{state=\"queued\"}"));
    admin.stop().await;
    ingest.stop().await;
    writer.stop().await;
    env.cleanup().await;
}
