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
//!
//! Layout: [`config`] (what it is told), `record` (a request as an event
//! line), `buffers` (the line buffers' pool), `handoff` (each worker's
//! pending buffer), `publish` (what the batching publisher of
//! [`crate::batcher`] does with the hand-offs), `spill` (events handed to the spool's group commit), `service` (the actix-web `Transform` and `Service`); this
//! module: the request extensions, the shared state and [`AuditMiddleware`].

mod buffers;
mod config;
mod handoff;
mod publish;
mod record;
mod service;
mod spill;

use buffers::*;
pub use config::{AuditConfig, Cidr};
use handoff::*;
use publish::*;
use record::*;
use spill::*;

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

struct Shared {
    config: Arc<AuditConfig>,
    session_header: HeaderName,
    /// The queue to the publishing loop (which holds not this but the
    /// receiving end: with the last middleware dropped, the queue closes and
    /// the loop ends on its own).
    batcher: crate::batcher::Batcher<Handoffs>,
    /// [`AuditConfig::action_ids`].
    action_ids: Vec<Option<usize>>,
    buffers: Arc<Buffers>,
    spiller: Arc<Spiller>,
    /// Workers' [`Pending`] still alive: each hands over what it holds as it
    /// goes, so shutdown waits for none to be left.
    workers: std::sync::atomic::AtomicUsize,
    /// The spool's replayer, stopped at shutdown (replay is safe to cut).
    replayer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
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
        let buffers = Arc::new(Buffers::default());
        let spiller = Arc::new(
            Spiller::new(spool.clone(), buffers.clone())
                .map_err(|e| anyhow::anyhow!("cannot start the spool's commit thread: {e}"))?,
        );
        let config = Arc::new(config);
        let batcher = crate::batcher::Batcher::start(
            publisher.clone(),
            Arc::new(Handoffs {
                config: config.clone(),
                spiller: spiller.clone(),
            }),
            Handoffs::settings(&config),
            HANDOFF,
        );
        let shared = Arc::new(Shared {
            action_ids: config.action_ids(),
            config,
            session_header,
            batcher,
            buffers,
            spiller,
            workers: std::sync::atomic::AtomicUsize::new(0),
            replayer: std::sync::Mutex::default(),
        });
        let replayer =
            tokio::spawn(spool.replay_forever(publisher, crate::batcher::MAX_BATCH, |_, _| {}));
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
        // Publishes unconfirmed after the grace spool their events; spool
        // writes only from there on, bounded all the same, should the
        // publishing loop be gone or the disk hang.
        let more = deadline + grace.max(Duration::from_secs(10));
        if !shared.batcher.shutdown(deadline, more).await {
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
        if let Err(lines) = self.shared.batcher.try_submit(lines) {
            self.shared.spiller.spill([lines]);
        }
    }
}

/// A grace for [`AuditMiddleware::shutdown`] that fits a service's usual
/// stop timeout (what the demo app and the admin service use).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("not an address").is_err());
        assert_eq!(
            Cidr::parse(" 10.1.2.3/8 ").expect("cidr").to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(one.to_string(), "::1/128");
        assert!(!net.contains("::ffff:10.0.0.1".parse().expect("ip")));
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
