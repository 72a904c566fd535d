//! The admin HTTP service: building it (state, workers, routes), serving and stopping.

use actix_web::{
    App, HttpMessage, HttpRequest, HttpResponse, HttpServer,
    dev::{Server, Service},
    http::StatusCode,
    web,
};
use anyhow::Context;
use auditline_client::{AuditConfig, AuditMetadata, AuditMiddleware, Publisher, spool::Spool};
use auditline_shared::{
    Settings, auth::TokenStore, db, error::ErrorBody, metrics::metrics_handler, redact::Redactor,
};
use prometheus::Registry;
use serde_json::json;
use std::{future::Future, net::TcpListener, sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::{
    audit::recorded_metadata,
    openapi::ApiDoc,
    query::cursor::CursorKey,
    routes::{self, get},
    state::State,
    workers,
};

/// A built, not yet running admin service.
pub struct Application {
    port: u16,
    server: Server,
    /// The background workers (job runner, live consumer, token watch,
    /// checkpointer, retention), named, and what tells them to stop.
    workers: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    stop: CancellationToken,
    /// Admin calls are audit events: at shutdown they are published or spooled.
    audit: AuditMiddleware,
}

/// How long stopping workers may take to finish their step (a checkpoint,
/// a day of retention) before they are aborted.
const WORKERS_GRACE: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds `admin_listen`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_registry(settings, Registry::new()).await
    }

    /// [`Application::build`] with a registry shared with other services of
    /// the same process (`auditline all`).
    pub async fn build_with_registry(
        settings: Settings,
        registry: Registry,
    ) -> anyhow::Result<Self> {
        let pool = db::pool(&settings.database_url, 8)?;
        let cursor_key = CursorKey::load(&pool)
            .await
            .context("cannot read the cursor key (did `auditline migrate` run?)")?;
        let (audit, recorder, redactor) = self_audit(&settings, &registry)?;
        let storage = auditline_integrity::storage::Storage::new(
            std::path::PathBuf::from(&settings.export_dir),
            &settings.exports,
        )?;
        check_destinations(&settings, &storage)?;
        let keys = Arc::new(auditline_integrity::checkpoint::Keys::from_settings(
            &settings.integrity,
        )?);
        let hub = Arc::new(workers::live::Hub::new(
            settings.stream.clone(),
            workers::live::StreamMetrics::register(&registry)?,
        ));
        let state = State {
            pool: pool.clone(),
            cursor_key,
            storage,
            jobs_waiting: Arc::new(tokio::sync::Notify::new()),
            hub,
            keys,
            integrity: settings.integrity.clone(),
            exports: settings.exports.clone(),
            export_streams: Arc::new(tokio::sync::Semaphore::new(settings.exports.max_streams)),
            recorder,
        };
        let stop = CancellationToken::new();
        let background = start_workers(&settings, &registry, &state, &stop)?;
        let listener = TcpListener::bind(&settings.admin_listen)
            .with_context(|| format!("cannot listen on {}", settings.admin_listen))?;
        let port = listener.local_addr()?.port();
        let server = serve(listener, state, registry, redactor, audit.clone())?;
        Ok(Self {
            port,
            server,
            workers: background,
            stop,
            audit,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then finishes requests in flight.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        let outcome = tokio::select! {
            result = server => result.context("admin HTTP server failed"),
            () = shutdown => { handle.stop(true).await; Ok(()) }
        };
        // The events of the last calls are published or spooled (once the
        // HTTP server's workers, stopping, have handed them over).
        self.audit
            .shutdown(auditline_client::middleware::SHUTDOWN_GRACE)
            .await;
        // The workers finish their step and stop: a running export job is
        // queued again for another instance, a checkpoint or a retention
        // drop in progress completes (and releases its advisory lock).
        self.stop.cancel();
        // One deadline for all of them, not a grace each.
        let deadline = tokio::time::Instant::now() + WORKERS_GRACE;
        for (name, mut task) in self.workers {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(worker = name, error = %e, "admin worker failed"),
                Err(_) => {
                    tracing::warn!(worker = name, "admin worker did not stop in time; aborted");
                    task.abort();
                }
            }
        }
        outcome
    }
}

/// The admin service's own requests are audit events, published like any
/// app's; they spool beside the gateway's spool while the broker is away.
/// Answers the middleware, a publisher for the events that are not requests
/// (stream subscriptions) and the redaction rule.
fn self_audit(
    settings: &Settings,
    registry: &Registry,
) -> anyhow::Result<(AuditMiddleware, Publisher, Redactor)> {
    let publisher = Publisher::new(&settings.client(), "auditline-admin");
    publisher.register_metrics(registry)?;
    let spool = Arc::new(Spool::open(
        format!("{}-admin", settings.ingest.spool_dir.trim_end_matches('/')),
        settings.ingest.spool_max_bytes,
    )?);
    let redactor = Redactor::new(&settings.audit.redact_params);
    let mut audit_config = AuditConfig::new("auditline-admin");
    audit_config.redact = redactor.clone();
    let recorder = publisher.clone();
    let audit = AuditMiddleware::start(audit_config, publisher, spool)?;
    Ok((audit, recorder, redactor))
}

/// Refuses to start with a checkpoint or archive destination that is not
/// configured.
fn check_destinations(
    settings: &Settings,
    storage: &auditline_integrity::storage::Storage,
) -> anyhow::Result<()> {
    storage
        .check(&settings.integrity.checkpoint_destination)
        .map_err(|e| anyhow::anyhow!("integrity.checkpoint_destination: {e}"))?;
    if settings.partitions.retention_days.is_some() {
        storage
            .check(&settings.partitions.archive_destination)
            .map_err(|e| anyhow::anyhow!("partitions.archive_destination: {e}"))?;
    }
    Ok(())
}

/// Starts the background workers, each stopping when `stop` is cancelled.
fn start_workers(
    settings: &Settings,
    registry: &Registry,
    state: &State,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<(&'static str, tokio::task::JoinHandle<()>)>> {
    let runner = workers::jobs::Runner {
        pool: state.pool.clone(),
        storage: state.storage.clone(),
        settings: settings.exports.clone(),
        instance: format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "admin".into()),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ),
        metrics: workers::jobs::JobMetrics::register(registry)?,
        wake: state.jobs_waiting.clone(),
        checkpoint_destination: settings.integrity.checkpoint_destination.clone(),
    };
    let mut started = vec![
        ("export job runner", tokio::spawn(runner.run(stop.clone()))),
        (
            "live stream consumer",
            tokio::spawn(workers::live::consume(
                settings.amqp_url.clone(),
                auditline_shared::amqp::Topology::new(&settings.namespace).live_exchange,
                state.hub.clone(),
                stop.clone(),
            )),
        ),
        (
            "stream token watch",
            tokio::spawn(workers::live::watch_tokens(
                state.pool.clone(),
                state.hub.clone(),
                stop.clone(),
            )),
        ),
    ];
    let checkpoint_metrics = auditline_integrity::checkpointer::Metrics::register(registry)?;
    if settings.integrity.checkpoint_interval_secs > 0 {
        started.push((
            "checkpointer",
            tokio::spawn(auditline_integrity::checkpointer::run(
                state.pool.clone(),
                state.storage.clone(),
                settings.integrity.checkpoint_destination.clone(),
                state.keys.clone(),
                Duration::from_secs(settings.integrity.checkpoint_interval_secs),
                checkpoint_metrics,
                stop.clone(),
            )),
        ));
    }
    if let Some(days) = settings.partitions.retention_days {
        started.push((
            "retention",
            tokio::spawn(auditline_integrity::retention::run(
                state.pool.clone(),
                state.storage.clone(),
                settings.partitions.archive_destination.clone(),
                state.keys.clone(),
                days,
                Duration::from_secs(3600),
                stop.clone(),
            )),
        ));
    }
    Ok(started)
}

/// The HTTP server: the OpenAPI document, the dashboard, the audited
/// `/admin/audit` scope (every call recorded whole, or refused), `/metrics`
/// and the health checks.
fn serve(
    listener: TcpListener,
    state: State,
    registry: Registry,
    redactor: Redactor,
    audit: AuditMiddleware,
) -> anyhow::Result<Server> {
    let tokens = web::Data::new(TokenStore(state.pool.clone()));
    let state = web::Data::new(state);
    let registry = web::Data::new(registry);
    let openapi = web::Data::new(
        ApiDoc::openapi()
            .to_pretty_json()
            .context("cannot render the OpenAPI document")?,
    );
    Ok(HttpServer::new(move || {
        let redactor = redactor.clone();
        App::new()
            .app_data(state.clone())
            .app_data(tokens.clone())
            .app_data(registry.clone())
            .app_data(openapi.clone())
            .service(get("/admin/openapi.json", web::get().to(openapi_json)))
            .configure(routes::dashboard::configure)
            .service(
                web::scope("/admin/audit")
                    .wrap_fn(move |req, srv| {
                        let served =
                            match recorded_metadata(req.path(), req.query_string(), &redactor) {
                                Ok(metadata) => {
                                    if !metadata.is_empty() {
                                        req.extensions_mut().insert(AuditMetadata(metadata));
                                    }
                                    Ok(srv.call(req))
                                }
                                Err(refused) => Err(refused),
                            };
                        async move {
                            match served {
                                Ok(call) => call.await,
                                Err(refused) => Err(refused.into()),
                            }
                        }
                    })
                    .wrap(audit.clone())
                    .configure(routes::configure)
                    .default_service(web::to(not_found)),
            )
            .service(get("/metrics", web::get().to(metrics_handler)))
            .service(get("/healthz", web::get().to(healthz)))
            .service(get("/readyz", web::get().to(readyz)))
            .default_service(web::to(not_found))
    })
    .disable_signals()
    .listen(listener)?
    .run())
}

async fn openapi_json(doc: web::Data<String>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.get_ref().clone())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    let ping = sqlx::query("SELECT 1").execute(&state.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => HttpResponse::Ok().json(json!({"status": "ready"})),
        _ => ErrorBody::new("not_ready", "the database is unreachable")
            .response(StatusCode::SERVICE_UNAVAILABLE),
    }
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ErrorBody::new(
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    )
    .response(StatusCode::NOT_FOUND)
}
