//! One request as an event line: written straight from the request and the
//! response into the worker's buffer, and the routing key of a message.

use super::*;

/// What the middleware saw of one request, borrowed from the request and its
/// response while they are still there: written as the event's JSON line
/// straight away, with no owned event or strings in between.
#[derive(Debug)]
pub(super) struct Observed<'a> {
    pub(super) occurred_at: DateTime<Utc>,
    pub(super) session_id: &'a str,
    pub(super) user_id: Option<&'a str>,
    pub(super) client_ip: Option<IpAddr>,
    /// The index of the matching rule (`other` when none).
    pub(super) rule: Option<usize>,
    pub(super) endpoint: &'a str,
    pub(super) route: Option<&'a str>,
    pub(super) method: &'a Method,
    pub(super) request_size: Option<u64>,
    pub(super) response_size: Option<u64>,
    pub(super) response_time_ms: f64,
    /// `None` for a request that never answered (its future was dropped).
    pub(super) status: Option<u16>,
    pub(super) resources: Option<&'a Map<String, Value>>,
    pub(super) metadata: Option<&'a Map<String, Value>>,
}

/// `text` without control characters, cut to `max` characters.
pub(super) fn clip(text: &str, max: usize) -> Cow<'_, str> {
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
    pub(super) fn write_json(&self, config: &AuditConfig, event_id: Uuid, out: &mut Vec<u8>) {
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
pub(super) struct Lines {
    pub(super) body: Vec<u8>,
    pub(super) count: usize,
    pub(super) action: Action,
}

/// The action types of some events: none yet, all one (the first rule
/// naming it, `None` for `other`: see [`AuditConfig::action_ids`]), or
/// several.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) enum Action {
    #[default]
    None,
    One(Option<usize>),
    Mixed,
}

impl Action {
    pub(super) fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::None, x) | (x, Self::None) => x,
            (a, b) if a == b => a,
            _ => Self::Mixed,
        }
    }
}

/// `<service>.<action_type>` when the events of `parts` share one, else
/// `<service>.mixed`.
pub(super) fn routing_key(parts: &[Lines], config: &AuditConfig) -> String {
    let action = match parts.iter().fold(Action::None, |a, l| a.and(l.action)) {
        Action::One(action) => action.map_or("other", |i| config.rules[i].1.as_str()),
        Action::None | Action::Mixed => "mixed",
    };
    format!("{}.{action}", config.service)
}
