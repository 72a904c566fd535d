//! `AuditMiddleware` on the demo app: every request becomes exactly one stored
//! event carrying what happened.

use crate::helpers::{InProcessWriter, TestEnv};
use actix_web::{App, dev::Service, test};
use auditline::demo;
use auditline_client::{AuditConfig, AuditMiddleware, middleware::Cidr, spool::Spool};
use std::{collections::HashMap, sync::Arc, time::Duration};

struct Expected {
    /// `None` for a request an inner middleware refused with an error.
    route: Option<&'static str>,
    action: &'static str,
    method: &'static str,
    status: i16,
    request_size: i64,
    response_size: Option<i64>,
    user: Option<String>,
    session: String,
    client_ip: &'static str,
    cpu_ms: bool,
}

#[actix_web::test]
async fn ten_thousand_requests_become_ten_thousand_faithful_events() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let spool = test_spool(&env);
    let mut config = AuditConfig::new("demo-app");
    config.trusted_proxies = vec![Cidr::parse("10.0.0.0/8").expect("cidr")];
    let audit = AuditMiddleware::start(config, env.publisher().await, spool).expect("middleware");
    let app = test::init_service(
        App::new()
            // An inner middleware that refuses with an error (not a
            // response): the audit middleware sees `Err`, and no request.
            .wrap_fn(|req, srv| {
                let deny = req.headers().contains_key("x-deny");
                let call = srv.call(req);
                async move {
                    if deny {
                        return Err(actix_web::error::ErrorForbidden("denied"));
                    }
                    call.await
                }
            })
            .wrap_fn(|req, srv| {
                demo::authenticate(&req);
                srv.call(req)
            })
            .wrap(audit.clone())
            .configure(demo::routes),
    )
    .await;
    let began = chrono::Utc::now();

    let mut expected: HashMap<String, Expected> = HashMap::new();
    for i in 0..10_000usize {
        let user = (i % 7 != 0).then(|| {
            if i % 11 == 0 {
                "admin".to_owned()
            } else {
                format!("user-{}", i % 13)
            }
        });
        let (method, path, route, action, body): (&str, String, &str, &str, Vec<u8>) = match i % 6 {
            0 => (
                "GET",
                format!("/files/{}?n={i}", i % 4000),
                "/files/{id}",
                "file",
                Vec::new(),
            ),
            1 => (
                "PUT",
                format!("/files/{}?n={i}", i % 4000 + 1),
                "/files/{id}",
                "file",
                vec![b'a'; i % 300],
            ),
            2 => (
                "POST",
                format!("/code/run?n={i}"),
                "/code/run",
                "code_exec",
                if i % 12 == 2 {
                    b"crash".to_vec()
                } else {
                    b"print(1)".to_vec()
                },
            ),
            3 => (
                "POST",
                format!("/admin/users/u{i}/roles?n={i}"),
                "/admin/users/{id}/roles",
                "admin",
                Vec::new(),
            ),
            4 => (
                "POST",
                format!("/auth/login?n={i}"),
                "/auth/login",
                "auth",
                if i % 8 == 4 {
                    Vec::new()
                } else {
                    b"pw".to_vec()
                },
            ),
            _ => (
                "GET",
                format!("/health?n={i}"),
                "/health",
                "other",
                Vec::new(),
            ),
        };
        let (peer, forwarded, client_ip) = match i % 3 {
            0 => (
                "10.1.1.1:5000",
                Some("203.0.113.7, 10.2.2.2"),
                "203.0.113.7",
            ),
            1 => ("198.51.100.9:5000", Some("1.2.3.4"), "198.51.100.9"),
            _ => ("192.0.2.44:5000", None, "192.0.2.44"),
        };
        let mut req = test::TestRequest::default()
            .method(method.parse().expect("method"))
            .uri(&path)
            .peer_addr(peer.parse().expect("addr"))
            .insert_header(("content-length", body.len().to_string()))
            .set_payload(body.clone());
        if let Some(user) = &user {
            req = req.insert_header(("x-demo-user", user.as_str()));
        }
        if let Some(f) = forwarded {
            req = req.insert_header(("x-forwarded-for", f));
        }
        let sent_session = (i % 5 != 0).then(|| format!("sess-{}", i % 50));
        if let Some(s) = &sent_session {
            req = req.insert_header(("x-session-id", s.as_str()));
        }
        // Every 50th request (a session id is sent) is refused by the inner
        // middleware with an error.
        let denied = i % 50 == 49;
        if denied {
            req = req.insert_header(("x-deny", "1"));
        }
        let resp = match test::try_call_service(&app, req.to_request()).await {
            Ok(resp) => resp,
            Err(e) => {
                assert!(denied, "request {i}: {e}");
                let status = e.as_response_error().status_code().as_u16() as i16;
                expected.insert(
                    path.clone(),
                    Expected {
                        route: None,
                        action,
                        method,
                        status,
                        request_size: body.len() as i64,
                        response_size: None,
                        user: None,
                        session: sent_session.clone().expect("sent"),
                        client_ip,
                        cpu_ms: false,
                    },
                );
                continue;
            }
        };
        assert!(!denied, "request {i} was refused with an error");
        let status = resp.status().as_u16() as i16;
        let returned_session = resp
            .headers()
            .get("x-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let session = match (&sent_session, returned_session) {
            (Some(s), None) => s.clone(),
            (None, Some(generated)) => generated,
            other => panic!(
                "request {i}: a session id is returned exactly when none was sent: {other:?}"
            ),
        };
        let response = test::read_body(resp).await;
        expected.insert(
            path.clone(),
            Expected {
                route: Some(route),
                action,
                method,
                status,
                request_size: body.len() as i64,
                response_size: Some(response.len() as i64),
                user,
                session,
                client_ip,
                cpu_ms: route == "/code/run",
            },
        );
    }

    let ended = chrono::Utc::now();
    assert_eq!(expected.len(), 10_000);
    assert_eq!(
        expected.values().filter(|e| e.route.is_none()).count(),
        200,
        "200 requests were refused with an error"
    );
    env.wait_for_rows(10_000, Duration::from_secs(120)).await;
    assert_eq!(
        audit.spilled(),
        0,
        "the queue never overflowed in this test"
    );
    type Row = (
        String,
        Option<String>,
        String,
        String,
        Option<i16>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        String,
        Option<String>,
        bool,
        Option<serde_json::Value>,
        Option<f64>,
        String,
        chrono::DateTime<chrono::Utc>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT endpoint, route, action_type, http_method, status_code, request_size, response_size, user_id, \
                session_id, host(client_ip), success, resource_usage, response_time_ms, service, occurred_at \
         FROM auditline.events",
    )
    .fetch_all(&env.pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), 10_000);
    for (
        endpoint,
        route,
        action,
        method,
        status,
        req_size,
        resp_size,
        user,
        session,
        ip,
        success,
        usage,
        millis,
        service,
        occurred_at,
    ) in rows
    {
        let want = expected
            .get(&endpoint)
            .unwrap_or_else(|| panic!("unexpected endpoint {endpoint}"));
        assert_eq!(route.as_deref(), want.route, "{endpoint}");
        // Dated by the wall clock when the request came in (to the µs).
        assert!(
            occurred_at >= began - chrono::Duration::microseconds(1) && occurred_at <= ended,
            "{endpoint}: {occurred_at} not within {began} .. {ended}"
        );
        assert_eq!(action, want.action, "{endpoint}");
        assert_eq!(method, want.method, "{endpoint}");
        assert_eq!(status, Some(want.status), "{endpoint}");
        assert_eq!(success, want.status < 400, "{endpoint}");
        assert_eq!(req_size, Some(want.request_size), "{endpoint}");
        assert_eq!(resp_size, want.response_size, "{endpoint}");
        assert_eq!(user, want.user, "{endpoint}");
        assert_eq!(session, want.session, "{endpoint}");
        assert_eq!(ip.as_deref(), Some(want.client_ip), "{endpoint}");
        assert_eq!(service, "demo-app");
        assert!(millis.is_some_and(|m| m >= 0.0), "{endpoint}");
        assert_eq!(
            usage.as_ref().and_then(|u| u.get("cpu_ms")).is_some(),
            want.cpu_ms,
            "{endpoint}: {usage:?}"
        );
    }
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn a_full_queue_and_an_absent_broker_lose_nothing() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let (proxy, mut through_proxy) = crate::helpers::behind_proxy(&env).await;
    through_proxy.publisher.publish_timeout_ms = 300;
    proxy.set_up(false);
    let spool = test_spool(&env);
    let mut config = AuditConfig::new("demo-app");
    config.queue_capacity = 1;
    let publisher = auditline_client::Publisher::new(&through_proxy.client(), "test-mw");
    let audit = AuditMiddleware::start(config, publisher, spool).expect("middleware");
    let app = test::init_service(App::new().wrap(audit.clone()).configure(demo::routes)).await;
    for i in 0..300 {
        let req = test::TestRequest::get()
            .uri(&format!("/health?n={i}"))
            .peer_addr("192.0.2.1:1000".parse().expect("addr"))
            .to_request();
        let resp = test::call_service(&app, req).await;
        assert_eq!(resp.status(), 200, "auditing never fails a request");
    }
    assert!(
        audit.spilled() > 0,
        "a one-slot queue overflowed into the spool"
    );
    proxy.set_up(true);
    env.wait_for_rows(300, Duration::from_secs(60)).await;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT endpoint) FROM auditline.events")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(distinct, 300, "every request is stored once");
    writer.stop().await;
    env.cleanup().await;
}

/// `n` requests to `/health?n=<i>` through `app`, each answered 200, with a
/// pause after every 64 (a hand-off) for the middleware's timer and publish
/// loop.
macro_rules! health_requests {
    ($app:expr, $n:expr) => {
        for i in 0..$n {
            let req = test::TestRequest::get()
                .uri(&format!("/health?n={i}"))
                .to_request();
            assert_eq!(test::call_service(&$app, req).await.status(), 200);
            if i % 64 == 63 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
}

/// A spool of the test's own for the middleware.
fn test_spool(env: &TestEnv) -> Arc<Spool> {
    Arc::new(Spool::open(format!("{}-mw", env.settings.ingest.spool_dir), 1 << 30).expect("spool"))
}

/// A broker that stops confirming for a while (seconds have been seen on a
/// busy 2-core machine) is waited for in memory: nothing goes to the spool
/// even with a one-hand-off queue, and everything is stored once it answers.
#[actix_web::test]
async fn a_broker_slow_to_confirm_is_waited_for_not_spooled() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let (proxy, mut through_proxy) = crate::helpers::behind_proxy(&env).await;
    through_proxy.publisher.publish_timeout_ms = 60_000;
    let spool = test_spool(&env);
    let mut config = AuditConfig::new("demo-app");
    config.queue_capacity = 64;
    config.linger = Duration::from_millis(5);
    config.events_per_message = 64;
    let publisher = auditline_client::Publisher::new(&through_proxy.client(), "test-mw");
    let audit = AuditMiddleware::start(config, publisher, spool).expect("middleware");
    let app = test::init_service(App::new().wrap(audit.clone()).configure(demo::routes)).await;
    // One request through, so the publisher is connected before the stall.
    let req = test::TestRequest::get().uri("/health?n=first").to_request();
    assert_eq!(test::call_service(&app, req).await.status(), 200);
    env.wait_for_rows(1, Duration::from_secs(30)).await;
    proxy.pause(true);
    health_requests!(app, 3_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        audit.spilled(),
        0,
        "events went to the spool while the broker was only slow"
    );
    proxy.pause(false);
    env.wait_for_rows(3_001, Duration::from_secs(60)).await;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT endpoint) FROM auditline.events")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(distinct, 3_001, "every request is stored");
    assert_eq!(env.count().await, (3_001, 3_001), "and stored once");
    assert_eq!(audit.spilled(), 0);
    writer.stop().await;
    env.cleanup().await;
}

/// The linger is a most: a message's worth of queued events goes out at
/// once, so a busy app's events do not pile up in the queue (and overflow
/// into the spool) however long the linger.
#[actix_web::test]
async fn a_message_worth_of_events_does_not_wait_for_the_linger() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let spool = test_spool(&env);
    let mut config = AuditConfig::new("demo-app");
    config.linger = Duration::from_secs(600);
    config.events_per_message = 640;
    let audit = AuditMiddleware::start(config, env.publisher().await, spool).expect("middleware");
    let app = test::init_service(App::new().wrap(audit.clone()).configure(demo::routes)).await;
    // The first hand-off starts a linger; ten more make a message's worth.
    health_requests!(app, 64 * 11);
    env.wait_for_rows(64 * 11, Duration::from_secs(30)).await;
    assert_eq!(audit.spilled(), 0);
    writer.stop().await;
    env.cleanup().await;
}

/// A real server stopped while events wait in the middleware (a minute's
/// linger) and one request is still being served: `shutdown` publishes every
/// event at once, the request cut short included (no status, not a success).
#[actix_web::test]
async fn shutdown_publishes_what_the_middleware_holds_and_records_cut_requests() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let spool = test_spool(&env);
    let mut config = AuditConfig::new("demo-app");
    config.linger = Duration::from_secs(60);
    config.events_per_message = 5_000;
    let audit = AuditMiddleware::start(config, env.publisher().await, spool).expect("middleware");
    let wrapped = audit.clone();
    let server = actix_web::HttpServer::new(move || {
        App::new()
            .wrap(wrapped.clone())
            .configure(demo::routes)
            .route(
                "/slow",
                actix_web::web::get().to(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            )
    })
    .workers(2)
    .shutdown_timeout(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .expect("bind");
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);
    // Fewer requests than a message's worth of hand-offs (78): on a loaded
    // machine each request can be a hand-off of its own, and a message's
    // worth ends the linger early by design.
    for i in 0..60 {
        let (status, _) = crate::helpers::http_get(port, &format!("/health?n={i}")).await;
        assert_eq!(status, 200);
    }
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    slow.write_all(b"GET /slow?cut=1 HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.count().await.0, 0, "events wait out the linger");

    let began = std::time::Instant::now();
    handle.stop(true).await;
    let _ = running.await;
    audit.shutdown(Duration::from_secs(10)).await;
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "shutdown does not wait for the linger ({took:?})"
    );
    // Stored long before the minute's linger would have let them go.
    env.wait_for_rows(61, Duration::from_secs(20)).await;
    let (status, success): (Option<i16>, bool) = sqlx::query_as(
        "SELECT status_code, success FROM auditline.events WHERE endpoint = '/slow?cut=1'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("the cut request has its event");
    assert_eq!((status, success), (None, false));
    assert_eq!(audit.spilled(), 0, "nothing needed the spool");
    drop(slow);
    writer.stop().await;
    env.cleanup().await;
}

/// The broker away at shutdown: `shutdown` returns after its grace with
/// every event in the spool, and they are stored once the broker is back.
#[actix_web::test]
async fn shutdown_with_the_broker_away_spools_everything() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let (proxy, mut through_proxy) = crate::helpers::behind_proxy(&env).await;
    // A publish would go on retrying for a minute.
    through_proxy.publisher.publish_timeout_ms = 60_000;
    proxy.set_up(false);
    let spool_dir = format!("{}-mw", env.settings.ingest.spool_dir);
    let spool = Arc::new(Spool::open(&spool_dir, 1 << 30).expect("spool"));
    let publisher = auditline_client::Publisher::new(&through_proxy.client(), "test-mw");
    let audit =
        AuditMiddleware::start(AuditConfig::new("demo-app"), publisher, spool).expect("middleware");
    let app = test::init_service(App::new().wrap(audit.clone()).configure(demo::routes)).await;
    for i in 0..200 {
        let req = test::TestRequest::get()
            .uri(&format!("/health?n={i}"))
            .to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 200);
    }
    // The app goes first (its worker state hands over what it holds), then
    // the middleware: one second of grace, and the rest is spooled.
    drop(app);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = std::time::Instant::now();
    audit.shutdown(Duration::from_secs(1)).await;
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "shutdown is bounded by its grace, not the publish timeout ({took:?})"
    );
    drop(audit);
    assert_eq!(env.count().await.0, 0, "nothing reached the broker");

    // Back up: a new middleware on the same spool replays it.
    proxy.set_up(true);
    let spool = Arc::new(Spool::open(&spool_dir, 1 << 30).expect("spool"));
    let publisher = auditline_client::Publisher::new(&through_proxy.client(), "test-mw-2");
    let _again =
        AuditMiddleware::start(AuditConfig::new("demo-app"), publisher, spool).expect("middleware");
    env.wait_for_rows(200, Duration::from_secs(60)).await;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT endpoint) FROM auditline.events")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(distinct, 200, "every request is stored once");
    writer.stop().await;
    env.cleanup().await;
}
