//! The HTTP ingest gateway (`auditline ingest`): `POST /v1/events` for apps in
//! any language.
//!
//! A request carries a publish token; the token's `service` is stamped on
//! every event, and an event claiming another service is refused. The body is
//! one JSON event, a JSON array of events, or NDJSON. A request is accepted
//! whole or refused whole: every invalid item is listed by index (and line, for
//! NDJSON) and field, and nothing is published. 202 means the broker confirmed
//! every event.
//!
//! Requests publish through one [`Batcher`] (the middleware's batching
//! publisher): each request's events are a part that waits for the confirm
//! of the message it went into, and requests that arrive while publishes
//! are awaiting their confirms share messages, so a busy gateway sends far
//! fewer messages than it takes requests. A request whose events are not
//! confirmed within `ingest.publish_timeout_ms` spools them (a message
//! confirmed later as well is stored once: event ids are the key).

use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer, ResponseError,
    dev::Server,
    http::{StatusCode, header},
    web,
};
use anyhow::Context;
use auditline_client::{
    batcher::{BatchSettings, Batcher, Sink, shared_routing_key},
    publisher::{Prepared, PublishError, Publisher, batch_routing_key},
    spool::{GroupCommit, Spool, SpoolError},
};
use auditline_shared::{
    AuditEvent, FieldError, Settings,
    auth::{AuthError, Caller, Scope, TokenStore},
    db,
    error::{ErrorBody, single_method},
    event::{check_age, check_strict, strict_error, to_ndjson},
    metrics::{metrics_handler, register},
    settings::IngestSettings,
    strict_json::{Segment, StrictError},
};
use chrono::Utc;
use futures_util::StreamExt;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::{Value, json};
use std::{future::Future, net::TcpListener, sync::Arc, time::Duration};

/// The gateway's metrics.
#[derive(Clone, Debug)]
struct IngestMetrics {
    requests: IntCounterVec,
    accepted: IntCounter,
    rejected: IntCounter,
    spooled: IntCounter,
    replayed: IntCounter,
    spool_bytes: IntGauge,
    spool_commits: IntCounter,
}

impl IngestMetrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        Ok(Self {
            requests: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "auditline_ingest_requests_total",
                        "POST /v1/events requests by outcome.",
                    ),
                    &["outcome"],
                )?,
            ),
            accepted: register(
                registry,
                IntCounter::new(
                    "auditline_ingest_events_accepted_total",
                    "Events accepted (broker-confirmed).",
                )?,
            ),
            rejected: register(
                registry,
                IntCounter::new(
                    "auditline_ingest_events_rejected_total",
                    "Events in refused requests.",
                )?,
            ),
            spooled: register(
                registry,
                IntCounter::new(
                    "auditline_ingest_events_spooled_total",
                    "Events accepted into the local spool.",
                )?,
            ),
            replayed: register(
                registry,
                IntCounter::new(
                    "auditline_ingest_events_replayed_total",
                    "Spooled events published after the broker came back.",
                )?,
            ),
            spool_bytes: register(
                registry,
                IntGauge::new(
                    "auditline_ingest_spool_bytes",
                    "Bytes waiting in the spool.",
                )?,
            ),
            spool_commits: register(
                registry,
                IntCounter::new(
                    "auditline_ingest_spool_commits_total",
                    "Spool fsyncs; each makes every request that arrived meanwhile durable.",
                )?,
            ),
        })
    }
}

/// One request's events (or a message's worth of them) on their way to the
/// broker, and where to say how it went.
struct Part {
    ndjson: Vec<u8>,
    events: usize,
    routing_key: String,
    reply: tokio::sync::oneshot::Sender<Result<(), PublishError>>,
}

/// What the batcher does with the requests' parts: tells each request how
/// the message holding its events fared.
struct Requests;

impl Sink for Requests {
    type Part = Part;
    type Ticket = tokio::sync::oneshot::Sender<Result<(), PublishError>>;

    fn events(part: &Part) -> usize {
        part.events
    }

    fn body(part: &Part) -> &[u8] {
        &part.ndjson
    }

    fn routing_key(&self, parts: &[Part]) -> String {
        shared_routing_key(parts.iter().map(|p| p.routing_key.as_str()))
    }

    fn taken(&self, part: Part) -> Self::Ticket {
        part.reply
    }

    fn settled(&self, _: &Prepared, tickets: Vec<Self::Ticket>, outcome: Result<(), PublishError>) {
        for reply in tickets {
            // A request that gave up waiting has spooled its events already.
            let _ = reply.send(outcome.clone());
        }
    }
}

struct State {
    publisher: Publisher,
    batcher: Batcher<Requests>,
    /// `publisher.events_per_message`: a larger request is several parts.
    events_per_message: usize,
    spool: Option<(Arc<Spool>, GroupCommit)>,
    settings: IngestSettings,
    metrics: IngestMetrics,
    /// `partitions.max_event_age_days`: older events are refused.
    max_event_age: chrono::Duration,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
enum IngestError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("unsupported content type {0:?}: send application/json or application/x-ndjson")]
    UnsupportedMediaType(String),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("{count} events in one request; at most {limit} are accepted")]
    TooManyEvents { count: usize, limit: usize },
    #[error("{0}")]
    Malformed(String),
    #[error("{invalid} of {total} events are invalid; nothing was accepted")]
    Invalid {
        invalid: usize,
        total: usize,
        details: Vec<Value>,
    },
    #[error("the broker cannot take events right now: {0}")]
    Unavailable(String),
    #[error("cannot read the request body: {0}")]
    Body(String),
}

impl IngestError {
    fn outcome(&self) -> &'static str {
        match self {
            Self::Auth(AuthError::Forbidden(_)) => "forbidden",
            Self::Auth(AuthError::Unavailable(_)) | Self::Unavailable(_) => "unavailable",
            Self::Auth(_) => "unauthorized",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::BodyTooLarge(_) | Self::TooManyEvents { .. } => "too_large",
            Self::Malformed(_) | Self::Body(_) => "malformed",
            Self::Invalid { .. } => "invalid",
        }
    }
}

impl ResponseError for IngestError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Auth(e) => e.status_code(),
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge(_) | Self::TooManyEvents { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Malformed(_) | Self::Invalid { .. } | Self::Body(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (code, details) = match self {
            Self::Auth(e) => return e.error_response(),
            Self::UnsupportedMediaType(_) => ("unsupported_media_type", Vec::new()),
            Self::BodyTooLarge(_) => ("body_too_large", Vec::new()),
            Self::TooManyEvents { .. } => ("too_many_events", Vec::new()),
            Self::Malformed(_) | Self::Body(_) => ("malformed_json", Vec::new()),
            Self::Invalid { details, .. } => ("invalid_events", details.clone()),
            Self::Unavailable(_) => ("unavailable", Vec::new()),
        };
        ErrorBody::new(code, self.to_string())
            .with_details(details)
            .response(self.status_code())
    }
}

/// A built, not yet running gateway.
pub struct Application {
    port: u16,
    server: Server,
    replayer: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds `ingest_listen`. Starts even while the broker is down.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_registry(settings, Registry::new()).await
    }

    /// [`Application::build`] with a registry shared with other services of the
    /// same process (`auditline all`).
    pub async fn build_with_registry(
        settings: Settings,
        registry: Registry,
    ) -> anyhow::Result<Self> {
        let pool = db::pool(&settings.database_url, 4)?;
        let mut client = settings.client();
        client.publisher.publish_timeout_ms = settings.ingest.publish_timeout_ms;
        let publisher = Publisher::new(&client, "auditline-ingest");
        if !publisher.is_connected().await {
            tracing::warn!("ingest gateway starting while the broker is unreachable");
        }
        let spool = if settings.ingest.spool_enabled {
            Some(Arc::new(Spool::open(
                &settings.ingest.spool_dir,
                settings.ingest.spool_max_bytes,
            )?))
        } else {
            None
        };
        let metrics = IngestMetrics::new(&registry)?;
        publisher.register_metrics(&registry)?;
        let replayer = spool.clone().map(|spool| {
            let (publisher, metrics) = (publisher.clone(), metrics.clone());
            let chunk = settings.publisher.events_per_message * 10;
            actix_web::rt::spawn(
                spool.replay_forever(publisher, chunk, move |replayed, used| {
                    metrics.replayed.inc_by(replayed as u64);
                    metrics
                        .spool_bytes
                        .set(i64::try_from(used).unwrap_or(i64::MAX));
                }),
            )
        });
        let spool = match spool {
            Some(spool) => {
                let commits = metrics.spool_commits.clone();
                let committer = GroupCommit::start(spool.clone(), move |_| commits.inc())
                    .context("cannot start the spool's commit thread")?;
                Some((spool, committer))
            }
            None => None,
        };
        let batcher = Batcher::start(
            publisher.clone(),
            Arc::new(Requests),
            BatchSettings {
                // Requests wait for their confirm: nothing lingers; parts
                // share messages while publishes are busy.
                linger: Duration::ZERO,
                events_per_message: settings.publisher.events_per_message,
                queue_parts: 1024,
                parts_per_take: 256,
            },
            settings.publisher.events_per_message,
        );
        let state = web::Data::new(State {
            publisher,
            batcher,
            events_per_message: settings.publisher.events_per_message,
            spool,
            settings: settings.ingest.clone(),
            metrics,
            max_event_age: settings.partitions.max_event_age(),
        });
        let tokens = web::Data::new(TokenStore(pool));
        let registry = web::Data::new(registry);
        let listener = TcpListener::bind(&settings.ingest_listen)
            .with_context(|| format!("cannot listen on {}", settings.ingest_listen))?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(tokens.clone())
                .app_data(registry.clone())
                .service(single_method(
                    "/v1/events",
                    "POST",
                    web::post().to(post_events),
                ))
                .service(single_method(
                    "/metrics",
                    "GET",
                    web::get().to(metrics_handler),
                ))
                .service(single_method("/healthz", "GET", web::get().to(healthz)))
                .service(single_method("/readyz", "GET", web::get().to(readyz)))
                .default_service(web::to(not_found))
        })
        .disable_signals()
        .listen(listener)?
        .run();
        Ok(Self {
            port,
            server,
            replayer,
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
            result = server => result.context("ingest HTTP server failed"),
            () = shutdown => { handle.stop(true).await; Ok(()) }
        };
        // Whatever is still spooled is replayed by the next start.
        if let Some(replayer) = self.replayer {
            replayer.abort();
        }
        outcome
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    let reachable = tokio::time::timeout(Duration::from_secs(2), state.publisher.is_connected())
        .await
        .unwrap_or(false);
    if reachable {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        ErrorBody::new("not_ready", "the broker is unreachable")
            .response(StatusCode::SERVICE_UNAVAILABLE)
    }
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ErrorBody::new(
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    )
    .response(StatusCode::NOT_FOUND)
}

#[tracing::instrument(skip_all, fields(service))]
async fn post_events(
    req: HttpRequest,
    caller: Result<Caller, AuthError>,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, IngestError> {
    let result = accept(&req, caller, payload, &state).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) => e.outcome(),
    };
    state.metrics.requests.with_label_values(&[outcome]).inc();
    result
}

async fn accept(
    req: &HttpRequest,
    caller: Result<Caller, AuthError>,
    payload: web::Payload,
    state: &State,
) -> Result<HttpResponse, IngestError> {
    let caller = caller?;
    let token = caller.require(Scope::Publish)?;
    let service = token.service.clone().unwrap_or_default();
    tracing::Span::current().record("service", service.as_str());

    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let ndjson = match content_type.split(';').next().unwrap_or("").trim() {
        "application/json" => false,
        "application/x-ndjson" => true,
        other => return Err(IngestError::UnsupportedMediaType(other.to_owned())),
    };
    let body = read_body(req, payload, state.settings.max_body_bytes).await?;
    let items = split_items(&body, ndjson)?;
    if items.len() > state.settings.max_events {
        return Err(IngestError::TooManyEvents {
            count: items.len(),
            limit: state.settings.max_events,
        });
    }
    let events = validate(items, &service, ndjson, state.max_event_age).inspect_err(|e| {
        if let IngestError::Invalid { total, .. } = e {
            state.metrics.rejected.inc_by(*total as u64);
        }
    })?;
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    // New events go straight to the broker whenever it is there, also while
    // the spool replays (the writer orders by occurred_at and stores each
    // event once, so arrival order does not matter). While the spool holds
    // events and no connection is up, they go to the spool at once instead
    // of each request waiting out a connection attempt.
    let outage = match &state.spool {
        Some((spool, _)) => !spool.is_empty() && !state.publisher.is_link_up(),
        None => false,
    };
    let spooled = if outage {
        spool_events(state, &events).await?
    } else {
        match publish(state, &events).await {
            Ok(()) => false,
            Err(PublishError::Unroutable(e)) => return Err(IngestError::Unavailable(e)),
            Err(e) if state.spool.is_some() => {
                tracing::warn!(error = %e, events = events.len(), "broker unavailable; spooling");
                spool_events(state, &events).await?
            }
            Err(e) => return Err(IngestError::Unavailable(e.to_string())),
        }
    };
    state.metrics.accepted.inc_by(ids.len() as u64);
    Ok(HttpResponse::Accepted()
        .json(json!({"accepted": ids.len(), "event_ids": ids, "spooled": spooled})))
}

/// Publishes `events` through the batcher: resolves once the broker confirmed
/// every message holding them, or with why not (the publish timeout
/// included).
///
/// One bound covers it all, `ingest.publish_timeout_ms` from the moment the
/// request is ready: waiting for room in the batcher's queue (a broker that
/// stalls fills it) and for the confirm. A message confirmed after its
/// requests gave up and spooled is stored once all the same.
async fn publish(state: &State, events: &[AuditEvent]) -> Result<(), PublishError> {
    let timeout_ms = state.settings.publish_timeout_ms;
    let unavailable = |why: &str| PublishError::Unavailable {
        timeout_ms,
        last_error: why.into(),
    };
    let confirmed = async {
        let mut replies = Vec::new();
        for chunk in events.chunks(state.events_per_message.max(1)) {
            let (reply, confirmed) = tokio::sync::oneshot::channel();
            let part = Part {
                ndjson: to_ndjson(chunk),
                events: chunk.len(),
                routing_key: batch_routing_key(chunk),
                reply,
            };
            if state.batcher.submit(part).await.is_err() {
                return Err(unavailable("the gateway is shutting down"));
            }
            replies.push(confirmed);
        }
        for reply in replies {
            reply
                .await
                .map_err(|_| unavailable("the publishing loop stopped"))??;
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_millis(timeout_ms), confirmed)
        .await
        .unwrap_or_else(|_| Err(unavailable("no confirm in time")))
}

/// Spools `events` through the group commit: resolves once they are fsync'd.
async fn spool_events(state: &State, events: &[AuditEvent]) -> Result<bool, IngestError> {
    let Some((spool, committer)) = &state.spool else {
        return Err(IngestError::Unavailable("no spool".into()));
    };
    committer
        .append(to_ndjson(events))
        .await
        .map_err(|e| match e {
            SpoolError::Full { .. } => {
                IngestError::Unavailable(format!("the broker is unreachable and {e}"))
            }
            SpoolError::Io(e) => IngestError::Unavailable(format!(
                "the broker is unreachable and the spool failed: {e}"
            )),
        })?;
    state.metrics.spooled.inc_by(events.len() as u64);
    state
        .metrics
        .spool_bytes
        .set(i64::try_from(spool.used_bytes()).unwrap_or(i64::MAX));
    Ok(true)
}

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, IngestError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(IngestError::BodyTooLarge(limit));
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| IngestError::Body(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(IngestError::BodyTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One item of the body: its JSON, or which field is wrong and why (not
/// JSON, or not strict JSON); with its NDJSON line.
struct Item {
    line: Option<usize>,
    value: Result<Value, (String, String)>,
}

fn split_items(body: &[u8], ndjson: bool) -> Result<Vec<Item>, IngestError> {
    let mut strict = None;
    let mut items = if ndjson {
        body.split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(i, line)| Item {
                line: Some(i + 1),
                value: check_strict(line)
                    .map_err(|e| {
                        let e = e.0.into_iter().next().unwrap_or_else(|| FieldError {
                            field: "$".into(),
                            message: "not strict JSON".into(),
                        });
                        (e.field, e.message)
                    })
                    .and_then(|()| {
                        serde_json::from_slice(line)
                            .map_err(|e| ("$".into(), format!("malformed JSON: {e}")))
                    }),
            })
            .collect()
    } else {
        // Strict JSON first (a `Value` no longer shows duplicate keys or
        // rounded numbers); the event it is in is refused like any invalid one.
        strict = auditline_shared::strict_json::check(body, true).err();
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(values)) => values
                .into_iter()
                .map(|v| Item {
                    line: None,
                    value: Ok(v),
                })
                .collect(),
            Ok(value @ Value::Object(_)) => vec![Item {
                line: None,
                value: Ok(value),
            }],
            Ok(_) => {
                return Err(IngestError::Malformed(
                    "expected one event (a JSON object) or an array of events".into(),
                ));
            }
            Err(e) => return Err(IngestError::Malformed(format!("malformed JSON: {e}"))),
        }
    };
    if items.is_empty() {
        return Err(IngestError::Malformed("the body holds no event".into()));
    }
    if let Some(e) = strict {
        let (index, path) = match e.path.split_first() {
            Some((Segment::Index(i), rest)) if body.trim_ascii_start().starts_with(b"[") => {
                (*i, rest.to_vec())
            }
            _ => (0, e.path),
        };
        let error = strict_error(&StrictError {
            path,
            message: e.message,
        });
        if let (Some(item), Some(first)) = (items.get_mut(index), error.0.into_iter().next()) {
            item.value = Err((first.field, first.message));
        }
    }
    Ok(items)
}

fn validate(
    items: Vec<Item>,
    service: &str,
    ndjson: bool,
    max_age: chrono::Duration,
) -> Result<Vec<AuditEvent>, IngestError> {
    let now = Utc::now();
    let total = items.len();
    let mut events = Vec::with_capacity(total);
    let mut details = Vec::new();
    let mut invalid = 0;
    for (index, item) in items.into_iter().enumerate() {
        let mut problems: Vec<(String, String)> = Vec::new();
        match item.value {
            Err(problem) => problems.push(problem),
            Ok(Value::Object(mut map)) => {
                match map.get("service") {
                    Some(Value::String(claimed)) if claimed != service => problems.push((
                        "service".into(),
                        format!(
                            "this token publishes for {service:?}; the event claims {claimed:?}"
                        ),
                    )),
                    Some(Value::String(_)) => {}
                    Some(Value::Null) | None => {
                        map.insert("service".into(), Value::String(service.to_owned()));
                    }
                    // Any other type: validation names it below.
                    Some(_) => {}
                }
                if problems.is_empty() {
                    match AuditEvent::from_value(Value::Object(map), now) {
                        Ok(event) => match check_age(event.occurred_at, now, max_age) {
                            Ok(()) => events.push(event),
                            Err(e) => problems.push((e.field, e.message)),
                        },
                        Err(err) => {
                            problems.extend(err.0.into_iter().map(|e| (e.field, e.message)))
                        }
                    }
                }
            }
            Ok(_) => problems.push(("$".into(), "expected a JSON object".into())),
        }
        if !problems.is_empty() {
            invalid += 1;
            for (field, message) in problems {
                let mut detail = json!({"index": index, "field": field, "message": message});
                if ndjson {
                    detail["line"] = json!(item.line);
                }
                details.push(detail);
            }
        }
    }
    if invalid > 0 {
        return Err(IngestError::Invalid {
            invalid,
            total,
            details,
        });
    }
    Ok(events)
}
