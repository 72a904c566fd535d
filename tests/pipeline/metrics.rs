//! `/metrics` of every service after real traffic: the named series exist
//! and count what happened.

use std::time::Duration;

use auditline_shared::auth::Scope;
use serde_json::json;

use crate::helpers::{
    InProcessAdmin, InProcessIngest, InProcessWriter, TestEnv, http_get, metric as value,
};

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
        value(
            &metrics,
            "auditline_audit_top_user_actions_hour{rank=\"1\"}"
        ),
        45.0 + 15.0
    );
    assert_eq!(value(&metrics, "auditline_audit_active_users_hour"), 3.0);
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

#[actix_web::test]
async fn no_service_exposes_a_user_id_on_metrics() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let ingest = InProcessIngest::start_with(env.settings.clone()).await;
    let admin = InProcessAdmin::start(&env).await;
    let user = "alice@example.com";
    let token = env.token(&[Scope::Publish], Some("shop")).await;
    let lines: Vec<String> = (0..20)
        .map(|i| {
            json!({
                "occurred_at": chrono::Utc::now().to_rfc3339(),
                "session_id": "s1", "user_id": user, "action_type": "file",
                "endpoint": format!("/files/{i}"), "route": "/files/{id}",
                "http_method": "GET", "status_code": 200, "success": true,
                "response_time_ms": 3.0,
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
    // An admin whose token is named after her: her requests are admin events.
    let read = env.named_token(user, &[Scope::Read]).await;
    let (status, _) = admin
        .get_json(Some(&read), "/admin/audit/logs?user_id=alice%40example.com")
        .await;
    assert_eq!(status, 200);
    env.wait_for_rows(21, Duration::from_secs(30)).await;
    env.wait_rollups().await;

    for (service, port) in [
        ("writer", writer.port),
        ("ingest", ingest.port),
        ("admin", admin.port),
    ] {
        let (status, metrics) = http_get(port, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            !metrics.contains(user) && !metrics.contains("alice"),
            "the {service}'s /metrics names the user:\n{metrics}"
        );
    }
    let (_, metrics) = http_get(writer.port, "/metrics").await;
    assert_eq!(value(&metrics, "auditline_writer_rows_written_total"), 21.0);
    // Her 20 events and her one admin request.
    assert_eq!(
        value(
            &metrics,
            "auditline_audit_top_user_actions_hour{rank=\"1\"}"
        ),
        21.0
    );
    // Who the top users are stays in the admin API, behind a token.
    let (status, body) = admin.get_json(Some(&read), "/admin/audit/users").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains(user), "{body}");
    let (status, body) = admin.get_json(Some(&read), "/admin/audit/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains(user), "{body}");
    admin.stop().await;
    ingest.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

/// Runs a command; panics with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program} ({e}); deploy/scripts/test.sh installs Debian's prometheus"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{program} {args:?}:\n{text}");
    text
}

#[test]
fn the_shipped_prometheus_config_and_alert_rules_pass_promtool() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = run(
        "promtool",
        &[
            "check",
            "config",
            &format!("{root}/deploy/prometheus/prometheus.yml"),
        ],
    );
    assert!(text.contains("SUCCESS"), "{text}");
    let text = run(
        "promtool",
        &[
            "check",
            "rules",
            &format!("{root}/deploy/prometheus/alerts.yml"),
        ],
    );
    assert!(text.contains("10 rules found"), "{text}");
    // Every metric the rules and the dashboard name is one the services export.
    let exported = [
        include_str!("../../writer/src/metrics.rs"),
        include_str!("../../writer/src/audit_metrics.rs"),
        include_str!("../../ingest/src/gateway.rs"),
        include_str!("../../client/src/publisher.rs"),
        include_str!("../../admin-api/src/workers/live.rs"),
        include_str!("../../admin-api/src/workers/jobs.rs"),
        include_str!("../../integrity/src/checkpointer.rs"),
    ]
    .concat();
    let assets = [
        include_str!("../../deploy/prometheus/alerts.yml"),
        include_str!("../../deploy/grafana/auditline-dashboard.json"),
    ]
    .concat();
    let mut named = 0;
    for word in assets.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(base) = word.strip_prefix("auditline_") {
            let base = base
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(
                exported.contains(&format!("\"auditline_{base}\"")),
                "auditline_{base} is used by a deploy asset but no service exports it"
            );
            named += 1;
        }
    }
    assert!(named > 10);
}

#[actix_web::test]
async fn the_rabbitmq_definitions_match_the_topology_the_services_declare() {
    let env = TestEnv::new().await;
    let ns = &env.settings.namespace;
    let connection = auditline_shared::amqp::connect(&env.settings.amqp_url, "test-defs")
        .await
        .expect("amqp");
    let channel = connection.create_channel().await.expect("channel");
    auditline_shared::amqp::Topology::new(ns)
        .declare(&channel)
        .await
        .expect("declared");
    let definitions: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/rabbitmq/definitions.json")).expect("JSON");
    // Declaring an existing queue with other arguments is refused by the
    // broker: each declare below passes only if the file says what the code does.
    for queue in definitions["queues"].as_array().expect("queues") {
        let name = queue["name"]
            .as_str()
            .expect("name")
            .replacen("auditline", ns, 1);
        let mut args = lapin::types::FieldTable::default();
        for (key, value) in queue["arguments"].as_object().expect("arguments") {
            let value = match value {
                serde_json::Value::String(s) => {
                    lapin::types::AMQPValue::LongString(s.replacen("auditline", ns, 1).into())
                }
                serde_json::Value::Number(n) => {
                    lapin::types::AMQPValue::LongLongInt(n.as_i64().expect("integer"))
                }
                other => panic!("unexpected argument {other}"),
            };
            args.insert(key.as_str().into(), value);
        }
        channel
            .queue_declare(
                name.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: the definitions differ from the topology: {e}"));
    }
    assert_eq!(definitions["exchanges"].as_array().map(Vec::len), Some(3));
    env.cleanup().await;
}

#[actix_web::test]
async fn a_real_prometheus_scrapes_the_services_and_answers_an_audit_query() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let ingest = InProcessIngest::start_with(env.settings.clone()).await;
    let admin = InProcessAdmin::start(&env).await;
    let dir = std::env::temp_dir().join(format!("auditline-prom-{}", env.id));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n\
         - job_name: auditline-ingest\n  static_configs: [{{targets: ['127.0.0.1:{}']}}]\n\
         - job_name: auditline-writer\n  static_configs: [{{targets: ['127.0.0.1:{}']}}]\n\
         - job_name: auditline-admin\n  static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
        ingest.port, writer.port, admin.port
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("config");
    let port = crate::helpers::free_port();
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (deploy/scripts/test.sh installs Debian's package)");

    let token = env.token(&[Scope::Publish], Some("shop")).await;
    let lines: Vec<String> = (0..30)
        .map(|i| {
            json!({
                "occurred_at": chrono::Utc::now().to_rfc3339(),
                "session_id": "s", "user_id": "u", "action_type": "code_exec",
                "endpoint": format!("/run/{i}"), "http_method": "POST",
                "status_code": 200, "success": true,
            })
            .to_string()
        })
        .collect();
    let (status, _, _) = ingest
        .post(
            Some(&token),
            "application/x-ndjson",
            lines.join("\n").as_bytes(),
        )
        .await;
    assert_eq!(status, 202);
    env.wait_for_rows(30, Duration::from_secs(30)).await;

    let query =
        "/api/v1/query?query=auditline_audit_actions_total%7Baction_type%3D%22code_exec%22%7D";
    let seen = crate::helpers::wait_until(Duration::from_secs(60), || async {
        let (_, body) = http_get(port, query).await;
        serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|json| json["data"]["result"][0]["value"][1].as_str() == Some("30"))
    })
    .await;
    let (_, targets) = http_get(port, "/api/v1/targets").await;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        seen,
        "Prometheus did not report 30 code_exec actions; its targets: {targets}"
    );
    for job in ["auditline-ingest", "auditline-writer", "auditline-admin"] {
        assert!(targets.contains(job), "{job} not scraped: {targets}");
    }
    assert!(!targets.contains("\"health\":\"down\""), "{targets}");
    admin.stop().await;
    ingest.stop().await;
    writer.stop().await;
    env.cleanup().await;
}
