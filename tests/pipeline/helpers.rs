//! Test harness: each test gets its own PostgreSQL database and its own
//! broker namespace, so tests run in parallel against the real servers.

use auditline_client::Publisher;
use auditline_shared::{
    AuditEvent, Settings, amqp, db,
    settings::{Secret, SecretUrl},
    signing::SigningKey,
    telemetry,
};
use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
};
use serde_json::json;
use sqlx::PgPool;
use std::{
    future::Future,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use uuid::Uuid;

const ACTIONS: [&str; 6] = ["file", "code_exec", "admin", "auth", "data", "other"];

/// The server the tests create their databases on, as the design fixes it.
const SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432";
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh database and namespace. `cleanup().await` removes them (its
/// database, its queues, its directory); a test that panics before it gets
/// there has them removed when the environment drops.
pub struct TestEnv {
    pub id: String,
    pub db_name: String,
    pub settings: Settings,
    pub pool: PgPool,
    created: Instant,
    cleaned: bool,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::migrated_to(None).await
    }

    /// A fresh environment whose database has the migrations up to
    /// `version` only (all with `None`): for testing a migration on data
    /// stored before it.
    pub async fn migrated_to(version: Option<i64>) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            telemetry::init(auditline_shared::settings::LogFormat::Text);
        }
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let db_name = format!("auditline_test_{id}");
        let admin = PgPool::connect(ADMIN_URL)
            .await
            .expect("PostgreSQL is reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let mut settings = Settings {
            database_url: SecretUrl::new(format!("{SERVER_URL}/{db_name}")),
            ..Settings::default()
        };
        if let Ok(url) = std::env::var("AUDITLINE_AMQP_URL") {
            settings.amqp_url = SecretUrl::new(url);
        }
        settings.namespace = format!("test-{id}");
        settings.writer_listen = "127.0.0.1:0".into();
        settings.writer.writer_id = Some(format!("test-writer-{id}"));
        settings.ingest.spool_dir = std::env::temp_dir()
            .join(format!("auditline-test-{id}/spool"))
            .to_string_lossy()
            .into_owned();
        settings.export_dir = std::env::temp_dir()
            .join(format!("auditline-test-{id}/exports"))
            .to_string_lossy()
            .into_owned();
        // A job whose admin died is taken over quickly in tests.
        settings.exports.claim_timeout_secs = 3;
        // Checkpoints of the seal chains follow the writes closely.
        settings.integrity.checkpoint_interval_secs = 2;
        // Installed as an operator should: signed checkpoints and seals.
        let (checkpoint_key, _) = SigningKey::generate().expect("checkpoint key");
        let (writer_key, _) = SigningKey::generate().expect("writer key");
        settings.integrity.signing_key = Some(Secret::new(checkpoint_key));
        settings.integrity.writer_key = Some(Secret::new(writer_key));
        let pool = db::pool(&settings.database_url, 4).expect("pool");
        match version {
            None => db::migrate(&pool).await.expect("migrations run"),
            Some(version) => db::MIGRATOR
                .run_to(version, &pool)
                .await
                .expect("migrations run"),
        }
        db::ensure_runway(&pool, settings.partitions.ahead_days)
            .await
            .expect("partitions");
        Self {
            id,
            db_name,
            settings,
            pool,
            created: Instant::now(),
            cleaned: false,
        }
    }

    pub async fn publisher(&self) -> Publisher {
        Publisher::connect(&self.settings.client(), "test-publisher")
            .await
            .expect("publisher connects")
    }

    pub async fn count(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM auditline.events")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Events the writers have processed, duplicates included.
    pub async fn processed(&self) -> i64 {
        sqlx::query_scalar("SELECT coalesce(sum(event_count), 0)::bigint FROM auditline.batches")
            .fetch_one(&self.pool)
            .await
            .expect("processed")
    }

    /// Waits until `count(*)` reaches `want` (and fails if it goes past it).
    pub async fn wait_for_rows(&self, want: i64, timeout: Duration) {
        let ok = wait_until(timeout, || async {
            let (n, _) = self.count().await;
            assert!(n <= want, "more rows ({n}) than events published ({want})");
            n == want
        })
        .await;
        let (n, distinct) = self.count().await;
        assert!(ok, "timed out: {n} of {want} events stored");
        assert_eq!(n, distinct, "an event is stored twice");
    }

    /// Waits until the writers' rollup keepers have folded every committed batch.
    pub async fn wait_rollups(&self) {
        let done = wait_until(Duration::from_secs(30), || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM auditline.rollup_pending")
                .fetch_one(&self.pool)
                .await
                .expect("pending")
                == 0
        })
        .await;
        assert!(done, "rollups did not catch up");
    }

    /// Every id in `ids` is stored exactly once and nothing else is stored.
    pub async fn assert_exactly(&self, ids: &[Uuid]) {
        let (n, distinct) = self.count().await;
        assert_eq!(n, distinct, "duplicates stored");
        assert_eq!(
            n,
            ids.len() as i64,
            "stored rows differ from the confirmed events"
        );
        let found: i64 =
            sqlx::query_scalar("SELECT count(*) FROM auditline.events WHERE event_id = ANY($1)")
                .bind(ids)
                .fetch_one(&self.pool)
                .await
                .expect("lookup");
        assert_eq!(found, ids.len() as i64, "a confirmed event is missing");
    }

    /// Runs `auditline verify` over everything: every seal and row must check out.
    pub async fn assert_verifies(&self) {
        let (code, stdout, stderr) = Process::output(self, &["verify", "--json"], &[]).await;
        assert_eq!(code, 0, "verify found something: {stdout} {stderr}");
    }

    /// Takes every message from `<ns>.dead`, with its reason header.
    pub async fn dead_letters(&self) -> Vec<(Vec<u8>, Option<String>)> {
        let conn = amqp::connect(&self.settings.amqp_url, "test-dead-reader")
            .await
            .expect("amqp");
        let channel = conn.create_channel().await.expect("channel");
        let queue = format!("{}.dead", self.settings.namespace);
        let mut out = Vec::new();
        while let Some(msg) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let reason = amqp::header_text(
                msg.delivery.properties.headers().as_ref(),
                amqp::REASON_HEADER,
            );
            out.push((msg.delivery.data.clone(), reason));
        }
        out
    }

    /// Takes dead letters until `n` arrived or 10 s passed.
    pub async fn wait_dead_letters(&self, n: usize) -> Vec<(Vec<u8>, Option<String>)> {
        let mut dead = Vec::new();
        for _ in 0..100 {
            dead.extend(self.dead_letters().await);
            if dead.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        dead
    }

    /// Publishes raw bodies to `<ns>.events`, confirmed.
    pub async fn publish_raw(&self, messages: &[(&str, Vec<u8>)]) {
        let plain: Vec<_> = messages
            .iter()
            .map(|(content_type, body)| (*content_type, None, body.clone()))
            .collect();
        self.publish_encoded(&plain).await;
    }

    /// Publishes raw bodies with a content type and content encoding, confirmed.
    pub async fn publish_encoded(&self, messages: &[(&str, Option<&str>, Vec<u8>)]) {
        let conn = amqp::connect(&self.settings.amqp_url, "test-raw")
            .await
            .expect("amqp");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for (content_type, encoding, body) in messages {
            let mut properties = BasicProperties::default()
                .with_content_type((*content_type).into())
                .with_delivery_mode(2);
            if let Some(encoding) = encoding {
                properties = properties.with_content_encoding((*encoding).into());
            }
            let confirm = channel
                .basic_publish(
                    format!("{}.events", self.settings.namespace)
                        .as_str()
                        .into(),
                    "raw.test".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    properties,
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(confirm.is_ack(), "raw publish refused");
        }
    }

    /// Drops the database and the namespace's exchanges and queues.
    pub async fn cleanup(mut self) {
        self.pool.close().await;
        remove(&self.id, &self.db_name, &self.settings, self.created).await;
        self.cleaned = true;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A test that failed (or forgot): remove what it made from a thread
        // of its own, since the test's runtime may be the one dropping us.
        let (id, db_name, settings, created) = (
            self.id.clone(),
            self.db_name.clone(),
            self.settings.clone(),
            self.created,
        );
        let removing = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(remove(&id, &db_name, &settings, created));
            }
        });
        let _ = removing.join();
    }
}

/// Deletes a test environment's directory, queues and database.
async fn remove(id: &str, db_name: &str, settings: &Settings, created: Instant) {
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("auditline-test-{id}")));
    // RabbitMQ 3.10 crashes the dead-letter worker of a quorum queue
    // deleted while that worker is still checking in (just after the queue
    // was declared); a burst of such crashes from fast tests kills its
    // supervisor, and then every queue declaration fails until the broker
    // restarts. A queue a second old is past that window: only a test
    // younger than that waits.
    let young = Duration::from_secs(1).saturating_sub(created.elapsed());
    tokio::time::sleep(young).await;
    if let Ok(conn) = amqp::connect(&settings.amqp_url, "test-cleanup").await
        && let Ok(channel) = conn.create_channel().await
    {
        amqp::Topology::new(&settings.namespace)
            .delete(&channel)
            .await;
    }
    if let Ok(admin) = PgPool::connect(ADMIN_URL).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check().await
}

/// A valid event of `service` at `at`.
pub fn event_at(service: &str, at: DateTime<Utc>, n: usize) -> AuditEvent {
    let json = json!({
        "occurred_at": at.to_rfc3339(),
        "service": service,
        "session_id": format!("sess-{}", n % 97),
        "user_id": format!("user-{}", n % 31),
        "client_ip": "192.0.2.10",
        "action_type": ACTIONS[n % 6],
        "endpoint": format!("/files/{n}"),
        "route": "/files/{id}",
        "http_method": "GET",
        "status_code": if n.is_multiple_of(10) { 500 } else { 200 },
        "success": !n.is_multiple_of(10),
        "response_time_ms": (n % 300) as f64,
        "metadata": {"n": n}
    });
    AuditEvent::parse(json.to_string().as_bytes()).expect("test event is valid")
}

pub fn events(n: usize) -> Vec<AuditEvent> {
    let now = Utc::now();
    (0..n).map(|i| event_at("tests", now, i)).collect()
}

/// The real `auditline` binary running as a child process.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn spawn(env: &TestEnv, args: &[&str]) -> Self {
        Self::spawn_with(env, args, &[])
    }

    /// With extra environment variables (they win over the test's settings).
    pub fn spawn_with(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Self {
        let mut command = Self::command(env, args, vars);
        if std::env::var_os("TEST_LOG").is_none() {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
        Self {
            child: command.spawn().expect("spawn auditline"),
        }
    }

    /// Runs a command to its end: exit code, standard output, standard error.
    pub async fn output(
        env: &TestEnv,
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> (i32, String, String) {
        let mut command = tokio::process::Command::from(Self::command(env, args, vars));
        let out = command.output().await.expect("run auditline");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The binary with the test's settings in its environment.
    fn command(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_auditline"));
        command
            .args(args)
            .env("AUDITLINE_DATABASE_URL", env.settings.database_url.expose())
            .env("AUDITLINE_AMQP_URL", env.settings.amqp_url.expose())
            .env("AUDITLINE_NAMESPACE", &env.settings.namespace)
            .env("AUDITLINE_WRITER_LISTEN", "127.0.0.1:0")
            .env(
                "AUDITLINE_WRITER__WRITER_ID",
                format!("test-writer-{}", env.id),
            )
            .env(
                "AUDITLINE_INGEST__SPOOL_DIR",
                &env.settings.ingest.spool_dir,
            )
            .env("AUDITLINE_EXPORT_DIR", &env.settings.export_dir)
            .env(
                "AUDITLINE_EXPORTS__CLAIM_TIMEOUT_SECS",
                env.settings.exports.claim_timeout_secs.to_string(),
            )
            .envs(
                [
                    (
                        "AUDITLINE_INTEGRITY__SIGNING_KEY",
                        &env.settings.integrity.signing_key,
                    ),
                    (
                        "AUDITLINE_INTEGRITY__WRITER_KEY",
                        &env.settings.integrity.writer_key,
                    ),
                ]
                .into_iter()
                .filter_map(|(name, key)| key.as_ref().map(|k| (name, k.expose()))),
            )
            .envs(vars.iter().copied())
            .stdin(Stdio::null());
        command
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for exit; returns the exit code (None if killed by a signal).
    pub async fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                eprintln!("auditline child exited: {status}");
                return status.code();
            }
            assert!(
                start.elapsed() < timeout,
                "process did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service running inside the test's actix system until stopped.
pub struct InProcess {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Runs `run_until_stopped`-style `run` with a shutdown future.
    fn spawn<Fut>(
        port: u16,
        run: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()>>>) -> Fut,
    ) -> Self
    where
        Fut: Future<Output = anyhow::Result<()>> + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = actix::spawn(run(Box::pin(async move {
            let _ = rx.await;
        })));
        Self {
            port,
            stop: Some(tx),
            done,
        }
    }

    /// Graceful stop; fails the test if the service did not stop cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.done)
            .await
            .expect("service task")
            .expect("service stops cleanly");
    }
}

/// The writer in-process (port 0).
pub struct InProcessWriter;

impl InProcessWriter {
    pub async fn start(env: &TestEnv) -> InProcess {
        Self::start_with(env.settings.clone()).await
    }

    pub async fn start_with(settings: Settings) -> InProcess {
        let app = auditline_writer::Application::build(settings)
            .await
            .expect("writer builds");
        InProcess::spawn(app.port(), |stop| app.run_until_stopped(stop))
    }
}

/// A plain HTTP/1.1 request on 127.0.0.1; returns status, headers (lower-case
/// names) and body.
pub async fn http_raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Option<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write head");
    // The server may answer (413, 401) and close before reading everything.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw.get(split + 4..).unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        Some(body.to_vec())
    };
    (status, headers, body)
}

/// [`http_raw`] with the body as text (an unfinished chunked body as it came).
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let (status, headers, body) = http_raw(port, method, path, headers, body).await;
    let body = body.unwrap_or_else(|| b"<unfinished chunked body>".to_vec());
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The body of a chunked response; `None` when it ended without the last
/// (empty) chunk, i.e. the server cut it short.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..line]).ok()?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        let rest = &body[line + 2..];
        if n == 0 {
            return Some(out);
        }
        if rest.len() < n + 2 {
            return None;
        }
        out.extend_from_slice(&rest[..n]);
        body = &rest[n + 2..];
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1; returns status and body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let (status, _, body) = http(port, "GET", path, &[], &[]).await;
    (status, body)
}

/// Settings whose broker is reached through a proxy the test controls, with a
/// short gateway publish timeout.
pub async fn behind_proxy(env: &TestEnv) -> (Proxy, Settings) {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut settings = env.settings.clone();
    settings.amqp_url = SecretUrl::new(format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port));
    settings.ingest.publish_timeout_ms = 300;
    (proxy, settings)
}

/// A TCP proxy in front of a real server, which a test can cut (close every
/// open connection), take down (refuse new ones) or pause (hold every byte,
/// as a stalled server would) without touching the server.
pub struct Proxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    paused: tokio::sync::watch::Sender<bool>,
}

/// Copies `from` to `to`, holding what it read while the proxy is paused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    pub async fn start(target: &'static str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let (paused, paused_rx) = tokio::sync::watch::channel(false);
        let accepting = up.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                cut_rx.mark_unchanged();
                let paused = paused_rx.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = pump(in_read, out_write, paused.clone()) => {}
                        _ = pump(out_read, in_write, paused) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            up,
            cut,
            paused,
        }
    }

    /// Holds (or lets through again) every byte in both directions: the
    /// connections stay open, as with a server that stalls.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Closes every connection currently open through the proxy.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Refuses (or accepts again) new connections.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The ingest gateway in-process (port 0).
pub struct InProcessIngest;

impl InProcessIngest {
    pub async fn start_with(mut settings: Settings) -> InProcess {
        settings.ingest_listen = "127.0.0.1:0".into();
        let app = auditline_ingest::gateway::Application::build(settings)
            .await
            .expect("gateway builds");
        InProcess::spawn(app.port(), |stop| app.run_until_stopped(stop))
    }
}

impl InProcess {
    /// POSTs to /v1/events; returns status, headers and the JSON body.
    pub async fn post(
        &self,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, serde_json::Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", content_type)];
        if let Some(auth) = auth.as_deref() {
            headers.push(("Authorization", auth));
        }
        let (status, headers, body) = http(self.port, "POST", "/v1/events", &headers, body).await;
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("JSON body expected, got {status}: {body:?}"));
        (status, headers, json)
    }
}

impl TestEnv {
    /// Creates a token directly in the database; returns its secret.
    pub async fn token(
        &self,
        scopes: &[auditline_shared::auth::Scope],
        service: Option<&str>,
    ) -> String {
        let (_, secret) = auditline_shared::auth::create(
            &self.pool,
            auditline_shared::auth::NewToken {
                name: "test".into(),
                scopes: scopes.to_vec(),
                service: service.map(str::to_owned),
                expires_at: None,
            },
        )
        .await
        .expect("token created");
        secret
    }

    /// Messages waiting in `<ns>.writer` (nothing consumes it unless a writer runs).
    pub async fn queued(&self) -> u32 {
        let conn = amqp::connect(&self.settings.amqp_url, "test-depth")
            .await
            .expect("amqp");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .queue_declare(
                format!("{}.writer", self.settings.namespace)
                    .as_str()
                    .into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("queue exists")
            .message_count()
    }
}

/// A free port on 127.0.0.1 (for child processes that must be told one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The admin service in-process (port 0).
pub struct InProcessAdmin;

impl InProcessAdmin {
    pub async fn start(env: &TestEnv) -> InProcess {
        Self::start_with(env.settings.clone()).await
    }

    /// With other settings (e.g. a second instance's own spool directory).
    pub async fn start_with(mut settings: auditline_shared::Settings) -> InProcess {
        settings.admin_listen = "127.0.0.1:0".into();
        let app = auditline_admin_api::Application::build(settings)
            .await
            .expect("admin builds");
        InProcess::spawn(app.port(), |stop| app.run_until_stopped(stop))
    }
}

impl InProcess {
    /// GET with a bearer token; returns status and the JSON body.
    pub async fn get_json(&self, token: Option<&str>, path: &str) -> (u16, serde_json::Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(auth) = auth.as_deref() {
            headers.push(("Authorization", auth));
        }
        let (status, _, body) = http(self.port, "GET", path, &headers, &[]).await;
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("JSON body expected from {path}, got {status}: {body:?}"));
        (status, json)
    }
}

impl TestEnv {
    /// Creates a named token directly in the database; returns its secret.
    pub async fn named_token(
        &self,
        name: &str,
        scopes: &[auditline_shared::auth::Scope],
    ) -> String {
        let (_, secret) = auditline_shared::auth::create(
            &self.pool,
            auditline_shared::auth::NewToken {
                name: name.into(),
                scopes: scopes.to_vec(),
                service: None,
                expires_at: None,
            },
        )
        .await
        .expect("token created");
        secret
    }
}

/// A bucket of its own on the S3-compatible server that `deploy/scripts/test.sh`
/// starts (moto's server mode; `TEST_S3_ENDPOINT` names it), read
/// back through the S3 API.
pub struct TestBucket {
    pub endpoint: String,
    pub name: String,
    store: object_store::aws::AmazonS3,
}

impl TestBucket {
    pub async fn create(env: &TestEnv) -> Self {
        let endpoint = std::env::var("TEST_S3_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "TEST_S3_ENDPOINT is not set: run deploy/scripts/test.sh, \
                 which starts an S3-compatible server (moto) for the tests"
            )
        });
        let port: u16 = endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("the endpoint is http://127.0.0.1:<port>");
        auditline_integrity::storage::install_tls_provider();
        let name = format!("auditline-test-{}", env.id);
        let (status, _, body) = http(port, "PUT", &format!("/{name}"), &[], &[]).await;
        assert_eq!(status, 200, "cannot create bucket {name}: {body}");
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_bucket_name(&name)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("S3 client");
        Self {
            endpoint,
            name,
            store,
        }
    }

    /// The settings of a destination writing into this bucket under `prefix`.
    pub fn destination(&self, prefix: &str) -> auditline_shared::settings::S3Destination {
        auditline_shared::settings::S3Destination {
            bucket: self.name.clone(),
            prefix: prefix.to_owned(),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            access_key_id: Some("test".into()),
            secret_access_key: Some(auditline_shared::settings::Secret::new("test")),
            allow_http: true,
        }
    }

    /// Every key in the bucket, sorted.
    pub async fn keys(&self) -> Vec<String> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore;
        let mut keys: Vec<String> = self
            .store
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .expect("list the bucket");
        keys.sort();
        keys
    }

    /// Incomplete multipart uploads in the bucket (S3's `ListMultipartUploads`).
    pub async fn open_uploads(&self) -> String {
        let port: u16 = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("port");
        let (status, _, body) =
            http(port, "GET", &format!("/{}?uploads", self.name), &[], &[]).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn get(&self, key: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt;
        self.store
            .get(&object_store::path::Path::from(key))
            .await
            .unwrap_or_else(|e| panic!("cannot read {key}: {e}"))
            .bytes()
            .await
            .expect("object bytes")
            .to_vec()
    }
}

/// A response header's value ("" when absent); names are lower case.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The value of the series whose line starts with `series` (name and
/// labels) in a Prometheus text page; panics when it is missing.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{metrics}"))
}
