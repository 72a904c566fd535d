//! Exports under attack: jobs and schedules belong to their token (another
//! export token gets 404s, an admin token sees everything, scheduled
//! archives are deleted by admins only), a token's queued jobs are capped,
//! streamed exports are capped per instance and a reader that stops
//! reading is cut and lets go of its snapshot.

use std::time::Duration;

use auditline_shared::auth::Scope;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{InProcess, InProcessAdmin, TestEnv, header, http_raw, wait_until};

/// A request with a bearer token and a JSON body: status, headers, JSON answer
/// (`Null` for a body that is not JSON).
async fn call(
    port: u16,
    method: &str,
    token: &str,
    path: &str,
    body: &Value,
) -> (u16, Vec<(String, String)>, Value) {
    let auth = format!("Bearer {token}");
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, headers, answer) = http_raw(
        port,
        method,
        path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .await;
    let answer = serde_json::from_slice(&answer.unwrap_or_default()).unwrap_or(Value::Null);
    (status, headers, answer)
}

async fn new_job(
    admin: &InProcess,
    token: &str,
    body: Value,
) -> (u16, Vec<(String, String)>, Value) {
    call(admin.port, "POST", token, "/admin/audit/exports", &body).await
}

async fn listed(admin: &InProcess, token: &str, what: &str, key: &str) -> Vec<String> {
    let (status, _, body) = call(admin.port, "GET", token, what, &Value::Null).await;
    assert_eq!(status, 200, "{body}");
    body[key]
        .as_array()
        .expect("a list")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn wait_state(admin: &InProcess, token: &str, id: &str, state: &str) {
    let path = format!("/admin/audit/exports/{id}");
    let reached = wait_until(Duration::from_secs(30), || async {
        let (_, _, job) = call(admin.port, "GET", token, &path, &Value::Null).await;
        assert_ne!(job["state"], "failed", "{job}");
        job["state"] == state
    })
    .await;
    assert!(reached, "job {id} did not become {state}");
}

#[actix_web::test]
async fn another_tokens_jobs_and_schedules_are_404_and_an_admin_sees_them_all() {
    let env = TestEnv::new().await;
    let admin = InProcessAdmin::start(&env).await;
    let alice = env.named_token("alice", &[Scope::Export]).await;
    let bob = env.named_token("bob", &[Scope::Export]).await;
    let root = env.named_token("root", &[Scope::Admin]).await;

    let (status, _, job) = new_job(&admin, &alice, json!({"format": "ndjson"})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    assert_eq!(job["owner_token_id"], alice[4..16]);
    wait_state(&admin, &alice, &id, "done").await;

    // Bob: the job does not exist for him, whatever he does with its id.
    assert!(
        !listed(&admin, &bob, "/admin/audit/exports", "jobs")
            .await
            .contains(&id)
    );
    for (method, path) in [
        ("GET", format!("/admin/audit/exports/{id}")),
        ("GET", format!("/admin/audit/exports/{id}/download")),
        ("DELETE", format!("/admin/audit/exports/{id}")),
    ] {
        let (status, _, body) = call(admin.port, method, &bob, &path, &Value::Null).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    // Alice and the admin see it; the admin downloads it.
    assert!(
        listed(&admin, &alice, "/admin/audit/exports", "jobs")
            .await
            .contains(&id)
    );
    assert!(
        listed(&admin, &root, "/admin/audit/exports", "jobs")
            .await
            .contains(&id)
    );
    let (status, _, _) = http_raw(
        admin.port,
        "GET",
        &format!("/admin/audit/exports/{id}/download"),
        &[("Authorization", format!("Bearer {root}").as_str())],
        &[],
    )
    .await;
    assert_eq!(status, 200);

    // A job from before owners were recorded: the admin's only.
    let legacy = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO auditline.export_jobs (id, state, format, compression, window_from, \
         window_to, requested_by) VALUES ($1, 'cancelled', 'csv', 'none', now(), now(), 'old')",
    )
    .bind(legacy)
    .execute(&env.pool)
    .await
    .expect("legacy job");
    let path = format!("/admin/audit/exports/{legacy}");
    assert_eq!(
        call(admin.port, "GET", &alice, &path, &Value::Null).await.0,
        404
    );
    assert_eq!(
        call(admin.port, "GET", &root, &path, &Value::Null).await.0,
        200
    );

    // A schedule and the archive it fires belong to Alice too.
    let (status, _, schedule) = call(
        admin.port,
        "POST",
        &alice,
        "/admin/audit/export-schedules",
        &json!({"cron": "* * * * *", "window": "previous_minute"}),
    )
    .await;
    assert_eq!(status, 201, "{schedule}");
    let schedule_id = schedule["id"].as_str().expect("id").to_owned();
    let schedule_path = format!("/admin/audit/export-schedules/{schedule_id}");
    assert!(
        !listed(&admin, &bob, "/admin/audit/export-schedules", "schedules")
            .await
            .contains(&schedule_id)
    );
    assert_eq!(
        call(admin.port, "GET", &bob, &schedule_path, &Value::Null)
            .await
            .0,
        404
    );
    assert_eq!(
        call(admin.port, "GET", &root, &schedule_path, &Value::Null)
            .await
            .0,
        200
    );
    // Fire it now rather than at the next minute.
    sqlx::query("UPDATE auditline.export_schedules SET next_run_at = now() WHERE id = $1::uuid")
        .bind(&schedule_id)
        .execute(&env.pool)
        .await
        .expect("due");
    let fired = wait_until(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM auditline.export_jobs WHERE schedule_id = $1::uuid AND state = 'done'",
        )
        .bind(&schedule_id)
        .fetch_one(&env.pool)
        .await
        .expect("count")
            > 0
    })
    .await;
    assert!(fired, "the schedule fired a job");
    let archive: String = sqlx::query_scalar(
        "SELECT id::text FROM auditline.export_jobs WHERE schedule_id = $1::uuid LIMIT 1",
    )
    .bind(&schedule_id)
    .fetch_one(&env.pool)
    .await
    .expect("archive");
    let archive_path = format!("/admin/audit/exports/{archive}");
    let (status, _, job) = call(admin.port, "GET", &alice, &archive_path, &Value::Null).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["owner_token_id"], alice[4..16]);
    assert_eq!(
        call(admin.port, "GET", &bob, &archive_path, &Value::Null)
            .await
            .0,
        404
    );
    assert_eq!(
        call(admin.port, "DELETE", &bob, &archive_path, &Value::Null)
            .await
            .0,
        404
    );
    // Its owner may read it but not delete it: scheduled archives are the admin's to delete.
    let (status, _, body) = call(admin.port, "DELETE", &alice, &archive_path, &Value::Null).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, job) = call(admin.port, "GET", &alice, &archive_path, &Value::Null).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("done")),
        "{job}"
    );
    let (status, _, job) = call(admin.port, "DELETE", &root, &archive_path, &Value::Null).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("expired")),
        "{job}"
    );
    // Bob cannot delete Alice's schedule either; Alice can.
    assert_eq!(
        call(admin.port, "DELETE", &bob, &schedule_path, &Value::Null)
            .await
            .0,
        404
    );
    assert_eq!(
        call(admin.port, "DELETE", &alice, &schedule_path, &Value::Null)
            .await
            .0,
        200
    );
    admin.stop().await;
    env.cleanup().await;
}

/// A TCP server that accepts connections and never answers: an object store
/// that hangs, so that export jobs writing there stay running (and those
/// behind them queued).
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (address, task)
}

#[actix_web::test]
async fn the_sixth_queued_job_of_one_token_is_429_with_retry_after() {
    let env = TestEnv::new().await;
    let (endpoint, hole) = black_hole().await;
    let mut settings = env.settings.clone();
    settings.exports.destinations.insert(
        "stuck".into(),
        auditline_shared::settings::S3Destination {
            bucket: "stuck".into(),
            prefix: String::new(),
            endpoint: Some(endpoint),
            region: "us-east-1".into(),
            access_key_id: Some("test".into()),
            secret_access_key: Some(auditline_shared::settings::Secret::new("test")),
            allow_http: true,
        },
    );
    assert_eq!(settings.exports.max_queued_per_token, 5, "the default");
    let admin = InProcessAdmin::start_with(settings).await;
    let greedy = env.named_token("greedy", &[Scope::Export]).await;
    let modest = env.named_token("modest", &[Scope::Export]).await;
    let body = json!({"format": "csv", "destination": "stuck"});
    for n in 1..=5 {
        let (status, _, job) = new_job(&admin, &greedy, body.clone()).await;
        assert_eq!(status, 202, "job {n}: {job}");
    }
    let (status, headers, refusal) = new_job(&admin, &greedy, body.clone()).await;
    assert_eq!(status, 429, "{refusal}");
    assert_eq!(refusal["error"]["code"], "too_many_jobs", "{refusal}");
    assert!(
        header(&headers, "retry-after")
            .parse::<u64>()
            .is_ok_and(|s| s > 0),
        "{headers:?}"
    );
    let (queued, running): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running') \
         FROM auditline.export_jobs",
    )
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(queued + running, 5, "the refused job was not queued");

    // The quota is per token: another token still queues.
    let (status, _, job) = new_job(&admin, &modest, body.clone()).await;
    assert_eq!(status, 202, "{job}");
    // Cancelling one makes room again.
    let ids = listed(&admin, &greedy, "/admin/audit/exports?state=queued", "jobs").await;
    let (status, _, _) = call(
        admin.port,
        "DELETE",
        &greedy,
        &format!("/admin/audit/exports/{}", ids[0]),
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, job) = new_job(&admin, &greedy, body).await;
    assert_eq!(status, 202, "{job}");
    admin.stop().await;
    hole.abort();
    env.cleanup().await;
}

/// `n` events straight into the table (the pipeline is tested elsewhere),
/// some 300 bytes of CSV each: an export of them is a dozen chunks of
/// 5,000 rows, more than every buffer between the database and a client
/// that does not read (socket buffers, the response queue, the read-ahead).
async fn insert_many(env: &TestEnv, n: i64) {
    sqlx::query(
        "INSERT INTO auditline.events (event_id, occurred_at, received_at, batch_id, service, \
         session_id, user_id, action_type, endpoint, http_method, success, metadata) \
         SELECT gen_random_uuid(), now() - interval '1 hour' + i * (interval '1 hour' / $1), \
                now(), '00000000-0000-0000-0000-000000000003', 'many', 'sess', 'user-' || i, \
                'file', '/files/' || i, 'GET', true, \
                jsonb_build_object('note', repeat(md5(i::text), 4)) \
         FROM generate_series(0, $1 - 1) AS i",
    )
    .bind(n)
    .execute(&env.pool)
    .await
    .expect("rows");
}

/// Starts a streamed export of everything and reads only its first bytes: a
/// reader that stops reading (its socket takes little).
async fn stalled_export(admin: &InProcess, token: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer size");
    let mut stream = socket
        .connect(([127, 0, 0, 1], admin.port).into())
        .await
        .expect("connect");
    let request = format!(
        "GET /admin/audit/export?format=csv&from=2000-01-01T00:00:00Z HTTP/1.1\r\n\
         Host: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await.expect("the answer begins");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    stream
}

/// When the oldest transaction of the test's database that has sat idle
/// for a second began: an export's snapshot waiting on its reader.
async fn waiting_snapshot(env: &TestEnv) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar(
        "SELECT min(xact_start) FROM pg_stat_activity \
         WHERE datname = current_database() AND state = 'idle in transaction' \
           AND now() - state_change > interval '1 second'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("pg_stat_activity")
}

/// Transactions of the test's database begun at `since` or before.
async fn transactions_since(env: &TestEnv, since: chrono::DateTime<chrono::Utc>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND xact_start <= $1",
    )
    .bind(since)
    .fetch_one(&env.pool)
    .await
    .expect("pg_stat_activity")
}

async fn export_status(admin: &InProcess, token: &str) -> (u16, Vec<(String, String)>, Value) {
    let (status, headers, body) = http_raw(
        admin.port,
        "GET",
        "/admin/audit/export?format=ndjson&service=none",
        &[("Authorization", format!("Bearer {token}").as_str())],
        &[],
    )
    .await;
    let body = serde_json::from_slice(&body.unwrap_or_default()).unwrap_or(Value::Null);
    (status, headers, body)
}

#[actix_web::test]
async fn a_second_streamed_export_beyond_the_cap_is_503_while_a_slow_reader_holds_the_first() {
    let env = TestEnv::new().await;
    insert_many(&env, 200_000).await;
    let mut settings = env.settings.clone();
    settings.exports.max_streams = 1;
    let admin = InProcessAdmin::start_with(settings).await;
    let token = env.named_token("exporter", &[Scope::Export]).await;

    let slow = stalled_export(&admin, &token).await;
    let (status, headers, body) = export_status(&admin, &token).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too_many_exports", "{body}");
    assert!(
        header(&headers, "retry-after")
            .parse::<u64>()
            .is_ok_and(|s| s > 0),
        "{headers:?}"
    );
    // Searches are not exports: they go on.
    let (status, page) = admin
        .get_json(
            Some(&env.named_token("reader", &[Scope::Read]).await),
            "/admin/audit/logs?limit=1",
        )
        .await;
    assert_eq!(status, 200, "{page}");
    drop(slow);
    admin.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn a_reader_that_stops_reading_is_cut_and_its_snapshot_released() {
    let env = TestEnv::new().await;
    insert_many(&env, 200_000).await;
    let mut settings = env.settings.clone();
    settings.exports.max_streams = 1;
    settings.exports.stream_send_timeout_secs = 3;
    let admin = InProcessAdmin::start_with(settings).await;
    let token = env.named_token("exporter", &[Scope::Export]).await;

    let mut slow = stalled_export(&admin, &token).await;
    // The export waits on its reader, inside its snapshot…
    let start = std::time::Instant::now();
    let snapshot = loop {
        if let Some(began) = waiting_snapshot(&env).await {
            break began;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the stalled export holds a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // …until the send time-out cuts it: the snapshot is rolled back, its
    // connection is back in the pool and the slot is free.
    let released = wait_until(Duration::from_secs(20), || async {
        transactions_since(&env, snapshot).await == 0
            && export_status(&admin, &token).await.0 == 200
    })
    .await;
    assert!(
        released,
        "the stalled export's snapshot and slot were released ({} old transactions, export: {:?})",
        transactions_since(&env, snapshot).await,
        export_status(&admin, &token).await
    );
    let (status, page) = admin
        .get_json(
            Some(&env.named_token("reader", &[Scope::Read]).await),
            "/admin/audit/logs?limit=1",
        )
        .await;
    assert_eq!(status, 200, "{page}");

    // Reading on, the client finds the transfer cut: no last chunk.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection ended");
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "a cut transfer, not a whole file"
    );
    admin.stop().await;
    env.cleanup().await;
}
