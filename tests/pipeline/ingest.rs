//! The HTTP ingest gateway: every refusal is a clear JSON error and publishes
//! nothing; an accepted request is stored with the token's service.

use crate::helpers::{InProcessIngest, InProcessWriter, Process, Proxy, TestEnv, wait_until};
use auditline_shared::auth::{self, Scope};
use chrono::Utc;
use serde_json::{Value, json};
use std::time::Duration;

fn event(n: usize) -> Value {
    json!({
        "occurred_at": Utc::now().to_rfc3339(),
        "session_id": format!("s-{n}"),
        "user_id": format!("u-{}", n % 7),
        "action_type": "file",
        "endpoint": format!("/files/{n}"),
        "route": "/files/{id}",
        "http_method": "GET",
        "status_code": 200,
        "success": true
    })
}

fn ndjson(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .map(|e| e.to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

#[track_caller]
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[actix_web::test]
async fn every_refusal_is_a_json_error_and_publishes_nothing() {
    let env = TestEnv::new().await;
    let mut settings = env.settings.clone();
    settings.ingest.max_body_bytes = 64 * 1024;
    settings.ingest.max_events = 50;
    let gateway = InProcessIngest::start_with(settings).await;
    let publish = env.token(&[Scope::Publish], Some("billing")).await;
    let reader = env.token(&[Scope::Read], None).await;
    let revoked = env.token(&[Scope::Publish], Some("billing")).await;
    let revoked_id = revoked.split('_').nth(1).expect("id");
    assert!(auth::revoke(&env.pool, revoked_id).await.expect("revoke"));
    let (_, expired) = auth::create(
        &env.pool,
        auth::NewToken {
            name: "old".into(),
            scopes: vec![Scope::Publish],
            service: Some("billing".into()),
            expires_at: Some(Utc::now() - chrono::Duration::minutes(1)),
        },
    )
    .await
    .expect("token");
    let one = event(1).to_string().into_bytes();
    let json_type = "application/json";

    let (status, headers, body) = gateway.post(None, json_type, &one).await;
    assert_error(status, &body, 401, "unauthorized");
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "www-authenticate" && v == "Bearer")
    );
    let (status, _, body) = gateway
        .post(Some("alt_000000000000_nope"), json_type, &one)
        .await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, _, body) = gateway.post(Some("not-a-token"), json_type, &one).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, _, body) = gateway.post(Some(&revoked), json_type, &one).await;
    assert_error(status, &body, 401, "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("revoked"),
        "{body}"
    );
    let (status, _, body) = gateway.post(Some(&expired), json_type, &one).await;
    assert_error(status, &body, 401, "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("expired"),
        "{body}"
    );
    let (status, _, body) = gateway.post(Some(&reader), json_type, &one).await;
    assert_error(status, &body, 403, "forbidden");

    let (status, _, body) = gateway.post(Some(&publish), "text/plain", &one).await;
    assert_error(status, &body, 415, "unsupported_media_type");
    let big = vec![b' '; 65 * 1024];
    let (status, _, body) = gateway.post(Some(&publish), json_type, &big).await;
    assert_error(status, &body, 413, "body_too_large");
    let many: Vec<Value> = (0..51).map(event).collect();
    let (status, _, body) = gateway
        .post(Some(&publish), "application/x-ndjson", &ndjson(&many))
        .await;
    assert_error(status, &body, 413, "too_many_events");
    let (status, _, body) = gateway
        .post(Some(&publish), json_type, b"{\"occurred_at\": ")
        .await;
    assert_error(status, &body, 400, "malformed_json");
    let (status, _, body) = gateway.post(Some(&publish), json_type, b"42").await;
    assert_error(status, &body, 400, "malformed_json");
    let (status, _, body) = gateway.post(Some(&publish), json_type, b"[]").await;
    assert_error(status, &body, 400, "malformed_json");

    let mut bad = event(2);
    bad["status_code"] = json!(700);
    bad.as_object_mut().map(|o| o.remove("session_id"));
    let body_bytes = serde_json::to_vec(&json!([event(1), bad, event(3)])).expect("json");
    let (status, _, body) = gateway.post(Some(&publish), json_type, &body_bytes).await;
    assert_error(status, &body, 400, "invalid_events");
    let details = body["error"]["details"].as_array().expect("details");
    let fields: Vec<(u64, &str)> = details
        .iter()
        .map(|d| {
            (
                d["index"].as_u64().unwrap_or(99),
                d["field"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(fields.contains(&(1, "session_id")), "{body}");

    let mut other_service = event(4);
    other_service["service"] = json!("auth");
    let (status, _, body) = gateway
        .post(
            Some(&publish),
            json_type,
            other_service.to_string().as_bytes(),
        )
        .await;
    assert_error(status, &body, 400, "invalid_events");
    assert_eq!(body["error"]["details"][0]["field"], "service", "{body}");

    assert_eq!(
        env.queued().await,
        0,
        "a refused request published something"
    );
    gateway.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn a_thousand_line_post_with_one_bad_line_is_refused_whole() {
    let env = TestEnv::new().await;
    let gateway = InProcessIngest::start_with(env.settings.clone()).await;
    let token = env.token(&[Scope::Publish], Some("billing")).await;
    let mut events: Vec<Value> = (0..1_000).map(event).collect();
    events[637]["client_ip"] = json!("999.1.1.1");
    let (status, _, body) = gateway
        .post(Some(&token), "application/x-ndjson", &ndjson(&events))
        .await;
    assert_error(status, &body, 400, "invalid_events");
    let details = body["error"]["details"].as_array().expect("details");
    assert_eq!(details.len(), 1, "{body}");
    assert_eq!(details[0]["line"], 638);
    assert_eq!(details[0]["index"], 637);
    assert_eq!(details[0]["field"], "client_ip");
    assert_eq!(
        env.queued().await,
        0,
        "nothing of a refused batch is published"
    );
    gateway.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn accepted_events_are_stored_with_the_tokens_service() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let gateway = InProcessIngest::start_with(env.settings.clone()).await;
    let token = env.token(&[Scope::Publish], Some("billing")).await;
    let mut ids = Vec::new();
    let mut same_service = event(0);
    same_service["service"] = json!("billing");
    for (content_type, body) in [
        ("application/json", same_service.to_string().into_bytes()),
        (
            "application/json; charset=utf-8",
            serde_json::to_vec(&json!([event(1), event(2)])).expect("json"),
        ),
        (
            "application/x-ndjson",
            ndjson(&(3..503).map(event).collect::<Vec<_>>()),
        ),
    ] {
        let (status, _, body) = gateway.post(Some(&token), content_type, &body).await;
        assert_eq!(status, 202, "{body}");
        let event_ids = body["event_ids"].as_array().expect("ids");
        assert_eq!(body["accepted"].as_u64(), Some(event_ids.len() as u64));
        ids.extend(
            event_ids
                .iter()
                .filter_map(|v| v.as_str())
                .map(|s| s.parse::<uuid::Uuid>().expect("uuid")),
        );
    }
    assert_eq!(ids.len(), 503);
    env.wait_for_rows(503, Duration::from_secs(30)).await;
    ids.sort();
    env.assert_exactly(&ids).await;
    let services: Vec<String> = sqlx::query_scalar("SELECT DISTINCT service FROM auditline.events")
        .fetch_all(&env.pool)
        .await
        .expect("query");
    assert_eq!(services, vec!["billing".to_owned()]);
    gateway.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn without_a_spool_an_unreachable_broker_is_a_503_with_retry_after() {
    let env = TestEnv::new().await;
    let (proxy, mut settings) = crate::helpers::behind_proxy(&env).await;
    settings.ingest.spool_enabled = false;
    let gateway = InProcessIngest::start_with(settings).await;
    let token = env.token(&[Scope::Publish], Some("billing")).await;
    proxy.set_up(false);
    proxy.cut();
    let (status, headers, body) = gateway
        .post(
            Some(&token),
            "application/json",
            event(1).to_string().as_bytes(),
        )
        .await;
    assert_error(status, &body, 503, "unavailable");
    assert!(
        headers.iter().any(|(n, _)| n == "retry-after"),
        "{headers:?}"
    );
    let (ready, _) = crate::helpers::http_get(gateway.port, "/readyz").await;
    assert_eq!(ready, 503);
    proxy.set_up(true);
    let back = wait_until(Duration::from_secs(10), || async {
        crate::helpers::http_get(gateway.port, "/readyz").await.0 == 200
    })
    .await;
    assert!(back, "ready again once the broker is reachable");
    let (status, _, body) = gateway
        .post(
            Some(&token),
            "application/json",
            event(2).to_string().as_bytes(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["spooled"], false);
    gateway.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn while_the_broker_is_unreachable_posts_are_spooled_then_stored_exactly_once() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let (proxy, settings) = crate::helpers::behind_proxy(&env).await;
    let gateway = InProcessIngest::start_with(settings).await;
    let token = env.token(&[Scope::Publish], Some("billing")).await;
    proxy.set_up(false);
    proxy.cut();
    let mut ids = Vec::new();
    for round in 0..10 {
        let events: Vec<Value> = (round * 100..round * 100 + 100).map(event).collect();
        let (status, _, body) = gateway
            .post(Some(&token), "application/x-ndjson", &ndjson(&events))
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["spooled"], true, "{body}");
        ids.extend(
            body["event_ids"]
                .as_array()
                .expect("ids")
                .iter()
                .filter_map(|v| v.as_str())
                .map(|s| s.parse::<uuid::Uuid>().expect("uuid")),
        );
    }
    assert_eq!(
        env.count().await.0,
        0,
        "nothing reached storage while the broker was away"
    );
    proxy.set_up(true);
    env.wait_for_rows(1_000, Duration::from_secs(60)).await;
    ids.sort();
    env.assert_exactly(&ids).await;
    // The spool is empty again: new posts go straight to the broker.
    let drained = wait_until(Duration::from_secs(10), || async {
        let (_, _, body) = gateway
            .post(
                Some(&token),
                "application/json",
                event(5_000).to_string().as_bytes(),
            )
            .await;
        body["spooled"] == false
    })
    .await;
    assert!(drained, "the spool drained");
    gateway.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

/// During an outage, concurrent posts share fsyncs on the spool's own
/// thread instead of each taking a worker through the disk alone.
#[actix_web::test]
async fn posts_during_an_outage_share_fsyncs_and_are_stored_once() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let (proxy, settings) = crate::helpers::behind_proxy(&env).await;
    let gateway = InProcessIngest::start_with(settings).await;
    let token = env.token(&[Scope::Publish], Some("billing")).await;
    proxy.set_up(false);
    proxy.cut();
    // The first post finds the broker gone and spools; the rest follow at once.
    let first = ndjson(&(0..10).map(event).collect::<Vec<_>>());
    let (status, _, body) = gateway
        .post(Some(&token), "application/x-ndjson", &first)
        .await;
    assert_eq!((status, &body["spooled"]), (202, &json!(true)), "{body}");
    let posts = (1..100).map(|round| {
        let body = ndjson(&(round * 10..round * 10 + 10).map(event).collect::<Vec<_>>());
        let (gateway, token) = (&gateway, &token);
        async move {
            gateway
                .post(Some(token), "application/x-ndjson", &body)
                .await
        }
    });
    for (status, _, body) in futures_util::future::join_all(posts).await {
        assert_eq!((status, &body["spooled"]), (202, &json!(true)), "{body}");
    }
    let (_, metrics) = crate::helpers::http_get(gateway.port, "/metrics").await;
    let commits = crate::helpers::metric(&metrics, "auditline_ingest_spool_commits_total");
    assert_eq!(
        crate::helpers::metric(&metrics, "auditline_ingest_events_spooled_total"),
        1000.0
    );
    assert!(
        commits <= 50.0,
        "100 concurrent posts took {commits} fsyncs: they do not share them"
    );
    proxy.set_up(true);
    env.wait_for_rows(1_000, Duration::from_secs(60)).await;
    gateway.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

/// While the spool replays a large backlog, new posts are published straight
/// to the broker instead of queueing behind it on disk.
#[actix_web::test]
async fn new_posts_go_straight_to_the_broker_while_the_spool_replays() {
    let env = TestEnv::new().await;
    // A backlog a crashed gateway left: three segments of 40,000 events.
    let dir = std::path::Path::new(&env.settings.ingest.spool_dir);
    std::fs::create_dir_all(dir).expect("spool dir");
    let now = Utc::now();
    for segment in 1..=3 {
        let events: Vec<_> = (0..40_000)
            .map(|i| crate::helpers::event_at("billing", now, segment * 100_000 + i))
            .collect();
        std::fs::write(
            dir.join(format!("segment-{segment:012}.ndjson")),
            auditline_shared::event::to_ndjson(&events),
        )
        .expect("segment");
    }
    let token = env.token(&[Scope::Publish], Some("billing")).await;
    let gateway = InProcessIngest::start_with(env.settings.clone()).await;
    let (status, _, body) = gateway
        .post(
            Some(&token),
            "application/json",
            event(1).to_string().as_bytes(),
        )
        .await;
    let left = std::fs::read_dir(dir)
        .expect("spool dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
        .count();
    assert!(
        left > 0,
        "the backlog replayed before the post: make it larger"
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["spooled"], false,
        "a post during the replay waited behind it on disk: {body}"
    );
    gateway.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn a_full_spool_is_a_503_and_stores_nothing() {
    let env = TestEnv::new().await;
    let (proxy, mut settings) = crate::helpers::behind_proxy(&env).await;
    settings.ingest.spool_max_bytes = 2_000;
    let gateway = InProcessIngest::start_with(settings).await;
    let token = env.token(&[Scope::Publish], Some("billing")).await;
    proxy.set_up(false);
    proxy.cut();
    let (status, _, body) = gateway
        .post(
            Some(&token),
            "application/json",
            event(1).to_string().as_bytes(),
        )
        .await;
    assert_eq!(status, 202, "one small event fits: {body}");
    let events: Vec<Value> = (0..20).map(event).collect();
    let (status, headers, body) = gateway
        .post(Some(&token), "application/x-ndjson", &ndjson(&events))
        .await;
    assert_error(status, &body, 503, "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("spool is full"),
        "{body}"
    );
    assert!(headers.iter().any(|(n, _)| n == "retry-after"));
    gateway.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn a_gateway_killed_during_replay_still_stores_everything_exactly_once() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let token = env.token(&[Scope::Publish], Some("billing")).await;
    let port = crate::helpers::free_port();
    let listen = format!("127.0.0.1:{port}");
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let vars = [
        ("AUDITLINE_INGEST_LISTEN", listen.as_str()),
        ("AUDITLINE_AMQP_URL", amqp.as_str()),
        ("AUDITLINE_INGEST__PUBLISH_TIMEOUT_MS", "300"),
        ("AUDITLINE_PUBLISHER__EVENTS_PER_MESSAGE", "10"),
    ];
    let mut gateway = Process::spawn_with(&env, &["ingest"], &vars);
    let up = wait_until(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "gateway listening");
    proxy.set_up(false);
    proxy.cut();
    let post = |events: Vec<Value>| {
        let token = token.clone();
        async move {
            let auth = format!("Bearer {token}");
            let (status, _, body) = crate::helpers::http(
                port,
                "POST",
                "/v1/events",
                &[
                    ("Content-Type", "application/x-ndjson"),
                    ("Authorization", &auth),
                ],
                &ndjson(&events),
            )
            .await;
            (status, serde_json::from_str::<Value>(&body).expect("json"))
        }
    };
    let mut ids = Vec::new();
    for round in 0..20 {
        let (status, body) = post((round * 500..round * 500 + 500).map(event).collect()).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["spooled"], true);
        ids.extend(
            body["event_ids"]
                .as_array()
                .expect("ids")
                .iter()
                .filter_map(|v| v.as_str())
                .map(|s| s.parse::<uuid::Uuid>().expect("uuid")),
        );
    }
    proxy.set_up(true);
    let replaying = wait_until(Duration::from_secs(30), || async {
        env.count().await.0 > 0
    })
    .await;
    assert!(replaying, "replay started");
    gateway.signal("KILL");
    gateway.wait(Duration::from_secs(10)).await;
    let partial = env.count().await.0;
    let _gateway = Process::spawn_with(&env, &["ingest"], &vars);
    env.wait_for_rows(10_000, Duration::from_secs(90)).await;
    ids.sort();
    env.assert_exactly(&ids).await;
    eprintln!("{partial} of 10000 events were stored when the gateway was killed");
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn the_token_cli_prints_the_secret_once_and_revokes() {
    let env = TestEnv::new().await;
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_auditline"))
            .args(args)
            .env("AUDITLINE_DATABASE_URL", env.settings.database_url.expose())
            .output()
            .expect("run auditline");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, secret, _) = run(&[
        "token",
        "create",
        "--name",
        "billing-app",
        "--scope",
        "publish",
        "--service",
        "billing",
        "--expires-in",
        "30d",
    ]);
    assert!(ok);
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("alt_"), "{secret}");
    let info = auth::authenticate(&env.pool, &secret)
        .await
        .expect("the printed secret works");
    assert_eq!(info.service.as_deref(), Some("billing"));
    let (ok, listing, _) = run(&["token", "list"]);
    assert!(ok);
    assert!(
        listing.contains("billing-app") && listing.contains(&info.token_id),
        "{listing}"
    );
    assert!(!listing.contains(&secret), "list never shows secrets");
    let (ok, _, _) = run(&["token", "create", "--name", "x", "--scope", "publish"]);
    assert!(!ok, "a publish token without a service is refused");
    let (ok, _, _) = run(&["token", "revoke", &info.token_id]);
    assert!(ok);
    assert!(matches!(
        auth::authenticate(&env.pool, &secret).await,
        Err(auth::AuthError::Revoked(_))
    ));
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM auditline.tokens")
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert!(!String::from_utf8_lossy(&stored).contains(secret.split('_').nth(2).unwrap_or("")));
    env.cleanup().await;
}

#[actix_web::test]
async fn auditline_all_takes_a_post_through_to_storage() {
    let env = TestEnv::new().await;
    let token = env.token(&[Scope::Publish], Some("billing")).await;
    let port = crate::helpers::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = Process::spawn_with(
        &env,
        &["all"],
        &[("AUDITLINE_INGEST_LISTEN", listen.as_str())],
    );
    let up = wait_until(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            && crate::helpers::http_get(port, "/readyz").await.0 == 200
    })
    .await;
    assert!(up, "the gateway inside `auditline all` is ready");
    let auth = format!("Bearer {token}");
    let (status, _, body) = crate::helpers::http(
        port,
        "POST",
        "/v1/events",
        &[
            ("Content-Type", "application/x-ndjson"),
            ("Authorization", &auth),
        ],
        &ndjson(&(0..20).map(event).collect::<Vec<_>>()),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    env.wait_for_rows(20, Duration::from_secs(30)).await;
    // One registry serves every service of the process.
    let counted = wait_until(Duration::from_secs(10), || async {
        let (status, metrics) = crate::helpers::http_get(port, "/metrics").await;
        status == 200
            && metrics.contains("auditline_ingest_events_accepted_total 20")
            && metrics.contains("auditline_writer_rows_written_total 20")
    })
    .await;
    assert!(
        counted,
        "ingest and writer metrics on the gateway's /metrics"
    );
    all.signal("TERM");
    assert_eq!(
        all.wait(Duration::from_secs(30)).await,
        Some(0),
        "clean exit"
    );
    env.cleanup().await;
}
