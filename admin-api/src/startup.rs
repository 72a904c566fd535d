//! The admin HTTP service: building it (state, workers, routes), serving and stopping.

use actix_web::{
    App, HttpMessage, HttpRequest, HttpResponse, HttpServer,
    dev::{Server, Service},
    http::StatusCode,
    web,
};
use anyhow::Context;
use auditline_ingest::{AuditConfig, AuditMetadata, AuditMiddleware, Publisher, spool::Spool};
use auditline_shared::{
    Settings,
    auth::TokenStore,
    db,
    error::{ErrorBody, methods, single_method},
    metrics::metrics_handler,
    redact::Redactor,
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
    routes::{export, jobs, live, realtime, schedules, search, users},
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
        // The admin service's own requests are audit events, published like
        // any app's; they spool beside the gateway's spool while the broker is away.
        let publisher = Publisher::new(&settings.client(), "auditline-admin");
        publisher.register_metrics(&registry)?;
        let spool = Arc::new(Spool::open(
            format!("{}-admin", settings.ingest.spool_dir.trim_end_matches('/')),
            settings.ingest.spool_max_bytes,
        )?);
        let redactor = Redactor::new(&settings.audit.redact_params);
        let mut audit_config = AuditConfig::new("auditline-admin");
        audit_config.redact = redactor.clone();
        let recorder = publisher.clone();
        let audit = AuditMiddleware::start(audit_config, publisher, spool)?;
        let audit_handle = audit.clone();
        let jobs_waiting = Arc::new(tokio::sync::Notify::new());
        let storage = auditline_integrity::storage::Storage::new(
            std::path::PathBuf::from(&settings.export_dir),
            &settings.exports,
        )?;
        let runner = workers::jobs::Runner {
            pool: pool.clone(),
            storage: storage.clone(),
            settings: settings.exports.clone(),
            instance: format!(
                "{}-{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "admin".into()),
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            metrics: workers::jobs::JobMetrics::register(&registry)?,
            wake: jobs_waiting.clone(),
            checkpoint_destination: settings.integrity.checkpoint_destination.clone(),
        };
        let stop = CancellationToken::new();
        let runner = tokio::spawn(runner.run(stop.clone()));
        let hub = Arc::new(workers::live::Hub::new(
            settings.stream.clone(),
            workers::live::StreamMetrics::register(&registry)?,
        ));
        let live = tokio::spawn(workers::live::consume(
            settings.amqp_url.clone(),
            auditline_shared::amqp::Topology::new(&settings.namespace).live_exchange,
            hub.clone(),
            stop.clone(),
        ));
        let token_watch = tokio::spawn(workers::live::watch_tokens(
            pool.clone(),
            hub.clone(),
            stop.clone(),
        ));
        let keys = Arc::new(auditline_integrity::checkpoint::Keys::from_settings(
            &settings.integrity,
        )?);
        storage
            .check(&settings.integrity.checkpoint_destination)
            .map_err(|e| anyhow::anyhow!("integrity.checkpoint_destination: {e}"))?;
        let checkpoint_metrics = auditline_integrity::checkpointer::Metrics::register(&registry)?;
        if settings.partitions.retention_days.is_some() {
            storage
                .check(&settings.partitions.archive_destination)
                .map_err(|e| anyhow::anyhow!("partitions.archive_destination: {e}"))?;
        }
        let checkpoints = (settings.integrity.checkpoint_interval_secs > 0).then(|| {
            tokio::spawn(auditline_integrity::checkpointer::run(
                pool.clone(),
                storage.clone(),
                settings.integrity.checkpoint_destination.clone(),
                keys.clone(),
                Duration::from_secs(settings.integrity.checkpoint_interval_secs),
                checkpoint_metrics,
                stop.clone(),
            ))
        });
        let retention = settings.partitions.retention_days.map(|days| {
            tokio::spawn(auditline_integrity::retention::run(
                pool.clone(),
                storage.clone(),
                settings.partitions.archive_destination.clone(),
                keys.clone(),
                days,
                Duration::from_secs(3600),
                stop.clone(),
            ))
        });
        let state = web::Data::new(State {
            pool: pool.clone(),
            cursor_key,
            storage,
            jobs_waiting,
            hub,
            keys,
            integrity: settings.integrity.clone(),
            exports: settings.exports.clone(),
            export_streams: Arc::new(tokio::sync::Semaphore::new(settings.exports.max_streams)),
            recorder,
        });
        let tokens = web::Data::new(TokenStore(pool));
        let registry = web::Data::new(registry);
        let openapi = web::Data::new(
            ApiDoc::openapi()
                .to_pretty_json()
                .context("cannot render the OpenAPI document")?,
        );
        let listener = TcpListener::bind(&settings.admin_listen)
            .with_context(|| format!("cannot listen on {}", settings.admin_listen))?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            let redactor = redactor.clone();
            App::new()
                .app_data(state.clone())
                .app_data(tokens.clone())
                .app_data(registry.clone())
                .app_data(openapi.clone())
                .service(get("/admin/openapi.json", web::get().to(openapi_json)))
                .service(get(
                    "/admin/",
                    web::get().to(crate::routes::dashboard::index),
                ))
                .service(get(
                    "/admin",
                    web::get().to(crate::routes::dashboard::redirect),
                ))
                .service(get(
                    "/admin/assets/{file}",
                    web::get().to(crate::routes::dashboard::asset),
                ))
                .service(
                    web::scope("/admin/audit")
                        .wrap_fn(move |req, srv| {
                            let served = match recorded_metadata(
                                req.path(),
                                req.query_string(),
                                &redactor,
                            ) {
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
                        .service(get("/logs", web::get().to(search::search)))
                        .service(get("/logs/{event_id}", web::get().to(search::event)))
                        .service(get("/users", web::get().to(users::users)))
                        .service(get("/users/{user_id}", web::get().to(users::user)))
                        .service(get("/metrics", web::get().to(realtime::metrics)))
                        .service(get("/export", web::get().to(export::export)))
                        .service(methods(
                            "/exports",
                            "GET, POST",
                            vec![web::get().to(jobs::list), web::post().to(jobs::create)],
                        ))
                        .service(methods(
                            "/exports/{id}",
                            "GET, DELETE",
                            vec![web::get().to(jobs::show), web::delete().to(jobs::cancel)],
                        ))
                        .service(get("/exports/{id}/download", web::get().to(jobs::download)))
                        .service(methods(
                            "/export-schedules",
                            "GET, POST",
                            vec![
                                web::get().to(schedules::list),
                                web::post().to(schedules::create),
                            ],
                        ))
                        .service(methods(
                            "/export-schedules/{id}",
                            "GET, DELETE",
                            vec![
                                web::get().to(schedules::show),
                                web::delete().to(schedules::delete),
                            ],
                        ))
                        .service(methods(
                            "/stream/ticket",
                            "POST",
                            vec![web::post().to(live::ticket)],
                        ))
                        .service(get("/stream", web::get().to(live::stream)))
                        .service(get(
                            "/verify",
                            web::get().to(crate::routes::integrity::handler),
                        ))
                        .default_service(web::to(not_found)),
                )
                .service(get("/metrics", web::get().to(metrics_handler)))
                .service(get("/healthz", web::get().to(healthz)))
                .service(get("/readyz", web::get().to(readyz)))
                .default_service(web::to(not_found))
        })
        .disable_signals()
        .listen(listener)?
        .run();
        let mut background = vec![
            ("export job runner", runner),
            ("live stream consumer", live),
            ("stream token watch", token_watch),
        ];
        background.extend(checkpoints.map(|task| ("checkpointer", task)));
        background.extend(retention.map(|task| ("retention", task)));
        Ok(Self {
            port,
            server,
            workers: background,
            stop,
            audit: audit_handle,
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
        // workers, stopping, have handed them over).
        self.audit
            .shutdown(auditline_ingest::middleware::SHUTDOWN_GRACE)
            .await;
        // The workers finish their step and stop: a running export job is
        // queued again for another instance, a checkpoint or a retention
        // drop in progress completes (and releases its advisory lock).
        self.stop.cancel();
        for (name, mut task) in self.workers {
            match tokio::time::timeout(WORKERS_GRACE, &mut task).await {
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

/// A GET-only resource: other methods get a 405 with `Allow: GET`.
fn get(path: &str, route: actix_web::Route) -> actix_web::Resource {
    single_method(path, "GET", route)
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
