//! `AuditMiddleware`: one line to audit every request of an actix-web app.
//!
//! ```ignore
//! let audit = AuditMiddleware::start(AuditConfig::new("files-api"), publisher, spool)?;
//! App::new().wrap(audit.clone())   // outermost, so it sees the final status
//! ```
//!
//! For each request it records the session id (header, then cookie; a new one
//! is generated and returned in the header when absent or unusable), the user
//! id (the [`AuditUser`] request extension the app's authentication sets), the
//! client IP (the peer, or the right-most `X-Forwarded-For` address not in the
//! trusted proxy list when the peer is a trusted proxy), the action type (route
//! rules on the path), the route template, method, request and response
//! sizes, response time, status, success, and the [`AuditResources`] the
//! handler adds.
//!
//! It never blocks or fails the request: the observation is kept by the
//! worker thread that served it and handed over, up to 64 at a time (or after
//! 5 ms), into a bounded queue (the only work on the request path is copying a
//! few strings; hand-offs in groups keep the workers from contending on the
//! queue for every request); a background task turns observations into
//! events and publishes them in batches. When the queue is full, or the broker cannot take them, events go
//! to the durable spool and are replayed later: never dropped.

use crate::{publisher::Publisher, spool::Spool};
use actix_web::{
    Error, HttpMessage,
    body::{BodySize, MessageBody},
    dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready},
    http::{
        Method,
        header::{self, HeaderName, HeaderValue},
    },
};
use auditline_shared::{
    AuditEvent,
    event::{
        MAX_METADATA_BYTES, MAX_RESOURCE_USAGE_BYTES, check_action_type, check_service,
        object_within,
    },
};
use chrono::{DateTime, SubsecRound, Utc};
use futures_util::future::{LocalBoxFuture, Ready, ready};
use serde_json::{Map, Value};
use std::{
    net::IpAddr,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};
use tokio::sync::mpsc;

/// Set by the app's authentication (`req.extensions_mut().insert(AuditUser(..))`).
#[derive(Debug, Clone)]
pub struct AuditUser(pub String);

/// Set by a handler to record what the request cost (`cpu_ms`, `quota_units`, …).
#[derive(Debug, Clone, Default)]
pub struct AuditResources(pub Map<String, Value>);

/// Set by the app to attach metadata to the request's audit event (at most
/// 16 KiB serialized; larger metadata is left out with a warning).
#[derive(Debug, Clone, Default)]
pub struct AuditMetadata(pub Map<String, Value>);

/// A network given as `address/prefix`, or a single address.
#[derive(Debug, Clone, Copy)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: bad prefix length"))?,
            None => max,
        };
        // Kept as the network address, so `10.1.2.3/8` is 10.0.0.0/8.
        Ok(Self {
            network: mask(network, prefix),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

/// `network/prefix`, as PostgreSQL's `inet` reads it.
impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `ip` with every bit after the first `prefix` cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

/// How requests are turned into audit events.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The `service` of every event.
    pub service: String,
    /// Header carrying the session id (also set on the response when generated).
    pub session_header: String,
    /// Cookie read when the header is absent.
    pub session_cookie: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// `(path prefix, action type)`, first match wins; the rest is `other`.
    pub rules: Vec<(String, String)>,
    /// Observations waiting for the background publisher (counted in
    /// hand-offs of up to 64); beyond it they are spooled.
    pub queue_capacity: usize,
    /// How long the publisher gathers observations before it publishes them:
    /// the delay it adds to an event's arrival in return for fewer, larger
    /// messages (on the broker, each message costs far more than its bytes).
    pub linger: std::time::Duration,
    /// Events per (zstd-compressed NDJSON) message.
    pub events_per_message: usize,
}

impl AuditConfig {
    /// Defaults: header `x-session-id`, cookie `session_id`, no trusted proxy,
    /// and rules for file operations, code execution, admin and auth.
    pub fn new(service: &str) -> Self {
        let rules = [
            ("/files", "file"),
            ("/file", "file"),
            ("/upload", "file"),
            ("/download", "file"),
            ("/code", "code_exec"),
            ("/exec", "code_exec"),
            ("/run", "code_exec"),
            ("/notebooks", "code_exec"),
            ("/admin", "admin"),
            ("/auth", "auth"),
            ("/login", "auth"),
            ("/logout", "auth"),
            ("/oauth", "auth"),
            ("/session", "auth"),
        ];
        Self {
            service: service.to_owned(),
            session_header: "x-session-id".into(),
            session_cookie: Some("session_id".into()),
            trusted_proxies: Vec::new(),
            rules: rules
                .iter()
                .map(|(p, a)| ((*p).to_owned(), (*a).to_owned()))
                .collect(),
            queue_capacity: 10_000,
            linger: std::time::Duration::from_millis(25),
            events_per_message: 500,
        }
    }

    /// The action type of a path.
    pub fn action_type(&self, path: &str) -> &str {
        self.rule(path)
            .map(|i| self.rules[i].1.as_str())
            .unwrap_or("other")
    }

    /// The index of the first rule matching `path`.
    fn rule(&self, path: &str) -> Option<usize> {
        self.rules.iter().position(|(prefix, _)| {
            path.strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// What the request path hands to the background task.
#[derive(Debug)]
struct Observed {
    occurred_at: DateTime<Utc>,
    session_id: String,
    user_id: Option<String>,
    client_ip: Option<IpAddr>,
    /// The index of the matching rule (`other` when none).
    rule: Option<usize>,
    endpoint: String,
    route: Option<String>,
    method: Method,
    request_size: Option<u64>,
    response_size: Option<u64>,
    response_time_ms: f64,
    status: u16,
    resources: Option<Map<String, Value>>,
    metadata: Option<Map<String, Value>>,
}

/// `text` without control characters, cut to `max` characters.
fn clip(text: String, max: usize) -> String {
    // The common case, already fine, is kept without copying.
    if text.len() <= max && !text.chars().any(char::is_control) {
        return text;
    }
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

impl Observed {
    /// Builds the event directly: the middleware is a boundary of its own, and
    /// everything it takes from the request is clipped or replaced to fit the
    /// event's rules (a test checks the result against the validator).
    fn into_event(self, config: &AuditConfig) -> AuditEvent {
        let method = self.method.as_str();
        let method = if !method.is_empty()
            && method.len() <= 10
            && method.chars().all(|c| c.is_ascii_uppercase())
        {
            method.to_owned()
        } else {
            "OTHER".to_owned()
        };
        let endpoint = clip(self.endpoint, 255);
        let resource_usage = self.resources.filter(|usage| {
            object_within(usage, MAX_RESOURCE_USAGE_BYTES)
                .inspect_err(|e| tracing::warn!(error = %e, "resource usage not recorded"))
                .is_ok()
        });
        AuditEvent {
            event_id: uuid::Uuid::now_v7(),
            occurred_at: self.occurred_at.trunc_subsecs(6),
            service: config.service.clone(),
            session_id: self.session_id,
            user_id: self.user_id.map(|u| clip(u, 255)).filter(|u| !u.is_empty()),
            client_ip: self.client_ip,
            action_type: self
                .rule
                .map_or("other", |i| config.rules[i].1.as_str())
                .to_owned(),
            endpoint: if endpoint.is_empty() {
                "/".to_owned()
            } else {
                endpoint
            },
            route: self.route.map(|r| clip(r, 255)).filter(|r| !r.is_empty()),
            http_method: method,
            request_size: self.request_size.map(|n| n.min(i64::MAX as u64)),
            response_size: self.response_size.map(|n| n.min(i64::MAX as u64)),
            response_time_ms: Some(self.response_time_ms).filter(|ms| ms.is_finite() && *ms >= 0.0),
            status_code: Some(self.status).filter(|s| (100..=599).contains(s)),
            success: self.status < 400,
            resource_usage,
            metadata: self.metadata.filter(|metadata| {
                object_within(metadata, MAX_METADATA_BYTES)
                    .inspect_err(|e| tracing::warn!(error = %e, "audit metadata not recorded"))
                    .is_ok()
            }),
        }
    }
}

struct Shared {
    config: Arc<AuditConfig>,
    session_header: HeaderName,
    queue: mpsc::Sender<Vec<Observed>>,
    spool: Arc<Spool>,
    spilled: AtomicU64,
    overflow: std::sync::Mutex<Overflow>,
}

/// The middleware (cheap to clone; clones share the queue and background task).
#[derive(Clone)]
pub struct AuditMiddleware {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditMiddleware")
            .field("service", &self.shared.config.service)
            .finish()
    }
}

impl AuditMiddleware {
    /// Starts the background publisher and spool replayer; call inside a
    /// tokio (actix) runtime.
    pub fn start(
        config: AuditConfig,
        publisher: Publisher,
        spool: Arc<Spool>,
    ) -> anyhow::Result<Self> {
        check_service(&config.service)
            .map_err(|e| anyhow::anyhow!("service {:?} {e}", config.service))?;
        for (prefix, action) in &config.rules {
            check_action_type(action)
                .map_err(|e| anyhow::anyhow!("rule {prefix:?}: action type {action:?} {e}"))?;
        }
        let session_header =
            HeaderName::try_from(config.session_header.as_str()).map_err(|_| {
                anyhow::anyhow!("{:?} is not a valid header name", config.session_header)
            })?;
        let (queue, rx) = mpsc::channel((config.queue_capacity / HANDOFF).max(1));
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            session_header,
            queue,
            spool: spool.clone(),
            spilled: AtomicU64::new(0),
            overflow: std::sync::Mutex::default(),
        });
        tokio::spawn(publish_loop(
            rx,
            publisher.clone(),
            spool.clone(),
            shared.config.clone(),
        ));
        tokio::spawn(spool.replay_forever(publisher, MAX_BATCH, |_, _| {}));
        Ok(Self { shared })
    }

    /// Observations that went to the spool because the queue was full.
    pub fn spilled(&self) -> u64 {
        self.shared.spilled.load(Ordering::Relaxed)
    }

    fn hand_over(&self, observed: Vec<Observed>) {
        match self.shared.queue.try_send(observed) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(observed)
                | mpsc::error::TrySendError::Closed(observed),
            ) => self.spill(observed),
        }
    }

    /// Sends an observation the queue could not take to the spool. Spilled
    /// observations are gathered and written by one blocking task, one fsync
    /// for all that arrived meanwhile: a task and an fsync per request would
    /// make a busy app slower the more it falls behind.
    fn spill(&self, observed: Vec<Observed>) {
        let shared = &self.shared;
        shared
            .spilled
            .fetch_add(observed.len() as u64, Ordering::Relaxed);
        let start_flusher = {
            let mut overflow = shared.overflow.lock().unwrap_or_else(|p| p.into_inner());
            overflow.waiting.extend(observed);
            !std::mem::replace(&mut overflow.flushing, true)
        };
        if start_flusher {
            let shared = shared.clone();
            let flush = move || {
                loop {
                    let waiting = {
                        let mut overflow =
                            shared.overflow.lock().unwrap_or_else(|p| p.into_inner());
                        if overflow.waiting.is_empty() {
                            overflow.flushing = false;
                            return;
                        }
                        std::mem::take(&mut overflow.waiting)
                    };
                    let events: Vec<AuditEvent> = waiting
                        .into_iter()
                        .map(|o| o.into_event(&shared.config))
                        .collect();
                    if let Err(e) = shared.spool.append(&events) {
                        tracing::error!(error = %e, events = events.len(), "audit events could be neither queued nor spooled");
                    }
                }
            };
            // Outside a runtime (a worker's last hand-off at shutdown) the
            // write happens right here.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(flush)),
                Err(_) => flush(),
            }
        }
    }
}

/// Observations handed over at once.
const HANDOFF: usize = 64;
/// The longest an observation waits in its worker before it is handed over.
const HANDOFF_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// The observations a worker thread gathered and has not handed over yet.
struct Pending {
    items: std::cell::RefCell<Vec<Observed>>,
    /// Whether a task will hand the items over after [`HANDOFF_DELAY`].
    timer: std::cell::Cell<bool>,
    middleware: AuditMiddleware,
}

impl Pending {
    fn push(self: &Rc<Self>, observed: Observed) {
        let full = {
            let mut items = self.items.borrow_mut();
            items.push(observed);
            items.len() >= HANDOFF
        };
        if full {
            self.hand_over();
        } else if !self.timer.replace(true) {
            let pending = self.clone();
            actix_web::rt::spawn(async move {
                tokio::time::sleep(HANDOFF_DELAY).await;
                pending.timer.set(false);
                pending.hand_over();
            });
        }
    }

    fn hand_over(&self) {
        let items = std::mem::replace(&mut *self.items.borrow_mut(), Vec::with_capacity(HANDOFF));
        if !items.is_empty() {
            self.middleware.hand_over(items);
        }
    }
}

/// The worker (and its tasks) let go: what it still holds is handed over.
impl Drop for Pending {
    fn drop(&mut self) {
        let items = std::mem::take(self.items.get_mut());
        if !items.is_empty() {
            self.middleware.hand_over(items);
        }
    }
}

/// Observations waiting for the spool, and whether a task is writing them.
#[derive(Default)]
struct Overflow {
    waiting: Vec<Observed>,
    flushing: bool,
}

/// The most observations published in one batch.
const MAX_BATCH: usize = 5_000;
/// Batches being published at once: the loop goes on taking observations
/// while earlier batches wait for their confirms, so the broker's confirm
/// latency does not let the queue fill up (and overflow into the spool).
const IN_FLIGHT: usize = 4;

async fn publish_loop(
    mut rx: mpsc::Receiver<Vec<Observed>>,
    publisher: Publisher,
    spool: Arc<Spool>,
    config: Arc<AuditConfig>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut handoffs = Vec::new();
    while rx.recv_many(&mut handoffs, MAX_BATCH / HANDOFF).await > 0 {
        let mut count: usize = handoffs.iter().map(Vec::len).sum();
        if count < config.events_per_message {
            // Linger so that a busy app hands over hundreds of observations
            // per wake-up, and they leave in few messages.
            tokio::time::sleep(config.linger).await;
            while count < MAX_BATCH {
                match rx.try_recv() {
                    Ok(observed) => {
                        count += observed.len();
                        handoffs.push(observed);
                    }
                    Err(_) => break,
                }
            }
        }
        let events: Vec<AuditEvent> = handoffs
            .drain(..)
            .flatten()
            .map(|o| o.into_event(&config))
            .collect();
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (publisher, spool) = (publisher.clone(), spool.clone());
        let per_message = config.events_per_message;
        tokio::spawn(async move {
            // New events do not wait behind spooled ones: the spool is
            // replayed alongside. Sending everything through the spool while
            // it is not empty would make it the path of every event under
            // load (an fsync, a read and a re-parse each), and the app could
            // never catch up again. Order in the queue carries no meaning:
            // every event has its `occurred_at`.
            if publisher
                .publish_batch_of(&events, per_message)
                .await
                .is_err()
            {
                let appended = tokio::task::spawn_blocking(move || spool.append(&events)).await;
                if !matches!(appended, Ok(Ok(()))) {
                    tracing::error!("audit events could be neither published nor spooled");
                }
            }
            drop(permit);
        });
    }
}

impl<S, B> Transform<S, ServiceRequest> for AuditMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = AuditService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AuditService {
            service: Rc::new(service),
            middleware: self.clone(),
            pending: Rc::new(Pending {
                items: std::cell::RefCell::new(Vec::with_capacity(HANDOFF)),
                timer: std::cell::Cell::new(false),
                middleware: self.clone(),
            }),
        }))
    }
}

/// The per-worker service [`AuditMiddleware`] wraps around the app.
pub struct AuditService<S> {
    service: Rc<S>,
    middleware: AuditMiddleware,
    pending: Rc<Pending>,
}

impl<S> std::fmt::Debug for AuditService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditService").finish_non_exhaustive()
    }
}

fn usable_session(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && !id.chars().any(char::is_control)
}

impl<S, B> Service<ServiceRequest> for AuditService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let occurred_at = Utc::now();
        let config = &self.middleware.shared.config;
        let from_header = req
            .headers()
            .get(&self.middleware.shared.session_header)
            .and_then(|v| v.to_str().ok())
            .filter(|s| usable_session(s))
            .map(str::to_owned);
        let from_cookie = || {
            config
                .session_cookie
                .as_deref()
                .and_then(|name| cookie(&req, name))
                .filter(|s| usable_session(s))
        };
        let (session_id, generated) = match from_header.or_else(from_cookie) {
            Some(id) => (id, false),
            None => (uuid::Uuid::new_v4().simple().to_string(), true),
        };
        let client_ip = client_ip(&req, &config.trusted_proxies);
        let endpoint = match req.query_string() {
            "" => req.path().to_owned(),
            q => format!("{}?{q}", req.path()),
        };
        let rule = config.rule(req.path());
        let method = req.method().clone();
        let request_size = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        // A generated session id is returned to the client in the header.
        let new_session = generated
            .then(|| HeaderValue::from_str(&session_id).ok())
            .flatten()
            .map(|value| (self.middleware.shared.session_header.clone(), value));
        let pending = self.pending.clone();
        let service = self.service.clone();
        Box::pin(async move {
            let result = service.call(req).await;
            let (status, route, user_id, resources, metadata, response_size) = match &result {
                Ok(res) => {
                    let request = res.request();
                    // The middleware is outermost: nothing needs these after it.
                    let mut extensions = request.extensions_mut();
                    let response_size = match res.response().body().size() {
                        BodySize::Sized(n) => Some(n),
                        BodySize::None => Some(0),
                        BodySize::Stream => None,
                    };
                    (
                        res.status().as_u16(),
                        request.match_pattern(),
                        extensions.remove::<AuditUser>().map(|u| u.0),
                        extensions
                            .remove::<AuditResources>()
                            .map(|r| r.0)
                            .filter(|m| !m.is_empty()),
                        extensions
                            .remove::<AuditMetadata>()
                            .map(|m| m.0)
                            .filter(|m| !m.is_empty()),
                        response_size,
                    )
                }
                Err(e) => (
                    e.as_response_error().status_code().as_u16(),
                    None,
                    None,
                    None,
                    None,
                    None,
                ),
            };
            pending.push(Observed {
                occurred_at,
                session_id,
                user_id,
                client_ip,
                rule,
                endpoint,
                route,
                method,
                request_size,
                response_size,
                response_time_ms: started.elapsed().as_secs_f64() * 1000.0,
                status,
                resources,
                metadata,
            });
            let mut res = result?;
            if let Some((name, value)) = new_session {
                res.headers_mut().insert(name, value);
            }
            Ok(res)
        })
    }
}

/// The value of cookie `name` (`Cookie: a=1; b=2`).
fn cookie(req: &ServiceRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

fn client_ip(req: &ServiceRequest, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    if !trusted.iter().any(|c| c.contains(peer)) {
        return Some(peer);
    }
    // Walk X-Forwarded-For from the right: the first address that is not a
    // trusted proxy is the client as far as can be trusted.
    let forwarded: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    forwarded
        .iter()
        .rev()
        .find(|ip| !trusted.iter().any(|c| c.contains(**ip)))
        .or(forwarded.first())
        .copied()
        .or(Some(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(net.contains("10.2.3.4".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let one = Cidr::parse("::1").expect("cidr");
        assert!(one.contains("::1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.1".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("cidr")
                .contains("8.8.8.8".parse().expect("ip"))
        );
    }

    #[test]
    fn events_built_from_odd_requests_pass_the_validator() {
        let mut usage = Map::new();
        usage.insert("cpu_ms".into(), Value::from(3));
        let observed = Observed {
            occurred_at: Utc::now(),
            session_id: "s".into(),
            user_id: Some(format!("{}\u{7}bell", "u".repeat(300))),
            client_ip: None,
            rule: Some(0),
            endpoint: "/x".repeat(300),
            route: Some(String::new()),
            method: Method::from_bytes(b"mkcol-lower").expect("method"),
            request_size: Some(u64::MAX),
            response_size: None,
            response_time_ms: f64::NAN,
            status: 404,
            resources: Some(usage),
            metadata: Some(Map::from_iter([(
                "big".to_owned(),
                Value::String("x".repeat(20_000)),
            )])),
        };
        let event = observed.into_event(&AuditConfig::new("svc"));
        let reparsed = AuditEvent::parse(&event.to_json())
            .expect("the validator accepts what the middleware builds");
        assert_eq!(reparsed.http_method, "OTHER");
        assert_eq!(reparsed.metadata, None, "metadata over 16 KiB is left out");
        assert_eq!(reparsed.endpoint.chars().count(), 255);
        assert!(!reparsed.success);
    }

    #[tokio::test]
    async fn a_service_or_rule_the_events_could_not_carry_is_refused_at_start() {
        let dir =
            std::env::temp_dir().join(format!("auditline-mw-{}", uuid::Uuid::new_v4().simple()));
        let spool = Arc::new(Spool::open(&dir, 1 << 20).expect("spool"));
        let publisher = Publisher::new(&auditline_shared::Settings::default(), "test");
        let long = AuditConfig::new(&"s".repeat(65));
        assert!(AuditMiddleware::start(long, publisher.clone(), spool.clone()).is_err());
        let mut bad_rule = AuditConfig::new("svc");
        bad_rule.rules.push(("/x".into(), "Not Valid".into()));
        assert!(AuditMiddleware::start(bad_rule, publisher, spool).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn default_rules_pick_action_types_by_path() {
        let config = AuditConfig::new("svc");
        assert_eq!(config.action_type("/files/42"), "file");
        assert_eq!(config.action_type("/filesystem"), "other");
        assert_eq!(config.action_type("/code/run"), "code_exec");
        assert_eq!(config.action_type("/admin/users/1/roles"), "admin");
        assert_eq!(config.action_type("/login"), "auth");
        assert_eq!(config.action_type("/health"), "other");
    }
}
