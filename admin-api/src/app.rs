//! The admin HTTP service: routes, shared state, start and stop.

use std::{borrow::Cow, future::Future, net::TcpListener, sync::Arc, time::Duration};

use actix_web::{
    App, FromRequest, HttpMessage, HttpRequest, HttpResponse, HttpServer,
    dev::{Payload, Server, Service},
    http::StatusCode,
    web,
};
use anyhow::Context;
use auditline_ingest::{
    AuditConfig, AuditMetadata, AuditMiddleware, AuditUser, Publisher, spool::Spool,
};
use auditline_shared::{
    Settings,
    auth::TokenStore,
    auth::{Caller, Scope, TokenInfo},
    db,
    error::{ErrorBody, methods, single_method},
    metrics::metrics_handler,
    redact::{self, Redactor},
};
use prometheus::Registry;
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use utoipa::OpenApi;

use crate::{error::ApiError, export, jobs, openapi::ApiDoc, realtime, schedules, search, users};
use futures_util::future::LocalBoxFuture;

/// What every handler shares.
#[derive(Debug)]
pub struct State {
    pub pool: PgPool,
    pub cursor_key: search::CursorKey,
    /// Where export files are written (`local`, the `export_dir`, or a bucket).
    pub storage: auditline_integrity::storage::Storage,
    /// Wakes the export runner when a job is queued.
    pub jobs_waiting: Arc<tokio::sync::Notify>,
    /// The live stream's clients.
    pub hub: Arc<crate::live::Hub>,
    /// Checkpoint signing and verification keys.
    pub keys: Arc<auditline_integrity::checkpoint::Keys>,
    pub integrity: auditline_shared::settings::IntegritySettings,
    /// Quotas and time-outs of exports.
    pub exports: auditline_shared::settings::ExportSettings,
    /// One permit per streamed export in progress (`exports.max_streams`).
    pub export_streams: Arc<tokio::sync::Semaphore>,
    /// Publishes the admin events that are not HTTP requests (stream
    /// subscriptions), confirmed before what they record is served.
    pub recorder: Publisher,
}

/// Authenticates the caller, names it as the user of the request's own audit
/// event (before the scope is checked, so that refusals are attributed too),
/// then requires one of `scopes` (403 naming the first when it has none);
/// answers the token.
fn authorize(
    req: &HttpRequest,
    payload: &mut Payload,
    scopes: &'static [Scope],
) -> LocalBoxFuture<'static, Result<TokenInfo, ApiError>> {
    let caller = Caller::from_request(req, payload);
    let req = req.clone();
    Box::pin(async move {
        let caller = caller.await?;
        req.extensions_mut()
            .insert(AuditUser(caller.0.name.clone()));
        if !scopes.iter().any(|scope| caller.0.scopes.contains(scope)) {
            caller.require(scopes[0])?;
        }
        Ok(caller.0)
    })
}

/// An authenticated caller with the `read` scope (extractor).
#[derive(Debug)]
pub struct Reader(pub TokenInfo);

impl FromRequest for Reader {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authorized = authorize(req, payload, &[Scope::Read]);
        Box::pin(async move { authorized.await.map(Reader) })
    }
}

/// An authenticated caller with the `export` scope (extractor): streamed
/// exports, and new export jobs and schedules, which belong to its token.
#[derive(Debug)]
pub struct Exporter(pub TokenInfo);

impl FromRequest for Exporter {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authorized = authorize(req, payload, &[Scope::Export]);
        Box::pin(async move { authorized.await.map(Exporter) })
    }
}

/// A caller looking at export jobs and schedules (extractor): an `export`
/// token sees its own, an `admin` token every one.
#[derive(Debug)]
pub struct JobViewer(pub TokenInfo);

impl JobViewer {
    /// Whether it sees every job and schedule, not only its own.
    pub fn sees_all(&self) -> bool {
        self.0.scopes.contains(&Scope::Admin)
    }

    /// The owner to filter on: `None` for an admin (everything).
    pub fn owner(&self) -> Option<&str> {
        (!self.sees_all()).then_some(self.0.token_id.as_str())
    }
}

impl FromRequest for JobViewer {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authorized = authorize(req, payload, &[Scope::Export, Scope::Admin]);
        Box::pin(async move { authorized.await.map(JobViewer) })
    }
}

/// An authenticated caller with the `admin` scope (extractor).
#[derive(Debug)]
pub struct Administrator(pub TokenInfo);

impl FromRequest for Administrator {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authorized = authorize(req, payload, &[Scope::Admin]);
        Box::pin(async move { authorized.await.map(Administrator) })
    }
}

/// The query string as audit metadata: `{"query": {"name": "value" | ["v1", "v2"]}}`,
/// whole (nothing is clipped), credentials (by name or by shape) as
/// `[REDACTED]`.
fn query_metadata(query: &str, redact: &Redactor) -> Map<String, Value> {
    let mut params = Map::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let value: String = redact.value(&name, &value).into_owned();
        let name = if redact::holds_secret(&name) {
            Cow::Borrowed(redact::REDACTED)
        } else {
            name
        };
        match params.get_mut(name.as_ref()) {
            Some(Value::Array(values)) => values.push(Value::String(value)),
            Some(first) => *first = json!([first.take(), value]),
            None => {
                params.insert(name.into_owned(), Value::String(value));
            }
        }
    }
    let mut metadata = Map::new();
    if !params.is_empty() {
        metadata.insert("query".into(), Value::Object(params));
    }
    metadata
}

/// The longest path an admin event records whole (its `endpoint` field).
const MAX_RECORDED_PATH: usize = 255;

/// The audit metadata of an admin request, or the refusal of a request
/// whose record would not fit: an admin read is recorded whole (its path and
/// every parameter) or not served, so padding cannot push what a call took
/// out of its own record.
fn recorded_metadata(
    path: &str,
    query: &str,
    redact: &Redactor,
) -> Result<Map<String, Value>, ApiError> {
    let too_long = |message: String| ApiError::Refused {
        status: actix_web::http::StatusCode::URI_TOO_LONG,
        code: "request_too_long_to_record",
        message,
    };
    if path.chars().count() > MAX_RECORDED_PATH {
        return Err(too_long(format!(
            "the path is longer than the {MAX_RECORDED_PATH} characters an audit record holds"
        )));
    }
    let metadata = query_metadata(query, redact);
    let size = serde_json::to_vec(&metadata).map_or(usize::MAX, |v| v.len());
    if size > auditline_shared::event::MAX_METADATA_BYTES {
        return Err(too_long(format!(
            "the parameters take {size} bytes, more than the {} an audit record holds; \
             send fewer or shorter ones",
            auditline_shared::event::MAX_METADATA_BYTES
        )));
    }
    Ok(metadata)
}

/// A built, not yet running admin service.
pub struct Application {
    port: u16,
    server: Server,
    runner: tokio::task::JoinHandle<()>,
    live: tokio::task::JoinHandle<()>,
    /// Closes stream connections whose token was revoked or expired.
    token_watch: tokio::task::JoinHandle<()>,
    /// Admin calls are audit events: at shutdown they are published or spooled.
    audit: AuditMiddleware,
    checkpoints: Option<tokio::task::JoinHandle<()>>,
    retention: Option<tokio::task::JoinHandle<()>>,
}

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
        let cursor_key = search::CursorKey::load(&pool)
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
        let runner = jobs::Runner {
            pool: pool.clone(),
            storage: storage.clone(),
            settings: settings.exports.clone(),
            instance: format!(
                "{}-{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "admin".into()),
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            metrics: jobs::JobMetrics::register(&registry)?,
            wake: jobs_waiting.clone(),
            checkpoint_destination: settings.integrity.checkpoint_destination.clone(),
        };
        let runner = tokio::spawn(runner.run());
        let hub = Arc::new(crate::live::Hub::new(
            settings.stream.clone(),
            crate::live::StreamMetrics::register(&registry)?,
        ));
        let live = tokio::spawn(crate::live::consume(
            settings.amqp_url.clone(),
            auditline_shared::amqp::Topology::new(&settings.namespace).live_exchange,
            hub.clone(),
        ));
        let token_watch = tokio::spawn(crate::live::watch_tokens(pool.clone(), hub.clone()));
        let keys = Arc::new(auditline_integrity::checkpoint::Keys::from_settings(
            &settings.integrity,
        )?);
        storage
            .check(&settings.integrity.checkpoint_destination)
            .map_err(|e| anyhow::anyhow!("integrity.checkpoint_destination: {e}"))?;
        let checkpoint_metrics = auditline_integrity::checkpoint::Metrics::register(&registry)?;
        if settings.partitions.retention_days.is_some() {
            storage
                .check(&settings.partitions.archive_destination)
                .map_err(|e| anyhow::anyhow!("partitions.archive_destination: {e}"))?;
        }
        let checkpoints = (settings.integrity.checkpoint_interval_secs > 0).then(|| {
            tokio::spawn(auditline_integrity::checkpoint::run(
                pool.clone(),
                storage.clone(),
                settings.integrity.checkpoint_destination.clone(),
                keys.clone(),
                Duration::from_secs(settings.integrity.checkpoint_interval_secs),
                checkpoint_metrics,
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
                .service(get("/admin/", web::get().to(crate::dashboard::index)))
                .service(get("/admin", web::get().to(crate::dashboard::redirect)))
                .service(get(
                    "/admin/assets/{file}",
                    web::get().to(crate::dashboard::asset),
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
                            vec![web::post().to(crate::live::ticket)],
                        ))
                        .service(get("/stream", web::get().to(crate::live::stream)))
                        .service(get("/verify", web::get().to(crate::integrity::handler)))
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
        Ok(Self {
            port,
            server,
            runner,
            live,
            token_watch,
            audit: audit_handle,
            checkpoints,
            retention,
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
        // A job cut short here is taken over by another instance (or this
        // one, restarted) once its heartbeat is old enough.
        self.runner.abort();
        self.live.abort();
        self.token_watch.abort();
        for task in [&self.checkpoints, &self.retention].into_iter().flatten() {
            task.abort();
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
