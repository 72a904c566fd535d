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
//! It never blocks or fails the request. When the response is ready, the
//! worker thread that served it writes the event's JSON line straight from
//! the request and response (no owned event, no strings copied between
//! threads) into a buffer of its own, and hands the buffer over, 64 events at
//! a time (or after 5 ms), into a bounded queue; a background task joins the
//! buffers into compressed NDJSON messages and publishes them, holding up to
//! 16 MiB of compressed messages while the broker is slow to confirm. When
//! the queue is full, or the broker cannot take them, events go to the
//! durable spool and are replayed later: never dropped.
//!
//! At shutdown, stop the server first (its workers hand over what they hold
//! as they stop), then await [`AuditMiddleware::shutdown`]: it publishes, or
//! spools, every event taken. A request whose future is dropped before it
//! answers (a forced shutdown, a connection torn down) is still recorded,
//! with no status and `success: false`.

use crate::{publisher::Publisher, spool::Spool};
use actix_web::{
    Error, HttpMessage,
    body::{BodySize, MessageBody},
    dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready},
    http::{
        Method, Uri,
        header::{self, HeaderName, HeaderValue},
    },
};
use auditline_event::event::{
    EventView, MAX_METADATA_BYTES, MAX_RESOURCE_USAGE_BYTES, check_action_type, check_http_method,
    check_service, check_session_id, no_control, object_within,
};
use auditline_event::redact::{self, Redactor};
use chrono::{DateTime, Utc};
use futures_util::future::{Ready, ready};
use serde_json::{Map, Value};
use std::{
    borrow::Cow,
    future::Future,
    net::IpAddr,
    pin::Pin,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Instant,
};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

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
    /// How long the publisher gathers observations before it publishes them
    /// (less when a message's worth is queued sooner): the delay it adds to
    /// an event's arrival in return for fewer, larger messages (on the
    /// broker, each message costs far more than its bytes).
    pub linger: std::time::Duration,
    /// The most events in one (zstd-compressed NDJSON) message; messages
    /// are made of whole hand-offs of up to 64 events. The default, 5,000,
    /// is everything one linger gathers (up to 5,000) in one message: the
    /// broker's cost is mostly per message (with 500-event messages it took
    /// twice the CPU an event), and the writer bounds the events it holds
    /// however large the messages are.
    pub events_per_message: usize,
    /// Which query parameters carry credentials: their values, and anything
    /// shaped like an Auditline token or ticket, are recorded as
    /// `[REDACTED]` in `endpoint` (see `auditline_event::redact`).
    pub redact: Redactor,
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
            linger: std::time::Duration::from_millis(50),
            events_per_message: MAX_BATCH,
            redact: Redactor::default(),
        }
    }

    /// The action type of a path.
    pub fn action_type(&self, path: &str) -> &str {
        self.rule(path)
            .map(|i| self.rules[i].1.as_str())
            .unwrap_or("other")
    }

    /// For each rule, the first rule with its action type (`None` for
    /// `other`): events of rules that share an action type share it.
    fn action_ids(&self) -> Vec<Option<usize>> {
        self.rules
            .iter()
            .map(|(_, action)| {
                (action != "other")
                    .then(|| self.rules.iter().position(|(_, a)| a == action))
                    .flatten()
            })
            .collect()
    }

    /// The index of the first rule matching `path`.
    fn rule(&self, path: &str) -> Option<usize> {
        self.rules.iter().position(|(prefix, _)| {
            path.strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// What the middleware saw of one request, borrowed from the request and its
/// response while they are still there: written as the event's JSON line
/// straight away, with no owned event or strings in between.
#[derive(Debug)]
struct Observed<'a> {
    occurred_at: DateTime<Utc>,
    session_id: &'a str,
    user_id: Option<&'a str>,
    client_ip: Option<IpAddr>,
    /// The index of the matching rule (`other` when none).
    rule: Option<usize>,
    endpoint: &'a str,
    route: Option<&'a str>,
    method: &'a Method,
    request_size: Option<u64>,
    response_size: Option<u64>,
    response_time_ms: f64,
    /// `None` for a request that never answered (its future was dropped).
    status: Option<u16>,
    resources: Option<&'a Map<String, Value>>,
    metadata: Option<&'a Map<String, Value>>,
}

/// `text` without control characters, cut to `max` characters.
fn clip(text: &str, max: usize) -> Cow<'_, str> {
    // The common case, already fine, is kept without copying.
    if text.len() <= max && no_control(text) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().filter(|c| !c.is_control()).take(max).collect())
}

impl Observed<'_> {
    /// Appends the event's JSON. The middleware is a boundary of its own:
    /// everything it takes from the request is clipped or replaced to fit the
    /// event's rules (a test checks the result against the validator).
    fn write_json(&self, config: &AuditConfig, event_id: Uuid, out: &mut Vec<u8>) {
        let method = self.method.as_str();
        let method = if check_http_method(method).is_ok() {
            method
        } else {
            "OTHER"
        };
        // Credentials in the target are redacted before it is clipped (a
        // clipped secret could lose its shape, not its value).
        let target = config.redact.path_and_query(self.endpoint);
        let endpoint = clip(&target, 255);
        let user_id = self.user_id.map(|u| clip(u, 255));
        let route = self.route.map(|r| clip(r, 255));
        fn within<'m>(
            object: Option<&'m Map<String, Value>>,
            max: usize,
            what: &str,
        ) -> Option<&'m Map<String, Value>> {
            object.filter(|object| {
                object_within(object, max)
                    .inspect_err(|e| tracing::warn!(error = %e, "{what} not recorded"))
                    .is_ok()
            })
        }
        EventView {
            event_id,
            occurred_at: self.occurred_at,
            service: &config.service,
            session_id: self.session_id,
            user_id: user_id.as_deref().filter(|u| !u.is_empty()),
            client_ip: self.client_ip,
            action_type: self.rule.map_or("other", |i| config.rules[i].1.as_str()),
            endpoint: if endpoint.is_empty() { "/" } else { &endpoint },
            route: route.as_deref().filter(|r| !r.is_empty()),
            http_method: method,
            request_size: self.request_size.map(|n| n.min(i64::MAX as u64)),
            response_size: self.response_size.map(|n| n.min(i64::MAX as u64)),
            response_time_ms: Some(self.response_time_ms).filter(|ms| ms.is_finite() && *ms >= 0.0),
            status_code: self.status.filter(|s| (100..=599).contains(s)),
            success: self.status.is_some_and(|s| s < 400),
            resource_usage: within(self.resources, MAX_RESOURCE_USAGE_BYTES, "resource usage"),
            metadata: within(self.metadata, MAX_METADATA_BYTES, "audit metadata"),
        }
        .write_json(out);
    }
}

/// Events as NDJSON lines (one event a line), with their count and whether
/// they share an action type (which names the messages' routing key).
#[derive(Debug, Default)]
struct Lines {
    body: Vec<u8>,
    count: usize,
    action: Action,
}

/// The action types of some events: none yet, all one (the first rule
/// naming it, `None` for `other`: see [`AuditConfig::action_ids`]), or
/// several.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Action {
    #[default]
    None,
    One(Option<usize>),
    Mixed,
}

impl Action {
    fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::None, x) | (x, Self::None) => x,
            (a, b) if a == b => a,
            _ => Self::Mixed,
        }
    }
}

/// `<service>.<action_type>` when the events of `parts` share one, else
/// `<service>.mixed`.
fn routing_key(parts: &[Lines], config: &AuditConfig) -> String {
    let action = match parts.iter().fold(Action::None, |a, l| a.and(l.action)) {
        Action::One(action) => action.map_or("other", |i| config.rules[i].1.as_str()),
        Action::None | Action::Mixed => "mixed",
    };
    format!("{}.{action}", config.service)
}

/// The bytes reserved for an event's line (a request's event is ~400).
const LINE_BYTES: usize = 512;
/// Emptied buffers kept for the workers to fill again.
const IDLE_BUFFERS: usize = 256;
/// The largest buffer kept (twice what a hand-off of ordinary events needs).
const MAX_KEPT_BUFFER: usize = 2 * HANDOFF * LINE_BYTES;

/// Buffers going round: workers fill them, the publisher empties them and
/// gives them back. Reused, they cost no allocation (a fresh one is faulted
/// in page by page) and mostly no free on another thread than the one that
/// allocated them (which glibc's allocator pays for). One grown past
/// [`MAX_KEPT_BUFFER`] (large metadata) is not kept.
#[derive(Debug, Default)]
struct Buffers(std::sync::Mutex<Vec<Vec<u8>>>);

impl Buffers {
    fn take(&self, events: usize) -> Lines {
        let body = self
            .0
            .lock()
            .ok()
            .and_then(|mut idle| idle.pop())
            .unwrap_or_else(|| Vec::with_capacity(events * LINE_BYTES));
        Lines {
            body,
            count: 0,
            action: Action::None,
        }
    }

    fn give_back(&self, mut body: Vec<u8>) {
        body.clear();
        if body.capacity() <= MAX_KEPT_BUFFER
            && let Ok(mut idle) = self.0.lock()
            && idle.len() < IDLE_BUFFERS
        {
            idle.push(body);
        }
    }
}

struct Shared {
    config: Arc<AuditConfig>,
    session_header: HeaderName,
    queue: mpsc::Sender<Lines>,
    /// [`AuditConfig::action_ids`].
    action_ids: Vec<Option<usize>>,
    /// Hand-offs that make a message (see [`Signals::batch_queued`]).
    batch_handoffs: usize,
    buffers: Arc<Buffers>,
    spiller: Arc<Spiller>,
    /// Workers' [`Pending`] still alive: each hands over what it holds as it
    /// goes, so shutdown waits for none to be left.
    workers: std::sync::atomic::AtomicUsize,
    signals: Arc<Signals>,
    /// The spool's replayer, stopped at shutdown (replay is safe to cut).
    replayer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Between [`AuditMiddleware::shutdown`] and the publish loop (which holds
/// these, not [`Shared`] and its queue sender: with the last middleware
/// dropped, the queue closes and the loop ends on its own).
#[derive(Default)]
struct Signals {
    /// Set by shutdown: the publish loop takes what is queued, publishes it
    /// and ends.
    closing: watch::Sender<bool>,
    /// Set when shutdown's grace is over: publishes still unconfirmed give up
    /// and spool their events.
    hurry: watch::Sender<bool>,
    /// Set by the publish loop once everything it took is confirmed or spooled.
    drained: watch::Sender<bool>,
    /// A message's worth of hand-offs is queued: the publish loop stops
    /// lingering (so the queue holds a busy app's events however long the
    /// linger).
    batch_queued: tokio::sync::Notify,
}

/// Events on their way to the spool: those the queue could not take (full,
/// or closed at shutdown) and those the broker did not confirm. One thread at
/// a time writes them, one fsync for all that arrived meanwhile: a task and
/// an fsync per request would make a busy app slower the more it falls
/// behind.
struct Spiller {
    spool: Arc<Spool>,
    buffers: Arc<Buffers>,
    spilled: AtomicU64,
    overflow: std::sync::Mutex<Overflow>,
}

impl Spiller {
    fn spill(self: &Arc<Self>, lines: impl IntoIterator<Item = Lines>) {
        let start_writer = {
            let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            for lines in lines {
                self.spilled
                    .fetch_add(lines.count as u64, Ordering::Relaxed);
                overflow.waiting.push(lines);
            }
            !overflow.waiting.is_empty() && !std::mem::replace(&mut overflow.flushing, true)
        };
        if start_writer {
            // A thread of its own, not a runtime's blocking pool: a runtime
            // shutting down (a worker's last hand-off) may never run a task
            // given to it, and `flushing` would stay set. Spills are rare (a
            // full queue, an absent broker, shutdown); should no thread
            // start, the write happens right here.
            let on_thread = self.clone();
            let started = std::thread::Builder::new()
                .name("audit-spill".into())
                .spawn(move || on_thread.write());
            if started.is_err() {
                self.write();
            }
        }
    }

    /// Whether nothing waits for the spool or is being written to it.
    fn idle(&self) -> bool {
        let overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        !overflow.flushing && overflow.waiting.is_empty()
    }

    /// Writes the spilled events to the spool until none wait, then clears
    /// `flushing`.
    fn write(&self) {
        /// Clears `flushing` should the writer panic, so that the next spill
        /// starts another and shutdown does not wait for this one.
        struct Guard<'a>(&'a Spiller);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut overflow = self.0.overflow.lock().unwrap_or_else(|p| p.into_inner());
                    overflow.flushing = false;
                }
            }
        }
        let _guard = Guard(self);
        loop {
            let waiting = {
                let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
                if overflow.waiting.is_empty() {
                    overflow.flushing = false;
                    return;
                }
                std::mem::take(&mut overflow.waiting)
            };
            let parts: Vec<&[u8]> = waiting.iter().map(|l| l.body.as_slice()).collect();
            if let Err(e) = self.spool.append_ndjson(&parts) {
                let events: usize = waiting.iter().map(|l| l.count).sum();
                tracing::error!(error = %e, events, "audit events could be neither published nor spooled");
            }
            for lines in waiting {
                self.buffers.give_back(lines.body);
            }
        }
    }
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
        let buffers = Arc::new(Buffers::default());
        let shared = Arc::new(Shared {
            action_ids: config.action_ids(),
            // Half the queue at most, so that the rest takes what comes meanwhile.
            batch_handoffs: (config.events_per_message.min(MAX_BATCH) / HANDOFF)
                .min(queue.max_capacity() / 2)
                .max(1),
            config: Arc::new(config),
            session_header,
            queue,
            buffers: buffers.clone(),
            spiller: Arc::new(Spiller {
                spool: spool.clone(),
                buffers,
                spilled: AtomicU64::new(0),
                overflow: std::sync::Mutex::default(),
            }),
            workers: std::sync::atomic::AtomicUsize::new(0),
            signals: Arc::default(),
            replayer: std::sync::Mutex::default(),
        });
        tokio::spawn(publish_loop(
            rx,
            publisher.clone(),
            shared.spiller.clone(),
            (shared.config.clone(), shared.signals.clone()),
        ));
        let replayer = tokio::spawn(spool.replay_forever(publisher, MAX_BATCH, |_, _| {}));
        *shared.replayer.lock().unwrap_or_else(|p| p.into_inner()) = Some(replayer);
        Ok(Self { shared })
    }

    /// Events that went to the spool: the queue full (or closed), or the
    /// broker not confirming them.
    pub fn spilled(&self) -> u64 {
        self.shared.spiller.spilled.load(Ordering::Relaxed)
    }

    /// Publishes, or spools, every event taken, and stops taking new ones
    /// (later ones go straight to the spool). Call it once the server has
    /// stopped: it waits (up to `grace`) for the workers to let go, each
    /// handing over what it holds. Publishes still unconfirmed after `grace`
    /// give up and spool their events (a broker that comes back later may
    /// hold some of them too: the writer stores each event once). Returns
    /// when every event taken is confirmed by the broker or written to the
    /// spool, unless the spool fails or a step overstays its bound (each
    /// logged as an error); the spool's replay stops (what it holds is
    /// replayed at the next start).
    pub async fn shutdown(&self, grace: std::time::Duration) {
        use std::time::Duration;
        let shared = &self.shared;
        let signals = &shared.signals;
        let deadline = tokio::time::Instant::now() + grace;
        // Workers stop after the server has answered its stop; their last
        // events (requests cut short among them) come as they go.
        while shared.workers.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("audit middleware shut down while workers still serve requests");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let replayer = shared
            .replayer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(replayer) = replayer {
            replayer.abort();
            let _ = replayer.await;
        }
        signals.closing.send_replace(true);
        let mut drained = signals.drained.subscribe();
        if tokio::time::timeout_at(deadline, drained.wait_for(|d| *d))
            .await
            .is_err()
        {
            tracing::warn!(?grace, "audit events not confirmed in time go to the spool");
            signals.hurry.send_replace(true);
        }
        // Spool writes only from here on; bounded all the same, should the
        // publish loop be gone or the disk hang.
        let more = tokio::time::Instant::now() + grace.max(Duration::from_secs(10));
        if tokio::time::timeout_at(more, drained.wait_for(|d| *d))
            .await
            .is_err()
        {
            tracing::error!("the audit publisher did not finish; events it held may be lost");
        }
        // Events spilled meanwhile.
        while !shared.spiller.idle() {
            if tokio::time::Instant::now() >= more {
                tracing::error!("spilled audit events were not written to the spool in time");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn hand_over(&self, lines: Lines) {
        let queue = &self.shared.queue;
        match queue.try_send(lines) {
            Ok(()) => {
                if queue.max_capacity() - queue.capacity() >= self.shared.batch_handoffs {
                    self.shared.signals.batch_queued.notify_one();
                }
            }
            Err(
                mpsc::error::TrySendError::Full(lines) | mpsc::error::TrySendError::Closed(lines),
            ) => self.shared.spiller.spill([lines]),
        }
    }
}

/// A grace for [`AuditMiddleware::shutdown`] that fits a service's usual
/// stop timeout (what the demo app and the admin service use).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Events handed over at once (fewer when a message holds fewer).
const HANDOFF: usize = 64;
/// The longest an event waits in its worker before it is handed over.
const HANDOFF_DELAY: std::time::Duration = std::time::Duration::from_millis(5);
/// How long a worker's reading of the wall clock is used to date requests by
/// the monotonic clock alone (one clock read a request saved). In that time
/// the two clocks part by at most 50 µs (NTP slews by 500 ppm at most); a
/// step of the wall clock is seen at the next reading.
const WALL_CLOCK_REUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// What a worker thread wrote and has not handed over yet, and its reading
/// of the wall clock.
struct Pending {
    lines: std::cell::RefCell<Lines>,
    /// Events a hand-off holds.
    handoff: usize,
    /// Whether a task will hand the lines over after [`HANDOFF_DELAY`].
    timer: std::cell::Cell<bool>,
    /// An instant and the wall-clock time (µs since 1970) read with it.
    wall_clock: std::cell::Cell<(Instant, i64)>,
    middleware: AuditMiddleware,
}

impl Pending {
    fn new(middleware: AuditMiddleware) -> Self {
        middleware.shared.workers.fetch_add(1, Ordering::AcqRel);
        let handoff = HANDOFF.min(middleware.shared.config.events_per_message.max(1));
        Self {
            lines: std::cell::RefCell::new(middleware.shared.buffers.take(handoff)),
            handoff,
            timer: std::cell::Cell::new(false),
            wall_clock: std::cell::Cell::new((Instant::now(), Utc::now().timestamp_micros())),
            middleware,
        }
    }

    /// The wall-clock time of `at`, from the worker's last reading of the
    /// wall clock when that is recent, else from a new one.
    fn wall_time(&self, at: Instant) -> DateTime<Utc> {
        let (read_at, micros) = self.wall_clock.get();
        // `at` may also be a little before the reading (a request that began
        // before another one took it).
        let offset = match at.checked_duration_since(read_at) {
            Some(after) => after.as_micros() as i64,
            None => -(read_at.duration_since(at).as_micros() as i64),
        };
        let micros = if offset.unsigned_abs() < WALL_CLOCK_REUSE.as_micros() as u64 {
            micros + offset
        } else {
            let (now, wall) = (Instant::now(), Utc::now().timestamp_micros());
            self.wall_clock.set((now, wall));
            wall - now.saturating_duration_since(at).as_micros() as i64
        };
        DateTime::from_timestamp_micros(micros).unwrap_or_else(Utc::now)
    }

    /// Writes the event of one request. Without `may_wait` (a request
    /// dropped, perhaps with its runtime), what is held is handed over now
    /// rather than by a timer task.
    fn record(self: &Rc<Self>, observed: &Observed<'_>, may_wait: bool) {
        let shared = &self.middleware.shared;
        let config = &shared.config;
        // UUIDv7: the event's millisecond, then 74 random bits.
        let millis = u64::try_from(observed.occurred_at.timestamp_millis()).unwrap_or(0);
        let event_id =
            uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid();
        let full = {
            let mut lines = self.lines.borrow_mut();
            observed.write_json(config, event_id, &mut lines.body);
            lines.body.push(b'\n');
            lines.count += 1;
            let action = observed.rule.and_then(|i| shared.action_ids[i]);
            lines.action = lines.action.and(Action::One(action));
            lines.count >= self.handoff
        };
        if full || !may_wait {
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
        let lines = {
            let mut lines = self.lines.borrow_mut();
            if lines.count == 0 {
                return;
            }
            std::mem::replace(
                &mut *lines,
                self.middleware.shared.buffers.take(self.handoff),
            )
        };
        self.middleware.hand_over(lines);
    }
}

/// The worker (and its tasks) let go: what it still holds is handed over.
impl Drop for Pending {
    fn drop(&mut self) {
        let lines = std::mem::take(self.lines.get_mut());
        if lines.count > 0 {
            self.middleware.hand_over(lines);
        }
        self.middleware
            .shared
            .workers
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// Events waiting for the spool, and whether a thread is writing them.
#[derive(Default)]
struct Overflow {
    waiting: Vec<Lines>,
    flushing: bool,
}

/// The most events published in one batch.
const MAX_BATCH: usize = 5_000;
/// Publishes awaiting their confirms at once (each on a channel of its own).
const IN_FLIGHT: usize = 4;
/// The compressed bytes the publisher holds, waiting to be published or
/// confirmed, in KiB: 16 MiB, some 500,000 events of ~30 bytes, seconds of
/// a busy app's events. A broker slow to confirm for a while (a busy
/// 2-core machine has shown pauses of over a second) is waited for in
/// memory; the queue fills, and events go to the spool, only beyond it.
const HELD_KIB: usize = 16 * 1024;

/// The most compressed bytes one publish takes from the outbox (~35,000
/// events): a publish that fails spools what it took, so neither its
/// decoding nor the duplicates of what it had sent grow with the backlog.
const LAUNCH_BYTES: usize = HELD_KIB * 1024 / (4 * IN_FLIGHT);

/// Batches compressed and not yet published, oldest first, each with its
/// share of [`HELD_KIB`]: gathered while every publish awaits its confirms,
/// then sent by the next one free, up to [`LAUNCH_BYTES`] at a time.
#[derive(Default)]
struct Outbox {
    batches: std::collections::VecDeque<(
        crate::publisher::Prepared,
        tokio::sync::OwnedSemaphorePermit,
    )>,
}

impl Outbox {
    fn add(
        &mut self,
        prepared: crate::publisher::Prepared,
        held: tokio::sync::OwnedSemaphorePermit,
    ) {
        self.batches.push_back((prepared, held));
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The oldest batches, merged, up to [`LAUNCH_BYTES`] (one at least).
    fn take(
        &mut self,
    ) -> Option<(
        crate::publisher::Prepared,
        tokio::sync::OwnedSemaphorePermit,
    )> {
        let (mut messages, mut held) = self.batches.pop_front()?;
        while let Some((next, _)) = self.batches.front() {
            if messages.bytes() + next.bytes() > LAUNCH_BYTES {
                break;
            }
            let Some((next, share)) = self.batches.pop_front() else {
                break;
            };
            messages.append(next);
            held.merge(share);
        }
        Some((messages, held))
    }
}

/// The most NDJSON bytes in one message (whole hand-offs, so one hand-off
/// of 64 large events may exceed it alone): well under what the writer
/// decodes (64 MiB), however much metadata the app attaches.
const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Hand-offs grouped, in order, into messages of up to `events_per_message`
/// events and [`MAX_MESSAGE_BYTES`] (a hand-off never holds more events).
fn group(handoffs: impl IntoIterator<Item = Lines>, events_per_message: usize) -> Vec<Vec<Lines>> {
    let mut messages: Vec<Vec<Lines>> = Vec::new();
    let (mut events, mut bytes) = (0, 0);
    for lines in handoffs {
        if messages.is_empty()
            || events + lines.count > events_per_message
            || bytes + lines.body.len() > MAX_MESSAGE_BYTES
        {
            messages.push(Vec::new());
            (events, bytes) = (0, 0);
        }
        events += lines.count;
        bytes += lines.body.len();
        if let Some(last) = messages.last_mut() {
            last.push(lines);
        }
    }
    messages
}

async fn publish_loop(
    mut rx: mpsc::Receiver<Lines>,
    publisher: Publisher,
    spiller: Arc<Spiller>,
    (config, signals): (Arc<AuditConfig>, Arc<Signals>),
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let held = Arc::new(tokio::sync::Semaphore::new(HELD_KIB));
    let mut outbox = Outbox::default();
    let mut handoffs = Vec::new();
    let mut closing = signals.closing.subscribe();
    // Sends what the outbox holds on a publish of its own.
    let launch = |outbox: &mut Outbox, permit: tokio::sync::OwnedSemaphorePermit| {
        let Some((messages, held)) = outbox.take() else {
            return;
        };
        let (publisher, spiller) = (publisher.clone(), spiller.clone());
        let mut hurry = signals.hurry.subscribe();
        tokio::spawn(async move {
            // New events do not wait behind spooled ones: the spool is
            // replayed alongside. Sending everything through the spool while
            // it is not empty would make it the path of every event under
            // load (an fsync, a read and a re-parse each), and the app could
            // never catch up again. Order in the queue carries no meaning:
            // every event has its `occurred_at`.
            //
            // Past shutdown's grace, an unconfirmed publish gives up and
            // its events are spooled.
            let published = tokio::select! {
                published = publisher.send_prepared(&messages) => published.is_ok(),
                _ = hurry.wait_for(|h| *h) => false,
            };
            if !published {
                spiller.spill(messages.ndjson().into_iter().filter_map(|body| match body {
                    Ok(body) => Some(Lines {
                        count: body.iter().filter(|b| **b == b'\n').count(),
                        body,
                        action: Action::None,
                    }),
                    Err(e) => {
                        // Compressed here a moment ago: not expected.
                        tracing::error!(error = %e, "audit events could not be decoded for the spool");
                        None
                    }
                }));
            }
            drop((held, permit));
        });
    };
    loop {
        let closed = *closing.borrow_and_update();
        let taken = if closed {
            // Shutdown: what is queued is taken (hand-offs from now on are
            // spilled), then the loop ends.
            rx.close();
            rx.recv_many(&mut handoffs, MAX_BATCH / HANDOFF).await
        } else {
            tokio::select! {
                taken = rx.recv_many(&mut handoffs, MAX_BATCH / HANDOFF) => taken,
                _ = closing.changed() => continue,
                // A publish has finished: the next one takes the outbox.
                Ok(permit) = in_flight.clone().acquire_owned(), if !outbox.is_empty() => {
                    launch(&mut outbox, permit);
                    continue;
                }
            }
        };
        if taken == 0 {
            break;
        }
        let mut count: usize = handoffs.iter().map(|l: &Lines| l.count).sum();
        if count < config.events_per_message {
            // Linger so that a busy app hands over hundreds of events per
            // wake-up, and they leave in few messages (not at shutdown).
            if !closed {
                tokio::select! {
                    () = tokio::time::sleep(config.linger) => {}
                    () = signals.batch_queued.notified() => {}
                    _ = closing.changed() => {}
                }
            }
            while count < MAX_BATCH {
                match rx.try_recv() {
                    Ok(lines) => {
                        count += lines.count;
                        handoffs.push(lines);
                    }
                    Err(_) => break,
                }
            }
        }
        let messages = group(handoffs.drain(..), config.events_per_message);
        // Compressed now, so that what waits for the broker is small and
        // the workers' buffers go round again at once.
        let prepared = {
            let bodies: Vec<(String, Vec<&[u8]>)> = messages
                .iter()
                .map(|parts| {
                    let key = routing_key(parts, &config);
                    (key, parts.iter().map(|l| l.body.as_slice()).collect())
                })
                .collect();
            publisher.prepare_ndjson(&bodies)
        };
        for lines in messages.into_iter().flatten() {
            spiller.buffers.give_back(lines.body);
        }
        // Over the budget, the loop waits (and the queue fills), sending the
        // outbox whenever a publish is free: its share is freed only then.
        let kib = (prepared.bytes() / 1024 + 1).min(HELD_KIB) as u32;
        let share = loop {
            tokio::select! {
                share = held.clone().acquire_many_owned(kib) => break share,
                Ok(permit) = in_flight.clone().acquire_owned(), if !outbox.is_empty() => {
                    launch(&mut outbox, permit);
                }
            }
        };
        let Ok(share) = share else {
            return;
        };
        outbox.add(prepared, share);
        if let Ok(permit) = in_flight.clone().try_acquire_owned() {
            launch(&mut outbox, permit);
        }
    }
    while !outbox.is_empty() {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        launch(&mut outbox, permit);
    }
    // Every batch confirmed or given to the spool's writer (shutdown then
    // waits for that too).
    let _ = in_flight.acquire_many(IN_FLIGHT as u32).await;
    signals.drained.send_replace(true);
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
            service,
            pending: Rc::new(Pending::new(self.clone())),
        }))
    }
}

/// The per-worker service [`AuditMiddleware`] wraps around the app.
pub struct AuditService<S> {
    service: S,
    pending: Rc<Pending>,
}

impl<S> std::fmt::Debug for AuditService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditService").finish_non_exhaustive()
    }
}

/// A session id that breaks the event's rules, or is shaped like an
/// Auditline token, is replaced by a generated one.
fn usable_session(id: &str) -> bool {
    check_session_id(id).is_ok() && !redact::holds_token(id)
}

/// Where a request's session id came from.
#[derive(Debug)]
enum Session {
    Header(HeaderValue),
    Cookie(String),
    /// Generated (32 hex digits), and returned in the session header.
    New([u8; 32]),
}

impl Session {
    fn as_str(&self) -> &str {
        match self {
            // Checked to be text when taken.
            Self::Header(value) => value.to_str().unwrap_or_default(),
            Self::Cookie(id) => id,
            Self::New(id) => std::str::from_utf8(id).unwrap_or_default(),
        }
    }
}

/// What is taken from a request before the app sees it (the rest is read
/// from the response, which still holds the request; an error holds none).
#[derive(Debug)]
struct Started {
    at: Instant,
    session: Session,
    client_ip: Option<IpAddr>,
    uri: Uri,
    method: Method,
    request_size: Option<u64>,
}

impl Started {
    /// What is known of the request at `ended` without its response.
    fn observed<'a>(&'a self, pending: &Pending, ended: Instant) -> Observed<'a> {
        let config = &pending.middleware.shared.config;
        let path_and_query = self.uri.path_and_query().map_or("/", |p| p.as_str());
        Observed {
            occurred_at: pending.wall_time(self.at),
            session_id: self.session.as_str(),
            user_id: None,
            client_ip: self.client_ip,
            rule: config.rule(self.uri.path()),
            endpoint: path_and_query.strip_suffix('?').unwrap_or(path_and_query),
            route: None,
            method: &self.method,
            request_size: self.request_size,
            response_size: None,
            response_time_ms: (ended - self.at).as_secs_f64() * 1000.0,
            status: None,
            resources: None,
            metadata: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// An audited request: the app's future, then the event.
    pub struct AuditFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
        pending: Rc<Pending>,
    }

    /// A request dropped before it answered (a forced shutdown, a
    /// connection torn down) is recorded too: no status, not a success.
    impl<F> PinnedDrop for AuditFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(started) = this.started.take() {
                let observed = started.observed(this.pending, Instant::now());
                this.pending.record(&observed, false);
            }
        }
    }
}

impl<F> std::fmt::Debug for AuditFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditFuture").finish_non_exhaustive()
    }
}

impl<F, B> Future for AuditFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        let ended = Instant::now();
        let Some(started) = this.started.take() else {
            return Poll::Ready(result);
        };
        let pending = &*this.pending;
        let mut observed = started.observed(pending, ended);
        match &result {
            Ok(res) => {
                let request = res.request();
                let extensions = request.extensions();
                let route = request.match_pattern();
                observed.status = Some(res.status().as_u16());
                observed.route = route.as_deref();
                observed.user_id = extensions.get::<AuditUser>().map(|u| u.0.as_str());
                observed.resources = extensions
                    .get::<AuditResources>()
                    .map(|r| &r.0)
                    .filter(|m| !m.is_empty());
                observed.metadata = extensions
                    .get::<AuditMetadata>()
                    .map(|m| &m.0)
                    .filter(|m| !m.is_empty());
                observed.response_size = match res.response().body().size() {
                    BodySize::Sized(n) => Some(n),
                    BodySize::None => Some(0),
                    BodySize::Stream => None,
                };
                pending.record(&observed, true);
            }
            Err(e) => {
                observed.status = Some(e.as_response_error().status_code().as_u16());
                pending.record(&observed, true);
            }
        }
        // A generated session id is returned to the client in the header.
        if let (Ok(res), Session::New(id)) = (&mut result, &started.session)
            && let Ok(value) = HeaderValue::from_bytes(id)
        {
            res.headers_mut()
                .insert(pending.middleware.shared.session_header.clone(), value);
        }
        Poll::Ready(result)
    }
}

impl<S, B> Service<ServiceRequest> for AuditService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = AuditFuture<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let at = Instant::now();
        let shared = &self.pending.middleware.shared;
        let config = &shared.config;
        let session = match req
            .headers()
            .get(&shared.session_header)
            .filter(|v| v.to_str().is_ok_and(usable_session))
        {
            Some(value) => Session::Header(value.clone()),
            None => match config
                .session_cookie
                .as_deref()
                .and_then(|name| cookie(&req, name))
                .filter(|s| usable_session(s))
            {
                Some(id) => Session::Cookie(id),
                None => {
                    let mut id = [0u8; 32];
                    Uuid::new_v4().simple().encode_lower(&mut id);
                    Session::New(id)
                }
            },
        };
        let started = Started {
            at,
            session,
            client_ip: client_ip(&req, &config.trusted_proxies),
            uri: req.uri().clone(),
            method: req.method().clone(),
            request_size: req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        };
        AuditFuture {
            inner: self.service.call(req),
            started: Some(started),
            pending: self.pending.clone(),
        }
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
    use auditline_event::AuditEvent;

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
    fn events_written_from_odd_requests_pass_the_validator() {
        let mut usage = Map::new();
        usage.insert("cpu_ms".into(), Value::from(3));
        let metadata = Map::from_iter([("big".to_owned(), Value::String("x".repeat(20_000)))]);
        let (user, endpoint) = (format!("{}\u{7}bell", "u".repeat(300)), "/x".repeat(300));
        let method = Method::from_bytes(b"mkcol-lower").expect("method");
        let observed = Observed {
            occurred_at: Utc::now(),
            session_id: "s",
            user_id: Some(&user),
            client_ip: None,
            rule: Some(0),
            endpoint: &endpoint,
            route: Some(""),
            method: &method,
            request_size: Some(u64::MAX),
            response_size: None,
            response_time_ms: f64::NAN,
            status: Some(404),
            resources: Some(&usage),
            metadata: Some(&metadata),
        };
        let mut line = Vec::new();
        observed.write_json(&AuditConfig::new("svc"), Uuid::now_v7(), &mut line);
        let reparsed =
            AuditEvent::parse(&line).expect("the validator accepts what the middleware writes");
        assert_eq!(reparsed.http_method, "OTHER");
        assert_eq!(reparsed.metadata, None, "metadata over 16 KiB is left out");
        assert_eq!(reparsed.resource_usage.as_ref(), Some(&usage));
        assert_eq!(reparsed.endpoint.chars().count(), 255);
        assert_eq!(
            reparsed.user_id,
            Some("u".repeat(255)),
            "clipped, bell removed"
        );
        assert_eq!(reparsed.route, None);
        assert_eq!(reparsed.action_type, "file");
        assert!(!reparsed.success);

        // A request that never answered: no status, not a success.
        let unanswered = Observed {
            status: None,
            ..observed
        };
        line.clear();
        unanswered.write_json(&AuditConfig::new("svc"), Uuid::now_v7(), &mut line);
        let reparsed = AuditEvent::parse(&line).expect("valid");
        assert_eq!(reparsed.status_code, None);
        assert!(!reparsed.success);

        // The event's own rules decide: an extension method such as
        // M-SEARCH is kept as it is.
        let search = Method::from_bytes(b"M-SEARCH").expect("method");
        let extension = Observed {
            method: &search,
            ..unanswered
        };
        line.clear();
        extension.write_json(&AuditConfig::new("svc"), Uuid::now_v7(), &mut line);
        let reparsed = AuditEvent::parse(&line).expect("valid");
        assert_eq!(reparsed.http_method, "M-SEARCH");
    }

    #[test]
    fn a_worker_dates_requests_by_the_wall_clock() {
        let dir =
            std::env::temp_dir().join(format!("auditline-mw-{}", uuid::Uuid::new_v4().simple()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let spool = Arc::new(Spool::open(&dir, 1 << 20).expect("spool"));
            let publisher = Publisher::new(&crate::ClientConfig::default(), "test");
            let audit = AuditMiddleware::start(AuditConfig::new("svc"), publisher, spool)
                .expect("middleware");
            let pending = Pending::new(audit);
            let close = |a: DateTime<Utc>, b: DateTime<Utc>| (a - b).num_milliseconds().abs() <= 2;
            for _ in 0..3 {
                assert!(close(pending.wall_time(Instant::now()), Utc::now()));
                let earlier = Instant::now() - std::time::Duration::from_secs(5);
                let expected = Utc::now() - chrono::Duration::seconds(5);
                assert!(close(pending.wall_time(earlier), expected));
                std::thread::sleep(std::time::Duration::from_millis(60));
            }
        });
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_service_or_rule_the_events_could_not_carry_is_refused_at_start() {
        let dir =
            std::env::temp_dir().join(format!("auditline-mw-{}", uuid::Uuid::new_v4().simple()));
        let spool = Arc::new(Spool::open(&dir, 1 << 20).expect("spool"));
        let publisher = Publisher::new(&crate::ClientConfig::default(), "test");
        let long = AuditConfig::new(&"s".repeat(65));
        assert!(AuditMiddleware::start(long, publisher.clone(), spool.clone()).is_err());
        let mut bad_rule = AuditConfig::new("svc");
        bad_rule.rules.push(("/x".into(), "Not Valid".into()));
        assert!(AuditMiddleware::start(bad_rule, publisher, spool).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn rules_of_one_action_type_share_its_routing_key() {
        let mut config = AuditConfig::new("svc");
        config.rules.push(("/misc".into(), "other".into()));
        let ids = config.action_ids();
        let lines = |paths: &[&str]| Lines {
            body: Vec::new(),
            count: paths.len(),
            action: paths.iter().fold(Action::None, |a, p| {
                a.and(Action::One(config.rule(p).and_then(|i| ids[i])))
            }),
        };
        let key = |parts: &[Lines]| routing_key(parts, &config);
        assert_eq!(
            key(&[lines(&["/files/1", "/upload", "/download/x"])]),
            "svc.file"
        );
        assert_eq!(key(&[lines(&["/files/1"]), lines(&["/file"])]), "svc.file");
        assert_eq!(
            key(&[lines(&["/login", "/auth/x", "/session"])]),
            "svc.auth"
        );
        assert_eq!(key(&[lines(&["/health", "/misc"])]), "svc.other");
        assert_eq!(key(&[lines(&["/files/1", "/health"])]), "svc.mixed");
        assert_eq!(key(&[lines(&["/files/1"]), lines(&["/code"])]), "svc.mixed");
    }

    #[test]
    fn messages_stay_within_their_events_and_bytes() {
        let handoff = |count: usize, bytes: usize| Lines {
            body: vec![b'x'; bytes],
            count,
            action: Action::None,
        };
        // Ordinary events: 5,000 a message, whole hand-offs.
        let small: Vec<Lines> = (0..100).map(|_| handoff(64, 64 * 400)).collect();
        let counts: Vec<usize> = group(small, 5_000)
            .iter()
            .map(|m| m.iter().map(|l| l.count).sum())
            .collect();
        assert_eq!(counts, [4_992, 1_408]);
        // Every event with 32 KiB of metadata and resources: 2 MiB a
        // hand-off, so four to a message, far below the writer's 64 MiB.
        let large: Vec<Lines> = (0..10).map(|_| handoff(64, 64 * 32 * 1024)).collect();
        let messages = group(large, 5_000);
        assert_eq!(messages.len(), 3);
        for message in &messages {
            let bytes: usize = message.iter().map(|l| l.body.len()).sum();
            assert!(bytes <= MAX_MESSAGE_BYTES, "{bytes} bytes in one message");
        }
        assert_eq!(
            messages.iter().flatten().map(|l| l.count).sum::<usize>(),
            640
        );
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
