//! What the middleware is told: the service, the route rules, the trusted
//! proxies (CIDR), the redaction rule.

use super::*;

/// A network given as `address/prefix`, or a single address (its own
/// network), kept as its network address: `10.1.2.3/8` is `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(ipnet::IpNet);

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let net = match trimmed.parse::<IpAddr>() {
            Ok(address) => ipnet::IpNet::from(address),
            Err(_) if trimmed.contains('/') => trimmed
                .parse::<ipnet::IpNet>()
                .map_err(|_| format!("{text:?}: not a CIDR (bad address or prefix length)"))?,
            Err(_) => return Err(format!("{text:?} is not an IP address or CIDR")),
        };
        Ok(Self(net.trunc()))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

/// `network/prefix`, as PostgreSQL's `inet` reads it.
impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
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
            events_per_message: crate::batcher::MAX_BATCH,
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
    pub(super) fn action_ids(&self) -> Vec<Option<usize>> {
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
    pub(super) fn rule(&self, path: &str) -> Option<usize> {
        self.rules.iter().position(|(prefix, _)| {
            path.strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}
