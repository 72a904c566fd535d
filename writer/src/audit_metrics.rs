//! Metrics about what the audited users did, from every event a commit stored
//! (each event counted once: the writer sees each exactly once).
//!
//! No label takes unbounded values, and none names a user: `/metrics` is
//! unauthenticated, so the most active users of the current UTC hour are
//! labelled by rank (`1` to [`TOP_USERS`], the rest `other`), never by id
//! (who they are is in the admin API: `/admin/audit/users`,
//! `/admin/audit/metrics`). Action types, routes and services are named up
//! to a fixed number of distinct values, then `other`; methods are the
//! standard ones or `OTHER`.

use std::collections::{HashMap, HashSet};

use auditline_shared::AuditEvent;
use chrono::{DateTime, Timelike, Utc};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Ranks with a series of their own in `auditline_audit_top_user_actions_hour`.
pub const TOP_USERS: usize = 20;
/// Distinct action types with a label of their own.
const MAX_ACTION_TYPES: usize = 40;
/// Distinct (route, method) pairs with a label of their own.
const MAX_ROUTES: usize = 60;
/// Users counted per hour before further new ones are only `other`
/// (bounds memory when an hour sees millions of users).
const MAX_USERS_COUNTED: usize = 100_000;
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// Names values as long as there are few of them; later ones are `other`.
#[derive(Debug)]
struct Bounded {
    seen: HashSet<String>,
    max: usize,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Self {
            seen: HashSet::new(),
            max,
        }
    }

    fn label<'a>(&mut self, value: &'a str) -> &'a str {
        if self.seen.contains(value) {
            return value;
        }
        if self.seen.len() < self.max {
            self.seen.insert(value.to_owned());
            return value;
        }
        "other"
    }
}

#[derive(Debug)]
pub struct AuditMetrics {
    top_user_actions_hour: IntGaugeVec,
    active_users_hour: IntGauge,
    actions: IntCounterVec,
    failures: IntCounterVec,
    admin_actions: IntCounterVec,
    response_time: HistogramVec,
    hour: Option<DateTime<Utc>>,
    users: HashMap<String, u64>,
    others: u64,
    action_types: Bounded,
    routes: Bounded,
    route_key: String,
}

impl AuditMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let top_user_actions_hour = IntGaugeVec::new(
            Opts::new(
                "auditline_audit_top_user_actions_hour",
                "Actions in the current UTC hour of the most active users, by rank (1 the busiest; the rest: rank=\"other\"); who they are is in the admin API",
            ),
            &["rank"],
        )?;
        let active_users_hour = IntGauge::new(
            "auditline_audit_active_users_hour",
            "Distinct users with an action in the current UTC hour (counted up to 100,000)",
        )?;
        let actions = IntCounterVec::new(
            Opts::new(
                "auditline_audit_actions_total",
                "Audit events stored, by action type",
            ),
            &["action_type"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "auditline_audit_failures_total",
                "Failed operations (success = false), by action type",
            ),
            &["action_type"],
        )?;
        let admin_actions = IntCounterVec::new(
            Opts::new(
                "auditline_audit_admin_actions_total",
                "Actions of type admin, by outcome",
            ),
            &["outcome"],
        )?;
        let response_time = HistogramVec::new(
            HistogramOpts::new(
                "auditline_audit_response_time_seconds",
                "Response time of audited requests, by route template and method",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "method"],
        )?;
        registry.register(Box::new(top_user_actions_hour.clone()))?;
        registry.register(Box::new(active_users_hour.clone()))?;
        registry.register(Box::new(actions.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(admin_actions.clone()))?;
        registry.register(Box::new(response_time.clone()))?;
        Ok(Self {
            top_user_actions_hour,
            active_users_hour,
            actions,
            failures,
            admin_actions,
            response_time,
            hour: None,
            users: HashMap::new(),
            others: 0,
            action_types: Bounded::new(MAX_ACTION_TYPES),
            routes: Bounded::new(MAX_ROUTES),
            route_key: String::new(),
        })
    }

    /// Counts the events a commit stored.
    pub fn observe<'a>(&mut self, events: impl IntoIterator<Item = &'a AuditEvent>) {
        let now = Utc::now();
        let hour = now
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0));
        if hour != self.hour {
            self.hour = hour;
            self.users.clear();
            self.others = 0;
        }
        for event in events {
            let action = self.action_types.label(&event.action_type);
            self.actions.with_label_values(&[action]).inc();
            if !event.success {
                self.failures.with_label_values(&[action]).inc();
            }
            if event.action_type == "admin" {
                let outcome = if event.success { "success" } else { "failure" };
                self.admin_actions.with_label_values(&[outcome]).inc();
            }
            if let Some(ms) = event.response_time_ms {
                let method = METHODS
                    .iter()
                    .find(|m| **m == event.http_method)
                    .copied()
                    .unwrap_or("OTHER");
                let route = event.route.as_deref().unwrap_or("none");
                // The key in a buffer kept between events: no allocation
                // for a pair already seen.
                self.route_key.clear();
                self.route_key.push_str(method);
                self.route_key.push(' ');
                self.route_key.push_str(route);
                let route = if self.routes.label(&self.route_key) == "other" {
                    "other"
                } else {
                    route
                };
                self.response_time
                    .with_label_values(&[route, method])
                    .observe(ms / 1000.0);
            }
            if let Some(user) = &event.user_id {
                if let Some(n) = self.users.get_mut(user) {
                    *n += 1;
                } else if self.users.len() < MAX_USERS_COUNTED {
                    self.users.insert(user.clone(), 1);
                } else {
                    self.others += 1;
                }
            }
        }
        self.publish_top_users();
    }

    /// Sets the gauge to the current hour's top users and `other`.
    fn publish_top_users(&self) {
        // Once per commit over up to 100,000 users: select the top, do
        // not sort everyone.
        let mut top: Vec<(&String, &u64)> = self.users.iter().collect();
        let order =
            |a: &(&String, &u64), b: &(&String, &u64)| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0));
        if top.len() > TOP_USERS {
            top.select_nth_unstable_by(TOP_USERS, order);
        }
        let rest: u64 = top.iter().skip(TOP_USERS).map(|(_, n)| **n).sum();
        top.truncate(TOP_USERS);
        top.sort_unstable_by(order);
        self.top_user_actions_hour.reset();
        for (rank, (_, n)) in top.into_iter().take(TOP_USERS).enumerate() {
            self.top_user_actions_hour
                .with_label_values(&[(rank + 1).to_string()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        self.active_users_hour
            .set(i64::try_from(self.users.len()).unwrap_or(i64::MAX));
        self.top_user_actions_hour
            .with_label_values(&["other"])
            .set(i64::try_from(rest + self.others).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, action: &str, route: &str, success: bool) -> AuditEvent {
        let json = serde_json::json!({
            "occurred_at": Utc::now().to_rfc3339(),
            "service": "svc",
            "session_id": "s",
            "user_id": user,
            "action_type": action,
            "endpoint": route,
            "route": route,
            "http_method": "GET",
            "status_code": if success { 200 } else { 500 },
            "success": success,
            "response_time_ms": 12.0,
        });
        AuditEvent::parse(json.to_string().as_bytes()).expect("valid")
    }

    #[test]
    fn ten_thousand_users_and_many_routes_stay_within_bounded_series() {
        let registry = Registry::new();
        let mut metrics = AuditMetrics::new(&registry).expect("metrics");
        let events: Vec<AuditEvent> = (0..10_000)
            .map(|i| {
                event(
                    &format!("user-{i}"),
                    &format!("action_{}", i % 300),
                    &format!("/r{}/{{id}}", i % 500),
                    i % 7 != 0,
                )
            })
            .chain((0..50).map(|_| event("heavy", "file", "/files/{id}", true)))
            .collect();
        for chunk in events.chunks(1000) {
            metrics.observe(chunk);
        }
        for family in registry.gather() {
            assert!(
                family.get_metric().len() <= 100,
                "{} has {} series",
                family.name(),
                family.get_metric().len()
            );
        }
        let users = metrics.top_user_actions_hour.clone();
        assert_eq!(users.with_label_values(&["1"]).get(), 50);
        assert_eq!(users.with_label_values(&["20"]).get(), 1);
        // 20 ranks (heavy and 19 with one action each), the rest other.
        assert_eq!(users.with_label_values(&["other"]).get(), 10_000 - 19);
        assert_eq!(metrics.active_users_hour.get(), 10_001);
        // No series names a user.
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        assert!(!text.contains("heavy") && !text.contains("user-"), "{text}");
    }
}
