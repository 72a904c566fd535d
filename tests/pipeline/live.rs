//! The live stream, end to end: events published to the pipeline, stored by
//! a real writer, announced on `<ns>.live`, filtered by the admin and read
//! by websocket clients.

use std::{collections::HashSet, time::Duration};

use auditline_shared::{AuditEvent, auth::Scope};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{self, Message, client::IntoClientRequest},
};
use uuid::Uuid;

use crate::helpers::{InProcess, InProcessAdmin, InProcessWriter, TestEnv, event_at, http};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn post_ticket(admin: &InProcess, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let (status, _, body) = http(
        admin.port,
        "POST",
        "/admin/audit/stream/ticket",
        &[("Authorization", auth.as_str())],
        &[],
    )
    .await;
    (status, body)
}

async fn ticket(admin: &InProcess, token: &str) -> String {
    let (status, body) = post_ticket(admin, token).await;
    assert_eq!(status, 201, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    body["ticket"].as_str().expect("ticket").to_owned()
}

/// Connects; on refusal, the HTTP status and body.
async fn connect(
    admin: &InProcess,
    ticket: Option<&str>,
    origin: Option<&str>,
) -> Result<Socket, (u16, String)> {
    let url = match ticket {
        Some(t) => format!(
            "ws://127.0.0.1:{}/admin/audit/stream?ticket={t}",
            admin.port
        ),
        None => format!("ws://127.0.0.1:{}/admin/audit/stream", admin.port),
    };
    let mut request = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("header"));
    }
    match connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

async fn open(admin: &InProcess, token: &str) -> Socket {
    let ticket = ticket(admin, token).await;
    connect(admin, Some(&ticket), None)
        .await
        .unwrap_or_else(|(s, b)| panic!("refused: {s} {b}"))
}

/// A client whose socket takes little before the server must wait.
async fn open_slow_reader(admin: &InProcess, token: &str) -> Socket {
    let ticket = ticket(admin, token).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer size");
    let stream = socket
        .connect(([127, 0, 0, 1], admin.port).into())
        .await
        .expect("connect");
    let request = format!(
        "ws://127.0.0.1:{}/admin/audit/stream?ticket={ticket}",
        admin.port
    )
    .into_client_request()
    .expect("request");
    let (socket, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
        .await
        .expect("websocket");
    socket
}

/// Sends a subscribe message and waits until the server has taken it (a
/// ping sent after it is answered after it).
async fn subscribe(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("send");
    socket
        .send(Message::Ping(b"sync".to_vec().into()))
        .await
        .expect("ping");
    loop {
        match next(socket, Duration::from_secs(10)).await {
            Some(Message::Pong(_)) => return,
            Some(Message::Text(text)) => {
                let v: Value = serde_json::from_str(&text).expect("JSON");
                assert_ne!(v["type"], "error", "subscribe refused: {v}");
            }
            Some(_) => {}
            None => panic!("no pong after subscribing"),
        }
    }
}

async fn next(socket: &mut Socket, wait: Duration) -> Option<Message> {
    match tokio::time::timeout(wait, socket.next()).await {
        Ok(Some(Ok(message))) => Some(message),
        _ => None,
    }
}

/// What a client read until `want` events came (or `wait` passed, or
/// `quiet` passed with nothing new once `want` were there).
#[derive(Default, Debug)]
struct Received {
    ids: Vec<Uuid>,
    lagged: u64,
    caught_up_at: Option<usize>,
}

async fn read(socket: &mut Socket, want: usize, wait: Duration) -> Received {
    let mut got = Received::default();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Once everything expected came, anything more must come quickly.
        let left = if got.ids.len() >= want {
            left.min(Duration::from_millis(700))
        } else {
            left
        };
        let Some(message) = next(socket, left).await else {
            return got;
        };
        let Message::Text(text) = message else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).expect("JSON");
        match v["type"].as_str() {
            Some("events") => {
                for e in v["events"].as_array().expect("events") {
                    got.ids
                        .push(e["event_id"].as_str().expect("id").parse().expect("uuid"));
                }
            }
            Some("lagged") => got.lagged += v["dropped"].as_u64().expect("dropped"),
            Some("caught_up") => got.caught_up_at = Some(got.ids.len()),
            other => panic!("unexpected message {other:?}: {v}"),
        }
    }
}

fn ids(events: &[&AuditEvent]) -> HashSet<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

fn assert_once(got: &[Uuid], want: &HashSet<Uuid>, who: &str) {
    let set: HashSet<Uuid> = got.iter().copied().collect();
    assert_eq!(set.len(), got.len(), "{who}: an event came twice");
    assert!(
        &set == want,
        "{who}: exactly the matching events: {} received, {} wanted, {} missing, {} extra",
        set.len(),
        want.len(),
        want.difference(&set).count(),
        set.difference(want).count()
    );
}

#[actix_web::test]
async fn clients_get_exactly_their_matching_events_and_a_stalled_one_is_told_it_lagged() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let mut settings = env.settings.clone();
    // Room for every event a reading client wants (5,333), even if the test
    // machine starves it for a while; the stalled client wants 16,000, more
    // than its queue, the session's 32 frames and its socket hold together.
    settings.stream.client_queue = 6_000;
    let admin = InProcessAdmin::start_with(settings).await;
    let token = env.named_token("watcher", &[Scope::Read]).await;

    let mut alpha = open(&admin, &token).await;
    subscribe(
        &mut alpha,
        json!({"type": "subscribe", "filter": {"service": "alpha"}}),
    )
    .await;
    let mut failures = open(&admin, &token).await;
    subscribe(
        &mut failures,
        json!({"type": "subscribe", "filter": {"action_type": ["file", "auth"], "status": "5xx"}}),
    )
    .await;
    // Wants all the test's events and never reads until the end (with a small socket
    // buffer, so that it stalls soon).
    let mut stalled = open_slow_reader(&admin, &token).await;
    // (Every test event; not the admin's own audit events of this test.)
    subscribe(
        &mut stalled,
        json!({"type": "subscribe", "filter": {"service": ["alpha", "beta"]}}),
    )
    .await;

    // Enough bytes to fill the stalled client's socket buffers many times over.
    let now = chrono::Utc::now();
    let padding = "x".repeat(2_000);
    let events: Vec<AuditEvent> = (0..16_000usize)
        .map(|i| {
            let mut e = event_at(if i % 3 == 0 { "alpha" } else { "beta" }, now, i);
            e.metadata = Some(
                json!({"n": i, "padding": padding})
                    .as_object()
                    .expect("object")
                    .clone(),
            );
            e
        })
        .collect();
    let publisher = env.publisher().await;
    // At a pace a reading client keeps up with on this shared machine.
    for chunk in events.chunks(500) {
        publisher.publish_batch(chunk).await.expect("published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let want_alpha = ids(&events
        .iter()
        .filter(|e| e.service == "alpha")
        .collect::<Vec<_>>());
    let want_failures = ids(&events
        .iter()
        .filter(|e| {
            ["file", "auth"].contains(&e.action_type.as_str())
                && e.status_code.is_some_and(|s| s >= 500)
        })
        .collect::<Vec<_>>());
    assert!(!want_failures.is_empty());
    let (got_alpha, got_failures) = tokio::join!(
        read(&mut alpha, want_alpha.len(), Duration::from_secs(60)),
        read(&mut failures, want_failures.len(), Duration::from_secs(60)),
    );
    assert_eq!(got_alpha.lagged, 0, "the reading client lost nothing");
    assert_once(&got_alpha.ids, &want_alpha, "alpha");
    assert_once(&got_failures.ids, &want_failures, "failures");

    // The stalled client reads at last: it was told how much it missed, and
    // what it did get plus what it missed is everything.
    let got_stalled = read(&mut stalled, events.len(), Duration::from_secs(30)).await;
    assert!(
        got_stalled.lagged > 0,
        "no lagged message ({} events received)",
        got_stalled.ids.len()
    );
    assert_eq!(
        got_stalled.ids.len() as u64 + got_stalled.lagged,
        events.len() as u64,
        "received + dropped = published"
    );
    let (status, metrics) = crate::helpers::http_get(admin.port, "/metrics").await;
    assert_eq!(status, 200);
    let dropped_line = metrics
        .lines()
        .find(|l| l.starts_with("auditline_stream_events_dropped_total"))
        .expect("dropped metric");
    assert!(
        dropped_line.ends_with(&format!(" {}", got_stalled.lagged)),
        "{dropped_line}"
    );
    admin.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn since_a_search_cursor_every_later_event_comes_once_across_the_switch() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let admin = InProcessAdmin::start(&env).await;
    let token = env.named_token("watcher", &[Scope::Read]).await;
    let publisher = env.publisher().await;
    let start = chrono::Utc::now() - chrono::TimeDelta::minutes(10);
    let stored: Vec<AuditEvent> = (0..60usize)
        .map(|i| event_at("since", start + chrono::TimeDelta::seconds(i as i64), i))
        .collect();
    publisher.publish_batch(&stored).await.expect("published");
    env.wait_for_rows(60, Duration::from_secs(30)).await;
    let (status, page) = admin
        .get_json(
            Some(&token),
            "/admin/audit/logs?service=since&order=asc&limit=20",
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();

    let mut socket = open(&admin, &token).await;
    socket
        .send(Message::text(
            json!({"type": "subscribe", "filter": {"service": "since"}, "since": cursor})
                .to_string(),
        ))
        .await
        .expect("send");
    // New events while the stored ones are being sent.
    let live: Vec<AuditEvent> = (0..40usize)
        .map(|i| event_at("since", chrono::Utc::now(), 1000 + i))
        .collect();
    for chunk in live.chunks(5) {
        publisher.publish_batch(chunk).await.expect("published");
    }
    let mut want: HashSet<Uuid> = stored[20..].iter().map(|e| e.event_id).collect();
    want.extend(live.iter().map(|e| e.event_id));
    let got = read(&mut socket, want.len(), Duration::from_secs(30)).await;
    assert!(got.caught_up_at.is_some(), "caught_up was sent");
    assert_eq!(got.lagged, 0);
    assert_once(&got.ids, &want, "since + live");
    // The stored part came first, in order.
    let first: Vec<Uuid> = got.ids[..40.min(got.ids.len())]
        .iter()
        .copied()
        .filter(|id| stored.iter().any(|e| e.event_id == *id))
        .collect();
    let expected_order: Vec<Uuid> = stored[20..].iter().map(|e| e.event_id).collect();
    assert_eq!(first, expected_order);
    // The subscription, and the history it replayed, are an admin event.
    let recorded = crate::helpers::wait_until(Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM auditline.events WHERE action_type = 'admin' \
             AND http_method = 'SUBSCRIBE' AND user_id = 'watcher' \
             AND metadata->'subscribe'->>'since' = $1 \
             AND metadata->'subscribe'->'filter'->>'service' = 'since'",
        )
        .bind(&cursor)
        .fetch_one(&env.pool)
        .await
        .unwrap_or(0)
            == 1
    })
    .await;
    assert!(recorded, "the subscription with its since was not recorded");
    admin.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn tickets_origins_filters_and_the_connection_cap_are_enforced() {
    let env = TestEnv::new().await;
    let mut settings = env.settings.clone();
    settings.stream.max_clients = 2;
    settings.stream.allowed_origins = vec!["https://audit.example.com".into()];
    let admin = InProcessAdmin::start_with(settings).await;
    let token = env.named_token("watcher", &[Scope::Read]).await;

    let (status, body) = connect(&admin, None, None).await.expect_err("no ticket");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("ticket_required"), "{body}");
    let (status, _) = connect(&admin, Some("0123abcd"), None)
        .await
        .expect_err("unknown ticket");
    assert_eq!(status, 401);

    let refused = ticket(&admin, &token).await;
    let (status, body) = connect(&admin, Some(&refused), Some("https://evil.example.net"))
        .await
        .expect_err("foreign origin");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("origin_not_allowed"), "{body}");
    let used = ticket(&admin, &token).await;
    let mut first = connect(&admin, Some(&used), Some("https://audit.example.com"))
        .await
        .expect("an allowed origin connects");
    let (status, body) = connect(&admin, Some(&used), None)
        .await
        .expect_err("used ticket");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_ticket"), "{body}");

    // A ticket needs a token with the read scope.
    let exporter = env.named_token("exporter", &[Scope::Export]).await;
    assert_eq!(post_ticket(&admin, &exporter).await.0, 403);

    // Bad subscribe messages are answered with an error naming the field;
    // the connection stays usable.
    for (message, field) in [
        (
            json!({"type": "subscribe", "filter": {"status": "9xx"}}),
            "filter.status",
        ),
        (
            json!({"type": "subscribe", "filter": {"client_ip": "10.0.0.0/8"}}),
            "filter.client_ip",
        ),
        (
            json!({"type": "subscribe", "filter": {"user_id": {"a": 1}}}),
            "filter.user_id",
        ),
        (json!({"type": "subscribe", "since": "forged"}), "since"),
        (json!({"type": "unsubscribe"}), "type"),
        (json!({"type": "subscribe", "extra": 1}), "extra"),
    ] {
        first
            .send(Message::text(message.to_string()))
            .await
            .expect("send");
        let Some(Message::Text(text)) = next(&mut first, Duration::from_secs(5)).await else {
            panic!("no answer to {message}");
        };
        let answer: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["error"]["details"][0]["field"], field, "{answer}");
    }
    // A repeated key is refused, not read as its last value.
    first
        .send(Message::text(
            r#"{"type": "subscribe", "filter": {"success": false, "success": true}}"#,
        ))
        .await
        .expect("send");
    let Some(Message::Text(text)) = next(&mut first, Duration::from_secs(5)).await else {
        panic!("no answer to a duplicate key");
    };
    let answer: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(
        answer["error"]["details"][0]["field"], "filter.success",
        "{answer}"
    );
    subscribe(
        &mut first,
        json!({"type": "subscribe", "filter": {"success": false}}),
    )
    .await;

    // The cap: two clients, the third is refused clearly.
    let _second = open(&admin, &token).await;
    let third = ticket(&admin, &token).await;
    let (status, body) = connect(&admin, Some(&third), None)
        .await
        .expect_err("over the cap");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too_many_clients"), "{body}");
    admin.stop().await;
    env.cleanup().await;
}

/// Whether the connection ends (a close, an error or its end) within 20 s.
async fn ends(socket: &mut Socket) -> bool {
    for _ in 0..20 {
        if let Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) =
            tokio::time::timeout(Duration::from_secs(1), socket.next()).await
        {
            return true;
        }
    }
    false
}

#[actix_web::test]
async fn a_silent_client_is_closed_and_an_oversized_frame_ends_the_connection() {
    let env = TestEnv::new().await;
    let mut settings = env.settings.clone();
    settings.stream.ping_secs = 1;
    settings.stream.idle_secs = 3;
    let admin = InProcessAdmin::start_with(settings).await;
    let token = env.named_token("watcher", &[Scope::Read]).await;

    // Reads nothing, so answers no ping: the server lets it go after the
    // idle limit (its client count falls to zero while the client is still
    // not reading; reading afterwards would answer pings on a closed socket).
    let mut silent = open(&admin, &token).await;
    let clients = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("auditline_stream_clients "))
            .and_then(|v| v.parse::<i64>().ok())
    };
    let (_, metrics) = crate::helpers::http_get(admin.port, "/metrics").await;
    assert_eq!(clients(&metrics), Some(1));
    let let_go = crate::helpers::wait_until(Duration::from_secs(15), || async {
        let (_, metrics) = crate::helpers::http_get(admin.port, "/metrics").await;
        clients(&metrics) == Some(0)
    })
    .await;
    assert!(let_go, "the silent client was closed");
    assert!(
        ends(&mut silent).await,
        "the silent client's connection ended"
    );

    // A client that keeps answering is not closed.
    let mut lively = open(&admin, &token).await;
    subscribe(&mut lively, json!({"type": "subscribe", "filter": {}})).await;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        // Reading answers the server's pings.
        if let Some(Message::Close(_)) = next(&mut lively, Duration::from_millis(200)).await {
            panic!("a responsive client was closed");
        }
    }

    // A frame over 64 KiB is a protocol error: the server ends the connection.
    let big = json!({"type": "subscribe", "filter": {"user_id": "x".repeat(70_000)}});
    let _ = lively.send(Message::text(big.to_string())).await;
    assert!(
        ends(&mut lively).await,
        "the oversized frame ended the connection"
    );
    admin.stop().await;
    env.cleanup().await;
}

/// Reads until the server closes: the close frame (None if the connection
/// just ended, or did not end within `wait`), the events that came before it,
/// and how long the close took.
async fn until_closed(
    socket: &mut Socket,
    wait: Duration,
) -> (
    Option<tungstenite::protocol::CloseFrame>,
    Vec<Uuid>,
    Duration,
) {
    let start = std::time::Instant::now();
    let mut events = Vec::new();
    while start.elapsed() < wait {
        match tokio::time::timeout(Duration::from_millis(200), socket.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Close(frame)))) => return (frame, events, start.elapsed()),
            Ok(None | Some(Err(_))) => return (None, events, start.elapsed()),
            Ok(Some(Ok(Message::Text(text)))) => {
                let v: Value = serde_json::from_str(&text).expect("JSON");
                if v["type"] == "events" {
                    for e in v["events"].as_array().expect("events") {
                        events.push(e["event_id"].as_str().expect("id").parse().expect("uuid"));
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    (None, events, start.elapsed())
}

/// Asserts a close with 1008 (policy violation) naming `reason`, and that
/// nothing at all comes after it.
async fn assert_policy_close(
    socket: &mut Socket,
    frame: Option<tungstenite::protocol::CloseFrame>,
    reason: &str,
) {
    let frame = frame.expect("a close frame");
    assert_eq!(
        frame.code,
        tungstenite::protocol::frame::coding::CloseCode::Policy,
        "{frame:?}"
    );
    assert!(frame.reason.contains(reason), "{frame:?}");
    // The connection is over: no event, no frame follows.
    loop {
        match tokio::time::timeout(Duration::from_secs(2), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => panic!("a frame after the close: {text}"),
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) | Err(_) => break,
        }
    }
}

/// Reads until `want` events came or `wait` passed; returns how many came.
async fn read_some(socket: &mut Socket, want: usize, wait: Duration) -> usize {
    let start = std::time::Instant::now();
    let mut got = 0;
    while got < want && start.elapsed() < wait {
        if let Some(Message::Text(text)) = next(socket, Duration::from_millis(200)).await {
            let v: Value = serde_json::from_str(&text).expect("JSON");
            got += v["events"].as_array().map_or(0, Vec::len);
        }
    }
    got
}

/// The id of a token (`alt_<id>_<secret>`).
fn token_id(token: &str) -> &str {
    &token[4..16]
}

/// Publishes an event of `service` every 100 ms until stopped.
fn keep_publishing(
    publisher: auditline_client::Publisher,
    service: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0.. {
            let event = event_at(service, chrono::Utc::now(), i);
            publisher.publish(&event).await.expect("published");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[actix_web::test]
async fn revoking_a_token_closes_its_open_streams_with_1008_within_5_seconds() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let admin = InProcessAdmin::start(&env).await;
    let token = env.named_token("leaver", &[Scope::Read]).await;
    let other = env.named_token("stayer", &[Scope::Read]).await;
    let mut socket = open(&admin, &token).await;
    subscribe(
        &mut socket,
        json!({"type": "subscribe", "filter": {"service": "revoke"}}),
    )
    .await;
    let mut bystander = open(&admin, &other).await;
    subscribe(
        &mut bystander,
        json!({"type": "subscribe", "filter": {"service": "revoke"}}),
    )
    .await;
    let publishing = keep_publishing(env.publisher().await, "revoke");
    let got = read_some(&mut socket, 3, Duration::from_secs(30)).await;
    assert!(got >= 3, "events flow before the revocation");

    let (code, out, err) =
        crate::helpers::Process::output(&env, &["token", "revoke", token_id(&token)], &[]).await;
    assert_eq!(code, 0, "{out} {err}");
    let (frame, _, took) = until_closed(&mut socket, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert_policy_close(&mut socket, frame, "revoked").await;

    // Another token's stream goes on.
    let more = read_some(&mut bystander, 100, Duration::from_secs(3)).await;
    assert!(more >= 3, "the other token's stream goes on");
    publishing.abort();
    admin.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn an_expiring_token_ends_its_stream_with_1008() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let admin = InProcessAdmin::start(&env).await;
    let expires_at = chrono::Utc::now() + chrono::TimeDelta::seconds(4);
    let (_, token) = auditline_shared::auth::create(
        &env.pool,
        auditline_shared::auth::NewToken {
            name: "short-lived".into(),
            scopes: vec![Scope::Read],
            service: None,
            expires_at: Some(expires_at),
        },
    )
    .await
    .expect("token");
    let mut socket = open(&admin, &token).await;
    subscribe(
        &mut socket,
        json!({"type": "subscribe", "filter": {"service": "expiry"}}),
    )
    .await;
    let publishing = keep_publishing(env.publisher().await, "expiry");
    let (frame, events, _) = until_closed(&mut socket, Duration::from_secs(20)).await;
    let closed_at = chrono::Utc::now();
    assert!(
        !events.is_empty(),
        "events flowed while the token was valid"
    );
    assert!(
        closed_at >= expires_at && closed_at - expires_at < chrono::TimeDelta::seconds(5),
        "closed {} after the expiry",
        closed_at - expires_at
    );
    assert_policy_close(&mut socket, frame, "expired").await;
    publishing.abort();
    admin.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn a_since_replay_after_revocation_sends_no_history() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let mut settings = env.settings.clone();
    // The periodic check must not be what closes it here.
    settings.stream.token_check_secs = 3600;
    let admin = InProcessAdmin::start_with(settings).await;
    let token = env.named_token("leaver", &[Scope::Read]).await;
    let publisher = env.publisher().await;
    let start = chrono::Utc::now() - chrono::TimeDelta::minutes(10);
    let stored: Vec<AuditEvent> = (0..30usize)
        .map(|i| event_at("history", start + chrono::TimeDelta::seconds(i as i64), i))
        .collect();
    publisher.publish_batch(&stored).await.expect("published");
    env.wait_for_rows(30, Duration::from_secs(30)).await;
    let (status, page) = admin
        .get_json(
            Some(&token),
            "/admin/audit/logs?service=history&order=asc&limit=5",
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let mut socket = open(&admin, &token).await;

    auditline_shared::auth::revoke(&env.pool, token_id(&token))
        .await
        .expect("revoke");
    socket
        .send(Message::text(
            json!({"type": "subscribe", "filter": {"service": "history"}, "since": cursor})
                .to_string(),
        ))
        .await
        .expect("send");
    let (frame, events, _) = until_closed(&mut socket, Duration::from_secs(10)).await;
    assert!(events.is_empty(), "{} stored events replayed", events.len());
    assert_policy_close(&mut socket, frame, "revoked").await;
    admin.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn a_ticket_dies_with_its_token_and_with_any_use() {
    let env = TestEnv::new().await;
    let mut settings = env.settings.clone();
    settings.stream.allowed_origins = vec!["https://audit.example.com".into()];
    let admin = InProcessAdmin::start_with(settings).await;
    let token = env.named_token("watcher", &[Scope::Read]).await;

    // Issued, then its token revoked: refused within the ticket's TTL.
    let doomed = env.named_token("doomed", &[Scope::Read]).await;
    let orphan = ticket(&admin, &doomed).await;
    auditline_shared::auth::revoke(&env.pool, token_id(&doomed))
        .await
        .expect("revoke");
    let (status, body) = connect(&admin, Some(&orphan), None)
        .await
        .expect_err("the token was revoked");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_ticket"), "{body}");

    // Refused for its origin: spent, the right origin cannot use it after.
    let once = ticket(&admin, &token).await;
    let (status, body) = connect(&admin, Some(&once), Some("https://evil.example.net"))
        .await
        .expect_err("foreign origin");
    assert_eq!(status, 403, "{body}");
    let (status, body) = connect(&admin, Some(&once), Some("https://audit.example.com"))
        .await
        .expect_err("the ticket was spent by the refused try");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_ticket"), "{body}");

    // Refused for a bad parameter: spent too.
    let once = ticket(&admin, &token).await;
    let url = format!(
        "ws://127.0.0.1:{}/admin/audit/stream?ticket={once}&filter=x",
        admin.port
    );
    match connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 400),
        other => panic!("a bad parameter is refused: {:?}", other.map(|_| ())),
    }
    let (status, _) = connect(&admin, Some(&once), None)
        .await
        .expect_err("the ticket was spent by the refused try");
    assert_eq!(status, 401);

    // A fresh one of a valid token still opens.
    let _socket = open(&admin, &token).await;
    admin.stop().await;
    env.cleanup().await;
}
