//! The admin API against a known event set stored by the real writer:
//! every search filter and combinations against the expected ids, keyset
//! pagination in both orders, cursors that were tampered with, parameter
//! errors, per-user summaries against SQL over the raw events, real-time
//! metrics, and admin requests recorded as `admin` events.

use std::{collections::HashSet, net::IpAddr, time::Duration};

use auditline_shared::{AuditEvent, auth::Scope, rollup};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{InProcess, InProcessAdmin, InProcessWriter, TestEnv, wait_until};

const ACTIONS: [&str; 7] = [
    "file",
    "code_exec",
    "admin",
    "auth",
    "data",
    "other",
    "export.csv",
];
const AREAS: [&str; 5] = ["files", "exec", "admin", "login", "data"];
const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];
const STATUSES: [u16; 6] = [200, 201, 404, 500, 503, 302];

/// 300 events, one every 10 minutes over 50 hours ending before the current
/// hour (so the admin service's own events, stamped now, never fall inside).
pub(crate) fn known_events() -> (Vec<AuditEvent>, DateTime<Utc>, DateTime<Utc>) {
    let hour = Utc::now()
        .duration_trunc(TimeDelta::hours(1))
        .expect("hour");
    let start = hour - TimeDelta::hours(51);
    let events = (0..300usize)
        .map(|i| {
            let status = STATUSES[i % 6];
            AuditEvent {
                event_id: Uuid::now_v7(),
                occurred_at: start
                    + TimeDelta::minutes(10 * i as i64)
                    + TimeDelta::seconds((i % 7) as i64),
                service: if i % 4 == 0 { "billing" } else { "web" }.into(),
                session_id: format!("s-{}", i % 9),
                user_id: (i % 13 != 0).then(|| format!("user-{}", i % 5)),
                client_ip: match i {
                    _ if i % 11 == 0 => None,
                    _ if i % 2 == 0 => {
                        Some(format!("10.1.{}.{}", i % 4, i % 250).parse().expect("ipv4"))
                    }
                    _ => Some(format!("2001:db8::{i:x}").parse().expect("ipv6")),
                },
                action_type: ACTIONS[i % 7].into(),
                endpoint: format!("/{}/{i}", AREAS[i % 5]),
                route: Some(format!("/{}/{{id}}", AREAS[i % 5])),
                http_method: METHODS[i % 3].into(),
                request_size: Some(i as u64),
                response_size: None,
                response_time_ms: (i % 17 != 0).then(|| (i * 37 % 900) as f64 + 0.25),
                status_code: Some(status),
                success: status < 400,
                resource_usage: None,
                metadata: Some(if i % 3 == 0 {
                    json!({"note": format!("Needle-{}", i % 10)})
                } else {
                    json!({"k": i})
                })
                .and_then(|v| v.as_object().cloned()),
            }
        })
        .collect();
    (events, start, hour)
}

pub(crate) struct Stored {
    pub events: Vec<AuditEvent>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub admin: InProcess,
    /// Keeps running: the admin service's own events go through it.
    pub writer: InProcess,
}

impl Stored {
    pub(crate) async fn stop(self) {
        self.admin.stop().await;
        self.writer.stop().await;
    }
}

/// Publishes `events` and waits until the real writer stored them and the
/// rollup keeper folded them; the writer keeps running.
pub(crate) async fn store_folded(env: &TestEnv, events: &[AuditEvent]) -> InProcess {
    let writer = InProcessWriter::start(env).await;
    env.publisher()
        .await
        .publish_batch(events)
        .await
        .expect("published");
    env.wait_for_rows(events.len() as i64, Duration::from_secs(60))
        .await;
    env.wait_rollups().await;
    writer
}

/// Publishes the known set, stores it with the real writer and starts the admin service.
pub(crate) async fn stored_set(env: &TestEnv) -> Stored {
    let (events, from, to) = known_events();
    let writer = store_folded(env, &events).await;
    Stored {
        events,
        from,
        to,
        admin: InProcessAdmin::start(env).await,
        writer,
    }
}

pub(crate) fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

pub(crate) fn rfc(t: DateTime<Utc>) -> String {
    enc(&t.to_rfc3339())
}

/// Walks every page of a search; fails on a repeated id or a broken order.
pub(crate) async fn walk(admin: &InProcess, token: &str, query: &str, limit: usize) -> Vec<Uuid> {
    let descending = !query.contains("order=asc");
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut last: Option<(String, Uuid)> = None;
    for _ in 0..1_000 {
        let mut path = format!("/admin/audit/logs?{query}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", enc(c)));
        }
        let (status, body) = admin.get_json(Some(token), &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let events = body["events"].as_array().expect("events");
        assert!(events.len() <= limit);
        for e in events {
            let id: Uuid = e["event_id"].as_str().expect("id").parse().expect("uuid");
            let at: DateTime<Utc> = e["occurred_at"]
                .as_str()
                .expect("at")
                .parse()
                .expect("time");
            let key = (format!("{:020}", at.timestamp_micros()), id);
            if let Some(prev) = &last {
                assert!(
                    if descending { &key < prev } else { &key > prev },
                    "{query}: order broken at {id}"
                );
            }
            last = Some(key);
            assert!(seen.insert(id), "{query}: {id} returned twice");
            ids.push(id);
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
    panic!("{query}: more than 1,000 pages");
}

fn in_net(ip: Option<IpAddr>, net: &str) -> bool {
    let (addr, prefix) = net.split_once('/').expect("cidr");
    let (addr, prefix): (IpAddr, u32) = (addr.parse().expect("addr"), prefix.parse().expect("p"));
    match (ip, addr) {
        (Some(IpAddr::V4(a)), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (Some(IpAddr::V6(a)), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

type Pred = Box<dyn Fn(&AuditEvent) -> bool>;

#[actix_web::test]
async fn every_filter_returns_exactly_the_matching_events_in_both_orders() {
    let env = TestEnv::new().await;
    let set = stored_set(&env).await;
    let (events, from, to, admin) = (&set.events, set.from, set.to, &set.admin);
    let token = env.token(&[Scope::Read], None).await;
    let window = format!("from={}&to={}", rfc(from), rfc(to));
    let mid = from + TimeDelta::hours(20);
    let late = from + TimeDelta::hours(31);

    let cases: Vec<(String, Pred)> = vec![
        (String::new(), Box::new(|_| true)),
        (
            "user_id=user-3".into(),
            Box::new(|e| e.user_id.as_deref() == Some("user-3")),
        ),
        (
            "user_id=user-1&user_id=user-4".into(),
            Box::new(|e| matches!(e.user_id.as_deref(), Some("user-1" | "user-4"))),
        ),
        ("session_id=s-2".into(), Box::new(|e| e.session_id == "s-2")),
        (
            "service=billing".into(),
            Box::new(|e| e.service == "billing"),
        ),
        (
            "action_type=file".into(),
            Box::new(|e| e.action_type == "file"),
        ),
        (
            "action_type=code_exec&action_type=export.csv".into(),
            Box::new(|e| matches!(e.action_type.as_str(), "code_exec" | "export.csv")),
        ),
        (
            "endpoint=%2Ffiles%2F".into(),
            Box::new(|e| e.endpoint.starts_with("/files/")),
        ),
        (
            "endpoint=%2Fexec%2F1".into(),
            Box::new(|e| e.endpoint.starts_with("/exec/1")),
        ),
        (
            "http_method=DELETE".into(),
            Box::new(|e| e.http_method == "DELETE"),
        ),
        (
            "status=404".into(),
            Box::new(|e| e.status_code == Some(404)),
        ),
        (
            "status=5xx".into(),
            Box::new(|e| e.status_code.is_some_and(|s| s >= 500)),
        ),
        (
            "status=2xx&status=404".into(),
            Box::new(|e| e.status_code.is_some_and(|s| s / 100 == 2 || s == 404)),
        ),
        ("success=false".into(), Box::new(|e| !e.success)),
        ("success=true".into(), Box::new(|e| e.success)),
        (
            "client_ip=10.1.2.0%2F24".into(),
            Box::new(|e| in_net(e.client_ip, "10.1.2.0/24")),
        ),
        (
            "client_ip=10.1.0.0%2F16".into(),
            Box::new(|e| in_net(e.client_ip, "10.1.0.0/16")),
        ),
        (
            "client_ip=2001%3Adb8%3A%3A%2F32".into(),
            Box::new(|e| in_net(e.client_ip, "2001:db8::/32")),
        ),
        (
            "client_ip=2001%3Adb8%3A%3A1f".into(),
            Box::new(|e| e.client_ip == Some("2001:db8::1f".parse().expect("ip"))),
        ),
        (
            "min_response_time_ms=600".into(),
            Box::new(|e| e.response_time_ms.is_some_and(|ms| ms >= 600.0)),
        ),
        (
            "q=needle-7".into(),
            Box::new(|e| {
                e.metadata.as_ref().is_some_and(|m| {
                    Value::Object(m.clone())
                        .to_string()
                        .to_lowercase()
                        .contains("needle-7")
                })
            }),
        ),
        (
            "q=LOGIN%2F1".into(),
            Box::new(|e| e.endpoint.contains("login/1")),
        ),
        (
            "user_id=user-2&action_type=file&status=2xx".into(),
            Box::new(|e| {
                e.user_id.as_deref() == Some("user-2")
                    && e.action_type == "file"
                    && e.status_code.is_some_and(|s| s / 100 == 2)
            }),
        ),
        (
            "service=web&success=false&http_method=POST&min_response_time_ms=100".into(),
            Box::new(|e| {
                e.service == "web"
                    && !e.success
                    && e.http_method == "POST"
                    && e.response_time_ms.is_some_and(|ms| ms >= 100.0)
            }),
        ),
        (
            "session_id=s-4&client_ip=10.0.0.0%2F8&q=needle".into(),
            Box::new(|e| {
                e.session_id == "s-4"
                    && in_net(e.client_ip, "10.0.0.0/8")
                    && e.metadata.as_ref().is_some_and(|m| {
                        Value::Object(m.clone())
                            .to_string()
                            .to_lowercase()
                            .contains("needle")
                    })
            }),
        ),
        ("user_id=nobody".into(), Box::new(|_| false)),
    ];
    for (filter, pred) in &cases {
        let mut expected: Vec<&AuditEvent> = events.iter().filter(|e| pred(e)).collect();
        expected.sort_by_key(|e| (e.occurred_at, e.event_id));
        let ascending: Vec<Uuid> = expected.iter().map(|e| e.event_id).collect();
        let descending: Vec<Uuid> = ascending.iter().rev().copied().collect();
        let query = format!("{window}&{filter}");
        assert_eq!(
            walk(admin, &token, &query, 23).await,
            descending,
            "{filter} (desc)"
        );
        assert_eq!(
            walk(admin, &token, &format!("{query}&order=asc"), 17).await,
            ascending,
            "{filter} (asc)"
        );
    }

    // The time window itself: from inclusive, to exclusive.
    let expected: Vec<Uuid> = events
        .iter()
        .filter(|e| e.occurred_at >= mid && e.occurred_at < late)
        .map(|e| e.event_id)
        .collect();
    let mut got = walk(
        admin,
        &token,
        &format!("from={}&to={}&order=asc", rfc(mid), rfc(late)),
        1000,
    )
    .await;
    got.sort();
    let mut want = expected;
    want.sort();
    assert_eq!(got, want, "from/to window");

    // Without from/to: the last 24 hours.
    let day_ago = Utc::now() - TimeDelta::hours(24);
    let mut want: Vec<Uuid> = events
        .iter()
        .filter(|e| e.occurred_at >= day_ago + TimeDelta::minutes(1) && e.service == "web")
        .map(|e| e.event_id)
        .collect();
    let mut got = walk(admin, &token, "service=web", 100).await;
    got.sort();
    want.sort();
    // An event within a minute of the boundary may fall either side of it.
    let boundary: HashSet<Uuid> = events
        .iter()
        .filter(|e| (e.occurred_at - day_ago).abs() < TimeDelta::minutes(1))
        .map(|e| e.event_id)
        .collect();
    got.retain(|id| !boundary.contains(id));
    assert_eq!(got, want, "default window");

    // One event by id; an unknown id is a 404, a malformed one a 400.
    let one = &events[42];
    let (status, body) = admin
        .get_json(Some(&token), &format!("/admin/audit/logs/{}", one.event_id))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], json!(one.user_id));
    assert_eq!(body["endpoint"], json!(one.endpoint));
    assert_eq!(body["metadata"], json!(one.metadata));
    assert_eq!(
        body["client_ip"],
        json!(one.client_ip.map(|ip| ip.to_string()))
    );
    assert_eq!(body["status_code"], json!(one.status_code));
    let (status, body) = admin
        .get_json(
            Some(&token),
            &format!("/admin/audit/logs/{}", Uuid::now_v7()),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = admin
        .get_json(Some(&token), "/admin/audit/logs/not-a-uuid")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"][0]["parameter"], "event_id");
    set.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn pages_stay_exact_while_new_events_arrive() {
    let env = TestEnv::new().await;
    let set = stored_set(&env).await;
    let (events, from, to, admin) = (&set.events, set.from, set.to, &set.admin);
    let token = env.token(&[Scope::Read], None).await;
    let publisher = env.publisher().await;
    for order in ["desc", "asc"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut page = 0;
        loop {
            let mut path = format!(
                "/admin/audit/logs?from={}&to={}&order={order}&limit=25",
                rfc(from),
                rfc(to)
            );
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={}", enc(c)));
            }
            let (status, body) = admin.get_json(Some(&token), &path).await;
            assert_eq!(status, 200, "{body}");
            for e in body["events"].as_array().expect("events") {
                seen.push(
                    e["event_id"]
                        .as_str()
                        .expect("id")
                        .parse::<Uuid>()
                        .expect("uuid"),
                );
            }
            // New events land inside the window between pages, on both
            // sides of the cursor.
            let fresh: Vec<AuditEvent> = (0..5)
                .map(|k| {
                    let mut e = events[(page * 37 + k * 61) % events.len()].clone();
                    e.event_id = Uuid::now_v7();
                    e
                })
                .collect();
            publisher.publish_batch(&fresh).await.expect("published");
            page += 1;
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let unique: HashSet<Uuid> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "{order}: an event came twice");
        for e in events {
            assert!(
                unique.contains(&e.event_id),
                "{order}: {} missing",
                e.event_id
            );
        }
    }
    set.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn forged_or_tampered_cursors_are_refused_with_400() {
    let env = TestEnv::new().await;
    let set = stored_set(&env).await;
    let (from, to, admin) = (set.from, set.to, &set.admin);
    let token = env.token(&[Scope::Read], None).await;
    let base = format!(
        "/admin/audit/logs?from={}&to={}&user_id=user-1&limit=5",
        rfc(from),
        rfc(to)
    );
    let (status, body) = admin.get_json(Some(&token), &base).await;
    assert_eq!(status, 200);
    let cursor = body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();

    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let raw = engine.decode(&cursor).expect("cursor is base64url");
    let mut flipped = raw.clone();
    flipped[12] ^= 0x01; // inside the event id
    let mut later = raw.clone();
    later[3] = later[3].wrapping_add(1); // the timestamp
    let forged = engine.encode([0u8; 66]);
    let cases = [
        (
            format!("{base}&cursor={}", engine.encode(&flipped)),
            "cursor",
        ),
        (format!("{base}&cursor={}", engine.encode(&later)), "cursor"),
        (
            format!("{base}&cursor={}", engine.encode(&raw[..raw.len() - 1])),
            "cursor",
        ),
        (format!("{base}&cursor={forged}"), "cursor"),
        (
            format!("{base}&cursor=%27%3B%20DROP%20TABLE%20auditline.events%3B--"),
            "cursor",
        ),
        (format!("{base}&cursor=!!!"), "cursor"),
        // A genuine cursor with other filters, another order or another window.
        (
            format!(
                "/admin/audit/logs?from={}&to={}&user_id=user-2&limit=5&cursor={cursor}",
                rfc(from),
                rfc(to)
            ),
            "cursor",
        ),
        (format!("{base}&order=asc&cursor={cursor}"), "cursor"),
        (
            format!(
                "/admin/audit/logs?from={}&to={}&user_id=user-1&limit=5&cursor={cursor}",
                rfc(from + TimeDelta::hours(1)),
                rfc(to)
            ),
            "from",
        ),
    ];
    for (path, param) in &cases {
        let (status, body) = admin.get_json(Some(&token), path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{path}");
        assert_eq!(
            body["error"]["details"][0]["parameter"], *param,
            "{path}: {body}"
        );
    }
    // The genuine cursor still works with its own search.
    let (status, _) = admin
        .get_json(Some(&token), &format!("{base}&cursor={cursor}"))
        .await;
    assert_eq!(status, 200);
    set.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn invalid_parameters_are_400_naming_the_parameter() {
    let env = TestEnv::new().await;
    let admin = InProcessAdmin::start(&env).await;
    let token = env.token(&[Scope::Read], None).await;
    let long = "x".repeat(300);
    let cases: Vec<(String, &str)> = vec![
        ("/admin/audit/logs?from=yesterday".into(), "from"),
        ("/admin/audit/logs?to=2026-13-01T00:00:00Z".into(), "to"),
        (
            "/admin/audit/logs?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z".into(),
            "from",
        ),
        (
            "/admin/audit/logs?action_type=File%20Ops".into(),
            "action_type",
        ),
        (
            "/admin/audit/logs?action_type=%27%20OR%201%3D1--".into(),
            "action_type",
        ),
        (
            "/admin/audit/logs?client_ip=10.0.0.0%2F33".into(),
            "client_ip",
        ),
        ("/admin/audit/logs?client_ip=not-an-ip".into(), "client_ip"),
        ("/admin/audit/logs?limit=0".into(), "limit"),
        ("/admin/audit/logs?limit=1001".into(), "limit"),
        ("/admin/audit/logs?limit=ten".into(), "limit"),
        ("/admin/audit/logs?limit=5&limit=6".into(), "limit"),
        ("/admin/audit/logs?status=600".into(), "status"),
        ("/admin/audit/logs?status=6xx".into(), "status"),
        ("/admin/audit/logs?success=yes".into(), "success"),
        ("/admin/audit/logs?order=sideways".into(), "order"),
        (
            "/admin/audit/logs?min_response_time_ms=-1".into(),
            "min_response_time_ms",
        ),
        (
            "/admin/audit/logs?min_response_time_ms=NaN".into(),
            "min_response_time_ms",
        ),
        ("/admin/audit/logs?http_method=get".into(), "http_method"),
        ("/admin/audit/logs?user_id=a%00b".into(), "user_id"),
        (format!("/admin/audit/logs?user_id={long}"), "user_id"),
        (format!("/admin/audit/logs?q={long}"), "q"),
        ("/admin/audit/logs?usr_id=alice".into(), "usr_id"),
        ("/admin/audit/users?sort=password".into(), "sort"),
        ("/admin/audit/users?offset=-1".into(), "offset"),
        ("/admin/audit/users?limit=501".into(), "limit"),
        (
            "/admin/audit/users?from=2026-11-02T00:00:00Z&to=2026-11-02T00:00:00Z".into(),
            "from",
        ),
        ("/admin/audit/users/alice?to=soon".into(), "to"),
        ("/admin/audit/metrics?window=5".into(), "window"),
    ];
    for (path, param) in &cases {
        let (status, body) = admin.get_json(Some(&token), path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{path}");
        assert_eq!(
            body["error"]["details"][0]["parameter"], *param,
            "{path}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(param)),
            "{path}: {body}"
        );
    }
    // Tokens: none, unknown, and one without `read`.
    let publish_only = env.token(&[Scope::Publish], Some("web")).await;
    for (token, status, code) in [
        (None, 401, "unauthorized"),
        (Some("alt_000000000000_00"), 401, "unauthorized"),
        (Some(publish_only.as_str()), 403, "forbidden"),
    ] {
        for path in [
            "/admin/audit/logs",
            "/admin/audit/users",
            "/admin/audit/metrics",
        ] {
            let (got, body) = admin.get_json(token, path).await;
            assert_eq!(
                (got, body["error"]["code"].as_str()),
                (status, Some(code)),
                "{path}"
            );
        }
    }
    admin.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn user_summaries_equal_sql_over_the_raw_events() {
    let env = TestEnv::new().await;
    let set = stored_set(&env).await;
    let (events, from, to, admin) = (&set.events, set.from, set.to, &set.admin);
    // Every event again: the writer absorbs the duplicates, and so must the rollups.
    env.publisher()
        .await
        .publish_batch(events)
        .await
        .expect("republished");
    let processed = events.len() as i64 * 2;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            env.processed().await >= processed
        })
        .await,
        "the duplicates were not processed"
    );
    env.wait_rollups().await;
    let token = env.token(&[Scope::Read], None).await;

    // A range that starts and ends mid-day, so daily and hourly rollups both serve it.
    let (range_from, range_to) = (from + TimeDelta::hours(3), to - TimeDelta::hours(2));
    let (status, page) = admin
        .get_json(
            Some(&token),
            &format!(
                "/admin/audit/users?from={}&to={}&limit=500",
                rfc(range_from),
                rfc(range_to)
            ),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["from"], json!(range_from));
    assert_eq!(page["to"], json!(range_to));
    type Row = (
        String,
        i64,
        i64,
        Option<f64>,
        DateTime<Utc>,
        DateTime<Utc>,
        Option<f64>,
    );
    let expected: Vec<Row> = sqlx::query_as(
        "SELECT user_id, count(*), count(*) FILTER (WHERE NOT success), avg(response_time_ms), \
         min(occurred_at), max(occurred_at), \
         percentile_disc(0.95) WITHIN GROUP (ORDER BY response_time_ms) \
         FROM auditline.events WHERE user_id IS NOT NULL AND occurred_at >= $1 AND occurred_at < $2 \
         GROUP BY user_id ORDER BY count(*) DESC, user_id",
    )
    .bind(range_from)
    .bind(range_to)
    .fetch_all(&env.pool)
    .await
    .expect("sql summary");
    let users = page["users"].as_array().expect("users");
    assert_eq!(users.len(), expected.len());
    assert!(expected.len() >= 5);
    for (got, (user, total, failures, avg, first, last, p95)) in users.iter().zip(&expected) {
        assert_eq!(got["user_id"], json!(user));
        assert_eq!(got["total"], json!(total), "{user}");
        assert_eq!(got["failures"], json!(failures), "{user}");
        let rate = got["failure_rate"].as_f64().expect("rate");
        assert!(
            (rate - *failures as f64 / *total as f64).abs() < 1e-12,
            "{user}"
        );
        let got_avg = got["avg_response_time_ms"].as_f64().expect("avg");
        assert!(
            (got_avg - avg.expect("sql avg")).abs() < 1e-9,
            "{user}: {got_avg} vs {avg:?}"
        );
        assert_eq!(got["first_seen"], json!(first), "{user}");
        assert_eq!(got["last_seen"], json!(last), "{user}");
        let got_p95 = got["p95_response_time_ms"].as_f64().expect("p95");
        let bucket = rollup::latency_bucket(p95.expect("sql p95"));
        assert!(
            (got_p95 - rollup::bucket_upper_ms(bucket)).abs() < 1e-9,
            "{user}: p95 {got_p95} is not the bucket of the exact {p95:?}"
        );
        let tops: Vec<(String, i64)> = sqlx::query_as(
            "SELECT action_type, count(*) FROM auditline.events WHERE user_id = $1 \
             AND occurred_at >= $2 AND occurred_at < $3 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
        )
        .bind(user)
        .bind(range_from)
        .bind(range_to)
        .fetch_all(&env.pool)
        .await
        .expect("tops");
        let want: Vec<Value> = tops
            .iter()
            .map(|(a, n)| json!({"action_type": a, "count": n}))
            .collect();
        assert_eq!(got["top_action_types"], json!(want), "{user}");
    }

    // Sorting and paging: by failures ascending, two at a time.
    let mut walked = Vec::new();
    let mut offset = Some(0);
    while let Some(o) = offset {
        let (status, page) = admin
            .get_json(
                Some(&token),
                &format!(
                    "/admin/audit/users?from={}&to={}&sort=failures&order=asc&limit=2&offset={o}",
                    rfc(range_from),
                    rfc(range_to)
                ),
            )
            .await;
        assert_eq!(status, 200);
        for u in page["users"].as_array().expect("users") {
            walked.push((
                u["failures"].as_i64().expect("f"),
                u["user_id"].as_str().expect("u").to_owned(),
            ));
        }
        offset = page["next_offset"].as_i64();
    }
    let mut sorted = walked.clone();
    sorted.sort();
    assert_eq!(walked, sorted, "sorted by failures, then user");
    assert_eq!(walked.len(), expected.len());

    // Every sort key, both ways: sorted as asked.
    for sort in [
        "total",
        "failures",
        "failure_rate",
        "avg_response_time_ms",
        "last_seen",
        "user_id",
    ] {
        for order in ["asc", "desc"] {
            let (status, page) = admin
                .get_json(
                    Some(&token),
                    &format!(
                        "/admin/audit/users?from={}&to={}&sort={sort}&order={order}",
                        rfc(range_from),
                        rfc(range_to)
                    ),
                )
                .await;
            assert_eq!(status, 200, "{sort} {order}: {page}");
            let keys: Vec<Value> = page["users"]
                .as_array()
                .expect("users")
                .iter()
                .map(|u| match sort {
                    "avg_response_time_ms" => u["avg_response_time_ms"].clone(),
                    "user_id" => u["user_id"].clone(),
                    "last_seen" => u["last_seen"].clone(),
                    other => u[other].clone(),
                })
                .collect();
            let mut sorted = keys.clone();
            sorted.sort_by(|a, b| {
                let ord = match (a.as_f64(), b.as_f64()) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    _ => a.as_str().cmp(&b.as_str()),
                };
                if order == "desc" { ord.reverse() } else { ord }
            });
            assert_eq!(keys, sorted, "sorted by {sort} {order}");
        }
    }

    // One user with the hourly timeline.
    let (status, detail) = admin
        .get_json(
            Some(&token),
            &format!(
                "/admin/audit/users/user-3?from={}&to={}",
                rfc(range_from),
                rfc(range_to)
            ),
        )
        .await;
    assert_eq!(status, 200, "{detail}");
    let row = expected.iter().find(|r| r.0 == "user-3").expect("user-3");
    assert_eq!(detail["summary"]["total"], json!(row.1));
    let hours: Vec<(DateTime<Utc>, i64, i64)> = sqlx::query_as(
        "SELECT date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*), \
         count(*) FILTER (WHERE NOT success) FROM auditline.events \
         WHERE user_id = 'user-3' AND occurred_at >= $1 AND occurred_at < $2 GROUP BY 1 ORDER BY 1",
    )
    .bind(range_from)
    .bind(range_to)
    .fetch_all(&env.pool)
    .await
    .expect("timeline");
    let timeline = detail["timeline"].as_array().expect("timeline");
    assert_eq!(timeline.len(), hours.len());
    for (got, (hour, total, failures)) in timeline.iter().zip(&hours) {
        assert_eq!(got["hour"], json!(hour));
        assert_eq!(got["total"], json!(total));
        assert_eq!(got["failures"], json!(failures));
    }
    let (status, body) = admin
        .get_json(Some(&token), "/admin/audit/users/nobody-at-all")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    set.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn two_writers_fold_every_stored_event_into_the_rollups_once() {
    let env = TestEnv::new().await;
    let (a, b) = (
        InProcessWriter::start(&env).await,
        InProcessWriter::start(&env).await,
    );
    let events = crate::helpers::events(20_000);
    let publisher = env.publisher().await;
    // Every event twice, concurrently: the duplicates must not be counted.
    let (first, second) = tokio::join!(
        publisher.publish_batch(&events),
        publisher.publish_batch(&events)
    );
    first.expect("published");
    second.expect("republished");
    assert!(
        wait_until(Duration::from_secs(90), || async {
            env.processed().await >= 2 * events.len() as i64
        })
        .await,
        "not everything was processed"
    );
    env.wait_for_rows(events.len() as i64, Duration::from_secs(10))
        .await;
    env.wait_rollups().await;
    for grain in ["m", "h", "d"] {
        let (rolled, failures): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(events), 0)::int8, coalesce(sum(failures), 0)::int8 \
             FROM auditline.rollups WHERE grain = $1::\"char\"",
        )
        .bind(grain)
        .fetch_one(&env.pool)
        .await
        .expect("rollups");
        let failed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM auditline.events WHERE NOT success")
                .fetch_one(&env.pool)
                .await
                .expect("failures");
        assert_eq!(rolled, events.len() as i64, "grain {grain}");
        assert_eq!(failures, failed, "grain {grain}");
    }
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn admin_requests_are_recorded_as_admin_events() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let admin = InProcessAdmin::start(&env).await;
    let token = env.named_token("ops-alice", &[Scope::Read]).await;
    let (status, _) = admin
        .get_json(
            Some(&token),
            "/admin/audit/logs?user_id=bob&action_type=file&action_type=auth",
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = admin.get_json(None, "/admin/audit/users").await;
    assert_eq!(status, 401);
    let stored = wait_until(Duration::from_secs(20), || async {
        env.count().await.0 >= 2
    })
    .await;
    assert!(stored, "the admin requests were not stored as events");

    type Row = (
        String,
        Option<String>,
        String,
        Option<String>,
        Option<i16>,
        bool,
        Option<Value>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT service, user_id, action_type, route, status_code, success, metadata \
         FROM auditline.events ORDER BY occurred_at",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    let search = rows
        .iter()
        .find(|r| r.3.as_deref() == Some("/admin/audit/logs"))
        .expect("the search is recorded");
    assert_eq!(search.0, "auditline-admin");
    assert_eq!(search.1.as_deref(), Some("ops-alice"));
    assert_eq!(search.2, "admin");
    assert_eq!(search.4, Some(200));
    assert_eq!(
        search.6,
        Some(json!({"query": {"user_id": "bob", "action_type": ["file", "auth"]}}))
    );
    let refused = rows
        .iter()
        .find(|r| r.3.as_deref() == Some("/admin/audit/users"))
        .expect("the refused request is recorded");
    assert_eq!((refused.1.as_deref(), refused.2.as_str()), (None, "admin"));
    assert_eq!((refused.4, refused.5), (Some(401), false));

    // And a reader finds them through the API.
    let (status, body) = admin
        .get_json(
            Some(&token),
            "/admin/audit/logs?action_type=admin&user_id=ops-alice",
        )
        .await;
    assert_eq!(status, 200);
    assert!(!body["events"].as_array().expect("events").is_empty());
    admin.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn real_time_metrics_count_the_last_minutes() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let now = Utc::now();
    let events: Vec<AuditEvent> = (0..120usize)
        .map(|i| {
            let mut e = crate::helpers::event_at("rt", now - TimeDelta::seconds(i as i64), i);
            e.user_id = Some(if i < 70 {
                "heavy".into()
            } else {
                format!("light-{}", i % 5)
            });
            e.success = i % 8 != 0;
            e.response_time_ms = Some((i % 40) as f64 * 5.0);
            e
        })
        .collect();
    env.publisher()
        .await
        .publish_batch(&events)
        .await
        .expect("published");
    env.wait_for_rows(events.len() as i64, Duration::from_secs(30))
        .await;
    env.wait_rollups().await;
    let admin = InProcessAdmin::start(&env).await;
    let token = env.token(&[Scope::Read], None).await;
    let (status, body) = admin.get_json(Some(&token), "/admin/audit/metrics").await;
    assert_eq!(status, 200, "{body}");
    let fifteen = &body["windows"][2];
    assert_eq!(fifteen["minutes"], 15);
    assert_eq!(fifteen["events"], 120);
    assert_eq!(fifteen["failures"], 15);
    assert!((fifteen["failure_rate"].as_f64().expect("rate") - 0.125).abs() < 1e-12);
    assert!(fifteen["events_per_second"].as_f64().expect("rate") > 0.0);
    let mut times: Vec<f64> = events.iter().filter_map(|e| e.response_time_ms).collect();
    times.sort_by(f64::total_cmp);
    let exact_p95 = times[(0.95 * times.len() as f64).ceil() as usize - 1];
    let p95 = fifteen["p95_response_time_ms"].as_f64().expect("p95");
    assert_eq!(
        p95,
        rollup::bucket_upper_ms(rollup::latency_bucket(exact_p95))
    );
    // The one-minute window holds only the events of the current minute.
    let as_of: DateTime<Utc> = body["as_of"]
        .as_str()
        .expect("as_of")
        .parse()
        .expect("time");
    let minute = as_of.duration_trunc(TimeDelta::minutes(1)).expect("minute");
    let in_minute = events.iter().filter(|e| e.occurred_at >= minute).count();
    assert_eq!(body["windows"][0]["events"], json!(in_minute));
    assert_eq!(body["top_users"][0], json!({"name": "heavy", "events": 70}));
    assert_eq!(body["top_action_types"].as_array().map(Vec::len), Some(6));
    admin.stop().await;
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn the_openapi_document_describes_admin_and_ingest_routes() {
    let env = TestEnv::new().await;
    let admin = InProcessAdmin::start(&env).await;
    let (status, doc) = admin.get_json(None, "/admin/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/admin/audit/logs",
        "/admin/audit/logs/{event_id}",
        "/admin/audit/users",
        "/admin/audit/users/{user_id}",
        "/admin/audit/metrics",
        "/v1/events",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["WireEvent"]["properties"]["occurred_at"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    admin.stop().await;
    env.cleanup().await;
}

/// Runs schemathesis (installed by `deploy/scripts/ensure-schemathesis.sh`;
/// `SCHEMATHESIS` names the binary) against the real `auditline all`.
fn schemathesis(args: &[&str]) -> (bool, String) {
    let bin = std::env::var("SCHEMATHESIS")
        .unwrap_or_else(|_| "target/schemathesis-venv/bin/schemathesis".into());
    let output = std::process::Command::new(&bin)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin} ({e}); run deploy/scripts/test.sh, which installs it")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[actix_web::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    use crate::helpers::{Process, free_port};
    let env = TestEnv::new().await;
    let (admin_port, ingest_port) = (free_port(), free_port());
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let ingest_listen = format!("127.0.0.1:{ingest_port}");
    let _all = Process::spawn_with(
        &env,
        &["all"],
        &[
            ("AUDITLINE_ADMIN_LISTEN", &admin_listen),
            ("AUDITLINE_INGEST_LISTEN", &ingest_listen),
        ],
    );
    let listening = |port: u16| async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    };
    let up = wait_until(Duration::from_secs(30), || async {
        listening(admin_port).await
            && listening(ingest_port).await
            && crate::helpers::http_get(admin_port, "/readyz").await.0 == 200
            && crate::helpers::http_get(ingest_port, "/readyz").await.0 == 200
    })
    .await;
    assert!(up, "auditline all did not come up");
    // Something to find: a few stored events.
    let writer_events: Vec<AuditEvent> = (0..20)
        .map(|i| crate::helpers::event_at("web", Utc::now() - TimeDelta::minutes(i), i as usize))
        .collect();
    env.publisher()
        .await
        .publish_batch(&writer_events)
        .await
        .expect("published");
    let reader = format!(
        "Authorization: Bearer {}",
        env.token(&[Scope::Read, Scope::Export], None).await
    );
    let publisher = format!(
        "Authorization: Bearer {}",
        env.token(&[Scope::Publish], Some("st")).await
    );
    let schema = format!("http://127.0.0.1:{admin_port}/admin/openapi.json");
    // positive_data_acceptance is left out: some rules span parameters
    // (`from` before `to`) and cannot be written in OpenAPI, so schema-valid
    // requests can rightly be refused with a 400. use_after_free too: DELETE
    // on an export job cancels it (or deletes its file), and the job stays
    // visible with its final state, as an audit trail should.
    let common = [
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance,use_after_free",
        "--max-examples",
        "40",
        "--seed",
        "20261128",
    ];
    let admin_url = format!("http://127.0.0.1:{admin_port}");
    let mut args = vec![
        "run",
        &schema,
        "--url",
        &admin_url,
        "--include-path-regex",
        "^/admin",
        "-H",
        &reader,
    ];
    args.extend(common);
    let (ok, report) = schemathesis(&args);
    assert!(
        ok,
        "schemathesis found problems in the admin API:\n{report}"
    );
    assert!(report.contains("passed"), "{report}");

    let ingest_url = format!("http://127.0.0.1:{ingest_port}");
    let mut args = vec![
        "run",
        &schema,
        "--url",
        &ingest_url,
        "--include-path",
        "/v1/events",
        "-H",
        &publisher,
    ];
    args.extend(common);
    let (ok, report) = schemathesis(&args);
    assert!(
        ok,
        "schemathesis found problems in the ingest API:\n{report}"
    );
    env.cleanup().await;
}

/// An admin read is recorded whole or not served: parameters padded past
/// what an audit record holds are refused with 414, so a call cannot push
/// the user it read out of its own record.
#[actix_web::test]
async fn a_request_too_long_to_record_is_refused_not_recorded_shorter() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let admin = InProcessAdmin::start(&env).await;
    let token = env.named_token("ops-mallory", &[Scope::Read]).await;
    // Padding user ids (any of them matches), the user read last.
    let padded = |n: usize| {
        let mut path = "/admin/audit/logs?".to_owned();
        for i in 0..n {
            path.push_str(&format!("user_id=pad-{i:04}-{}&", "x".repeat(240)));
        }
        path + "user_id=bob"
    };
    // ~17.5 KB of parameters: more than the 16 KiB a record's metadata holds.
    let (status, body) = admin.get_json(Some(&token), &padded(70)).await;
    assert_eq!(status, 414, "{body}");
    assert_eq!(
        body["error"]["code"], "request_too_long_to_record",
        "{body}"
    );
    assert!(body.get("events").is_none(), "{body}");
    // ~10 KB fits, and is recorded whole: every value, the user read last.
    let (status, body) = admin.get_json(Some(&token), &padded(40)).await;
    assert_eq!(status, 200, "{body}");
    let recorded = wait_until(Duration::from_secs(20), || async {
        env.count().await.0 >= 2
    })
    .await;
    assert!(recorded, "the admin requests were not stored");
    // The refused call is recorded too (before authentication, so without
    // its user); the served one with its user and every parameter.
    let rows: Vec<(Option<String>, Option<i16>, Option<Value>)> = sqlx::query_as(
        "SELECT user_id, status_code, metadata FROM auditline.events \
         WHERE action_type = 'admin' AND endpoint LIKE '/admin/audit/logs%' ORDER BY occurred_at",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    let summary: Vec<_> = rows.iter().map(|r| (r.0.clone(), r.1)).collect();
    assert_eq!(
        summary,
        [
            (None, Some(414)),
            (Some("ops-mallory".to_owned()), Some(200))
        ]
    );
    let rows: Vec<(Option<i16>, Option<Value>)> =
        rows.into_iter().map(|(_, status, m)| (status, m)).collect();
    let query = &rows[1].1.as_ref().expect("metadata")["query"];
    let users = query["user_id"].as_array().expect("user ids");
    assert_eq!(users.len(), 41);
    assert_eq!(users[40], "bob");
    assert_eq!(users[0].as_str().map(str::len), Some(249));
    admin.stop().await;
    writer.stop().await;
    env.cleanup().await;
}
