//! The live stream: `POST /admin/audit/stream/ticket`, then
//! `GET /admin/audit/stream?ticket=…` (a websocket).
//!
//! The events come from the instance's consumer of `<ns>.live` through the
//! hub, which keeps each client's queue ([`crate::workers::live`]).
//!
//! Client → server: `{"type": "subscribe", "filter": {…}, "since": "<cursor>"}`
//! (again to change the filter). With `since` (a search cursor), the stored
//! events after the cursor are sent first (at most [`REPLAY_MAX`]), then
//! `{"type": "caught_up"}`, then live events. The live filter is in force
//! before the stored events are read, so an event committed meanwhile comes
//! by one way or both; the ids sent from the table are remembered and the live
//! copy skipped: no gap, no duplicate.
//!
//! A connection lives no longer than its token: a ticket names the token it
//! was issued to and is refused once that token is revoked or expired; any
//! use of a ticket spends it, refused or not. One task per instance
//! ([`crate::workers::live::watch_tokens`]) checks the tokens of every open connection every
//! `stream.token_check_secs` in one query, and closes those whose token was
//! revoked or has expired with close code 1008 (policy violation) and the
//! reason; a `since` replay checks the token before it reads the table.

use actix_web::{
    HttpMessage, HttpRequest, HttpResponse,
    http::{StatusCode, header},
    web,
};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use auditline_client::AuditUser;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::oneshot;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    error::ApiError,
    extract::Reader,
    query::{body::in_field, cursor::CursorKey, filters::Filters, params::Params},
    state::State,
    workers::live::{Hub, Joined, REVOKED, Redeemed, ended_tokens},
};
use auditline_shared::stored::StoredEvent;

/// The most stored events a `since` sends before going live; further back
/// is a search's (or an export's) work.
pub const REPLAY_MAX: i64 = 10_000;
/// Events in one `events` frame. The websocket session buffers 32 frames,
/// so this also bounds what a stalled client holds beyond its queue.
const FRAME_EVENTS: usize = 100;
/// The largest frame a client may send.
const MAX_FRAME_BYTES: usize = 64 * 1024;

/// The search filters that make sense live.
pub const LIVE_PARAMS: &[&str] = &[
    "user_id",
    "session_id",
    "service",
    "action_type",
    "http_method",
    "status",
    "success",
    "endpoint",
    "min_response_time_ms",
];

/// The live filter of a subscribe message (`filter`: an object of the live
/// parameters), validated as the search validates them.
fn parse_filter(filter: Option<&Value>) -> Result<Filters, ApiError> {
    let empty = serde_json::Map::new();
    let object = match filter {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::body("filter", "must be an object")),
    };
    Filters::from_object(object, &[LIVE_PARAMS]).map_err(in_field("filter"))
}

/// A ticket for one websocket connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ticket {
    /// Pass as `?ticket=` to `GET /admin/audit/stream`, once.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

fn ticket_hash(ticket: &str) -> String {
    auditline_shared::auth::hex(&Sha256::digest(ticket.as_bytes()))
}

/// Get a single-use ticket for the live stream.
#[utoipa::path(
    post,
    path = "/admin/audit/stream/ticket",
    tag = "stream",
    responses(
        (status = 201, description = "A ticket, valid once, for `stream.ticket_ttl_secs`", body = Ticket),
        crate::error::ReadErrors,
    )
)]
pub async fn ticket(
    req: HttpRequest,
    reader: Reader,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let secret: [u8; 32] = rand::random();
    let ticket = auditline_shared::auth::hex(&secret);
    let ttl = i32::try_from(state.hub.settings.ticket_ttl_secs).unwrap_or(i32::MAX);
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM auditline.stream_tickets WHERE expires_at < now() - interval '1 hour') \
         INSERT INTO auditline.stream_tickets (ticket_hash, token_name, token_id, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING expires_at",
    )
    .bind(ticket_hash(&ticket))
    .bind(&reader.0.name)
    .bind(&reader.0.token_id)
    .bind(f64::from(ttl))
    .fetch_one(&state.pool)
    .await?;
    Ok(HttpResponse::Created().json(Ticket { ticket, expires_at }))
}

fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::Refused {
        status,
        code,
        message: message.into(),
    }
}

/// Whether a browser on `origin` may connect: the admin service's own origin
/// or one of `stream.allowed_origins`.
fn origin_allowed(req: &HttpRequest, origin: &str, allowed: &[String]) -> bool {
    let own = req.connection_info();
    let own = format!("{}://{}", own.scheme(), own.host());
    let origin = origin.trim_end_matches('/');
    origin.eq_ignore_ascii_case(&own)
        || allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// The live stream (websocket; see the module doc for the messages).
#[utoipa::path(
    get,
    path = "/admin/audit/stream",
    tag = "stream",
    security(()),
    params(("ticket" = String, Query, description = "From `POST /admin/audit/stream/ticket`; single use")),
    responses(
        (status = 101, description = "Switching to the websocket protocol"),
        (status = 400, description = "Not a websocket handshake, or a bad parameter", body = crate::error::ErrorEnvelope),
        (status = 401, description = "Missing, unknown, used or expired ticket", body = crate::error::ErrorEnvelope),
        (status = 403, description = "A browser origin that is not allowed", body = crate::error::ErrorEnvelope),
        (status = 503, description = "This instance has as many stream clients as it takes", body = crate::error::ErrorEnvelope),
    )
)]
pub async fn stream(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    // Every ticket presented is spent first, whatever is refused next (a
    // parameter, the origin): a refused attempt leaves no ticket to retry
    // with. (A handful at most: more is a bad parameter anyway.)
    let presented: Vec<String> = form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(name, _)| name == "ticket")
        .take(4)
        .map(|(_, ticket)| ticket_hash(&ticket))
        .collect();
    let redeemed = if presented.is_empty() {
        None
    } else {
        redeem(&state.pool, &presented).await?
    };
    let params = Params::parse(req.query_string(), &["ticket"])?;
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !origin_allowed(&req, origin, &state.hub.settings.allowed_origins) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!(
                    "origin {origin:?} may not open the stream (stream.allowed_origins); the ticket is spent"
                ),
            ));
        }
    }
    if params.one("ticket")?.is_none() {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "ticket_required",
            "a ticket is required: POST /admin/audit/stream/ticket, then ?ticket=…",
        ));
    }
    let Some(token) = redeemed else {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "invalid_ticket",
            "unknown, already used or expired ticket, or its token was revoked or expired",
        ));
    };
    let name = token.name.clone();
    req.extensions_mut().insert(AuditUser(name));
    let Some(joined) = state.hub.join(&token) else {
        return Err(refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_clients",
            format!(
                "this instance serves {} stream clients already; retry later",
                state.hub.settings.max_clients
            ),
        ));
    };
    let (response, session, messages) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => {
            state.hub.leave(joined.id);
            return Err(ApiError::param(
                "ticket",
                format!("not a websocket handshake: {e}"),
            ));
        }
    };
    let messages = messages.max_frame_size(MAX_FRAME_BYTES);
    let recorded = Recorded {
        publisher: state.recorder.clone(),
        user: token.name.clone(),
        client_ip: req.peer_addr().map(|a| a.ip()),
        session_id: format!("stream-{}", Uuid::now_v7().simple()),
    };
    let client = Client {
        recorded,
        hub: state.hub.clone(),
        pool: state.pool.clone(),
        cursor_key: state.cursor_key.clone(),
        session,
        replayed: HashSet::new(),
        token_id: token.token_id,
        closing: None,
    };
    actix_web::rt::spawn(client.run(joined, messages));
    Ok(response)
}

/// Spends the tickets (by hash) and answers the token the one presented
/// admits: none if it was unknown, used or expired, or if its token has
/// since been revoked or has expired.
async fn redeem(pool: &PgPool, hashes: &[String]) -> Result<Option<Redeemed>, ApiError> {
    let row: Option<(String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "WITH spent AS (UPDATE auditline.stream_tickets SET used_at = now() \
                        WHERE ticket_hash = ANY($1) AND used_at IS NULL \
                        RETURNING token_id, expires_at) \
         SELECT t.token_id, t.name, t.expires_at FROM spent \
         JOIN auditline.tokens t ON t.token_id = spent.token_id \
         WHERE spent.expires_at > now() AND t.revoked_at IS NULL \
           AND (t.expires_at IS NULL OR t.expires_at > now()) \
         LIMIT 1",
    )
    .bind(hashes)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(token_id, name, expires_at)| Redeemed {
        token_id,
        name,
        expires_at,
    }))
}

/// Who a connection's subscriptions are recorded as, and where.
struct Recorded {
    publisher: auditline_client::Publisher,
    user: String,
    client_ip: Option<std::net::IpAddr>,
    session_id: String,
}

impl Recorded {
    /// Publishes a subscription (its filter and `since`) as an admin event
    /// and waits for the broker's confirm: a subscription that cannot be
    /// recorded is not served.
    async fn subscription(&self, message: &Value) -> Result<(), ApiError> {
        let mut subscribe = message.clone();
        if let Some(object) = subscribe.as_object_mut() {
            object.remove("type");
        }
        let event = json!({
            "occurred_at": Utc::now().to_rfc3339(),
            "service": "auditline-admin",
            "session_id": self.session_id,
            "user_id": self.user,
            "client_ip": self.client_ip.map(|ip| ip.to_string()),
            "action_type": "admin",
            "endpoint": "/admin/audit/stream",
            "route": "/admin/audit/stream",
            "http_method": "SUBSCRIBE",
            "success": true,
            "metadata": {"subscribe": subscribe},
        });
        let event = auditline_shared::AuditEvent::from_value(event, Utc::now()).map_err(|e| {
            ApiError::Refused {
                status: StatusCode::URI_TOO_LONG,
                code: "request_too_long_to_record",
                message: format!("the subscription cannot be recorded whole: {e}"),
            }
        })?;
        self.publisher.publish(&event).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot record a stream subscription");
            ApiError::Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "unavailable",
                message: "the subscription could not be recorded in the audit trail; retry".into(),
            }
        })?;
        Ok(())
    }
}

struct Client {
    /// Where subscriptions are recorded.
    recorded: Recorded,
    hub: Arc<Hub>,
    pool: PgPool,
    cursor_key: CursorKey,
    session: Session,
    /// Ids sent from the table since the last `since`: their live copies are skipped.
    replayed: HashSet<Uuid>,
    /// The token the connection was opened with.
    token_id: String,
    /// Why the server ends the connection (close code 1008), if it does.
    closing: Option<&'static str>,
}

/// The connection is gone (or must go).
struct Gone;

impl Client {
    async fn send(&mut self, message: Value) -> Result<(), Gone> {
        self.session
            .text(message.to_string())
            .await
            .map_err(|_| Gone)
    }

    async fn error(&mut self, error: ApiError) -> Result<(), Gone> {
        let (field, message) = match &error {
            ApiError::BadBody { field, message } => (field.clone(), message.clone()),
            other => ("$".to_owned(), other.to_string()),
        };
        self.send(json!({"type": "error", "error": {
            "code": "invalid_message",
            "message": format!("`{field}`: {message}"),
            "details": [{"field": field, "message": message}],
        }}))
        .await
    }

    async fn run(mut self, joined: Joined, mut messages: MessageStream) {
        let Joined {
            id,
            mut closed,
            mut queue,
            queued,
            dropped,
        } = joined;
        let settings = self.hub.settings.clone();
        let mut ping = tokio::time::interval(Duration::from_secs(settings.ping_secs.max(1)));
        ping.tick().await;
        let mut heard = Instant::now();
        let idle = Duration::from_secs(settings.idle_secs.max(1));
        loop {
            // Once told to close, nothing more is sent. (Checked here and
            // before each delivery rather than by a biased select, which
            // would let a busy queue starve the client's own frames.)
            if let Some(reason) = told_to_close(&mut closed) {
                self.closing = Some(reason);
                break;
            }
            let outcome = tokio::select! {
                reason = &mut closed => {
                    self.closing = Some(reason.unwrap_or(REVOKED));
                    Err(Gone)
                }
                Some(entry) = queue.recv() => {
                    queued.fetch_sub(entry.len(), Ordering::AcqRel);
                    match told_to_close(&mut closed) {
                        Some(reason) => {
                            self.closing = Some(reason);
                            Err(Gone)
                        }
                        None => self.deliver(entry, &dropped).await,
                    }
                }
                message = messages.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        heard = Instant::now();
                        self.on_text(id, &text).await
                    }
                    Some(Ok(Message::Ping(bytes))) => {
                        heard = Instant::now();
                        self.session.pong(&bytes).await.map_err(|_| Gone)
                    }
                    Some(Ok(Message::Pong(_))) => {
                        heard = Instant::now();
                        Ok(())
                    }
                    Some(Ok(Message::Binary(_))) => {
                        heard = Instant::now();
                        self.error(ApiError::body("$", "send text frames (JSON)")).await
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Err(Gone),
                    Some(Ok(_)) => Ok(()),
                },
                _ = ping.tick() => {
                    if heard.elapsed() > idle {
                        let _ = self.send(json!({"type": "error", "error": {
                            "code": "idle", "message": "nothing heard from the client; closing"}})).await;
                        Err(Gone)
                    } else {
                        self.session.ping(b"").await.map_err(|_| Gone)
                    }
                }
            };
            if outcome.is_err() {
                break;
            }
        }
        self.hub.leave(id);
        let reason = self.closing.map(|reason| CloseReason {
            code: CloseCode::Policy,
            description: Some(reason.into()),
        });
        let _ = self.session.close(reason).await;
    }

    async fn deliver(
        &mut self,
        mut batch: Vec<Arc<StoredEvent>>,
        dropped: &AtomicU64,
    ) -> Result<(), Gone> {
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            self.send(json!({"type": "lagged", "dropped": lost}))
                .await?;
        }
        if !self.replayed.is_empty() {
            batch.retain(|e| !self.replayed.remove(&e.event_id));
        }
        for chunk in batch.chunks(FRAME_EVENTS) {
            self.send(json!({"type": "events", "events": chunk}))
                .await?;
            self.hub.metrics.sent.inc_by(chunk.len() as u64);
        }
        Ok(())
    }

    async fn on_text(&mut self, id: u64, text: &str) -> Result<(), Gone> {
        if let Err(e) = crate::query::body::strict(text.as_bytes()) {
            return self.error(e).await;
        }
        let message: Value = match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(_) => {
                return self
                    .error(ApiError::body("$", "must be a JSON object"))
                    .await;
            }
            Err(e) => {
                return self
                    .error(ApiError::body("$", format!("malformed JSON: {e}")))
                    .await;
            }
        };
        if message.get("type").and_then(Value::as_str) != Some("subscribe") {
            return self
                .error(ApiError::body("type", "expected \"subscribe\""))
                .await;
        }
        if let Some(unknown) = message.as_object().and_then(|m| {
            m.keys()
                .find(|k| !["type", "filter", "since"].contains(&k.as_str()))
        }) {
            let unknown = unknown.clone();
            return self
                .error(ApiError::body(
                    &unknown,
                    "unknown field; known: type, filter, since",
                ))
                .await;
        }
        let filter = match parse_filter(message.get("filter")) {
            Ok(filter) => Arc::new(filter),
            Err(e) => return self.error(e).await,
        };
        let since = match message.get("since") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => match self.cursor_key.decode(text) {
                Ok(cursor) => Some((cursor.occurred_at, cursor.event_id)),
                Err(_) => {
                    return self
                        .error(ApiError::body(
                            "since",
                            "not a cursor issued by this server for a search",
                        ))
                        .await;
                }
            },
            Some(_) => {
                return self
                    .error(ApiError::body("since", "must be a string"))
                    .await;
            }
        };
        // The stored history is read only for a token still valid now.
        if since.is_some() {
            match ended_tokens(&self.pool, std::slice::from_ref(&self.token_id)).await {
                Ok(ended) => {
                    if let Some(reason) = ended.values().next() {
                        self.closing = Some(reason);
                        return Err(Gone);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the token before a replay");
                    return self
                        .error(ApiError::body(
                            "since",
                            "the token could not be checked; retry",
                        ))
                        .await;
                }
            }
        }
        // Recorded before anything is served: the filter, and the replay.
        if let Err(e) = self.recorded.subscription(&message).await {
            return self.error(e).await;
        }
        // Live first, then the table: see the module doc.
        self.hub.set_filter(id, Some(filter.clone()));
        self.replayed.clear();
        if let Some(after) = since {
            match self.replay(&filter, after).await {
                Ok(Some(())) => {}
                Ok(None) => {
                    self.hub.set_filter(id, None);
                    return self
                        .error(ApiError::body(
                            "since",
                            format!(
                                "more than {REPLAY_MAX} stored events follow this cursor; search or export them, then subscribe with a later cursor"
                            ),
                        ))
                        .await;
                }
                Err(ReplayError::Gone) => return Err(Gone),
                Err(ReplayError::Database(e)) => {
                    self.hub.set_filter(id, None);
                    tracing::warn!(error = %e, "stream replay failed");
                    return self
                        .error(ApiError::body(
                            "since",
                            "the stored events could not be read; retry",
                        ))
                        .await;
                }
            }
            self.send(json!({"type": "caught_up"})).await?;
        }
        Ok(())
    }

    /// Sends the stored events after `after` that match; `None` when there
    /// are more than [`REPLAY_MAX`].
    async fn replay(
        &mut self,
        filter: &Filters,
        after: (DateTime<Utc>, Uuid),
    ) -> Result<Option<()>, ReplayError> {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(concat!(
            "SELECT ",
            auditline_shared::event_columns!(),
            " FROM auditline.events WHERE (occurred_at, event_id) > ("
        ));
        qb.push_bind(after.0)
            .push(", ")
            .push_bind(after.1)
            .push(")");
        filter.push_conditions(&mut qb);
        qb.push(" ORDER BY occurred_at, event_id LIMIT ")
            .push_bind(REPLAY_MAX + 1);
        let events: Vec<StoredEvent> = qb.build_query_as().fetch_all(&self.pool).await?;
        if events.len() as i64 > REPLAY_MAX {
            return Ok(None);
        }
        self.replayed = events.iter().map(|e| e.event_id).collect();
        for chunk in events.chunks(FRAME_EVENTS) {
            self.send(json!({"type": "events", "events": chunk}))
                .await
                .map_err(|Gone| ReplayError::Gone)?;
            self.hub.metrics.sent.inc_by(chunk.len() as u64);
        }
        Ok(Some(()))
    }
}

/// The reason the hub gave for closing, if it did.
fn told_to_close(closed: &mut oneshot::Receiver<&'static str>) -> Option<&'static str> {
    match closed.try_recv() {
        Ok(reason) => Some(reason),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(oneshot::error::TryRecvError::Closed) => Some(REVOKED),
    }
}

/// Why a replay stopped.
enum ReplayError {
    Gone,
    Database(sqlx::Error),
}

impl From<sqlx::Error> for ReplayError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

/// Registers `/admin/audit/stream[/ticket]` (inside the `/admin/audit` scope).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    use super::get;
    use actix_web::web;
    use auditline_shared::error::methods;
    cfg.service(methods(
        "/stream/ticket",
        "POST",
        vec![web::post().to(ticket)],
    ))
    .service(get("/stream", web::get().to(stream)));
}
