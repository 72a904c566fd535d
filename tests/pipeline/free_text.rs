//! The free-text search (`q`) and its block index: whatever state the index
//! is in, a search answers exactly what a scan of the rows answers.

use std::collections::HashSet;

use auditline_shared::{AuditEvent, auth::Scope};
use auditline_writer::fold as rollup;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::admin::{enc, rfc, store_folded, walk};
use crate::helpers::{InProcess, InProcessAdmin, TestEnv};

/// 3,000 events over six hours: unique request ids, a few rare words, mixed
/// case and non-ASCII text.
fn text_events() -> (Vec<AuditEvent>, DateTime<Utc>, DateTime<Utc>) {
    let hour = Utc::now()
        .duration_trunc(TimeDelta::hours(1))
        .expect("hour");
    let start = hour - TimeDelta::hours(7);
    let events = (0..3000usize)
        .map(|i| {
            let mut metadata = json!({
                "request_id": format!("{:032x}", (i as u128 + 17) * 0x9e37_79b9_7f4a_7c15),
                "agent": "loadgen/1",
            });
            if i % 97 == 0 {
                metadata["note"] = json!(format!("Needle-{}", i % 10));
            }
            if i % 61 == 0 {
                metadata["memo"] = json!(format!("Überweisung-{}", i % 20));
            }
            AuditEvent {
                event_id: Uuid::now_v7(),
                occurred_at: start + TimeDelta::milliseconds(7_200 * i as i64),
                service: "web".into(),
                session_id: format!("s-{}", i % 9),
                user_id: Some(format!("user-{}", i % 50)),
                client_ip: None,
                action_type: "file".into(),
                endpoint: if i % 3 == 0 {
                    format!("/Reports/Q{}", i % 400)
                } else {
                    format!("/files/{i}")
                },
                route: None,
                http_method: "GET".into(),
                request_size: None,
                response_size: None,
                response_time_ms: Some(3.0),
                status_code: Some(200),
                success: true,
                resource_usage: None,
                metadata: metadata.as_object().cloned(),
            }
        })
        .collect();
    (events, start, hour - TimeDelta::hours(1))
}

/// What a plain scan of the rows finds for `q` in the window.
async fn scanned(env: &TestEnv, q: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> HashSet<Uuid> {
    sqlx::query_scalar(
        "SELECT event_id FROM auditline.events WHERE occurred_at >= $1 AND occurred_at < $2 \
         AND (strpos(lower(endpoint), $3) > 0 OR strpos(lower(metadata::text), $3) > 0)",
    )
    .bind(from)
    .bind(to)
    .bind(q.to_lowercase())
    .fetch_all(&env.pool)
    .await
    .expect("scan")
    .into_iter()
    .collect()
}

/// Every term, walked page by page in both orders, equals the scan.
async fn assert_searches_equal_scans(
    env: &TestEnv,
    admin: &InProcess,
    token: &str,
    terms: &[&str],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    state: &str,
) {
    for term in terms {
        let want = scanned(env, term, from, to).await;
        for order in ["desc", "asc"] {
            let query = format!(
                "q={}&from={}&to={}&order={order}",
                enc(term),
                rfc(from),
                rfc(to)
            );
            let got = walk(admin, token, &query, 40).await;
            assert_eq!(got.len(), want.len(), "{state}: {term:?} {order}");
            assert_eq!(
                got.into_iter().collect::<HashSet<_>>(),
                want,
                "{state}: {term:?} {order}"
            );
        }
    }
}

#[actix_web::test]
async fn free_text_search_answers_what_a_scan_answers_before_and_after_indexing() {
    let env = TestEnv::new().await;
    let (events, from, to) = text_events();
    store_folded(&env, &events).await.stop().await;
    let admin = InProcessAdmin::start(&env).await;
    let token = env.token(&[Scope::Read], None).await;

    let request_id = events[1234].metadata.as_ref().expect("metadata")["request_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let terms = [
        "/files/123",
        "REPORTS/Q39",
        "needle-7",
        "überweisung-1",
        "\"note\": \"need",
        request_id.as_str(),
        &request_id[9..17],
        "oadgen/1",
        "q3",
        "absent-words",
    ];
    // The terms mean something: rare ones match a few rows, common ones many.
    let counts = [
        scanned(&env, "/files/123", from, to).await.len(),
        scanned(&env, &request_id, from, to).await.len(),
        scanned(&env, "absent-words", from, to).await.len(),
        scanned(&env, "überweisung-1", from, to).await.len(),
    ];
    assert_eq!(counts[..3], [6, 1, 0]);
    assert!(
        counts[3] > 0,
        "non-ASCII text is matched case-insensitively"
    );

    let blocks: i64 = sqlx::query_scalar("SELECT count(*) FROM auditline.search_blocks")
        .fetch_one(&env.pool)
        .await
        .expect("blocks");
    assert!(
        blocks > 2,
        "3,000 rows are indexed in several blocks, got {blocks}"
    );
    assert_searches_equal_scans(&env, &admin, &token, &terms, from, to, "indexed").await;

    // Not indexed yet: every batch pending again, no blocks.
    sqlx::query("DELETE FROM auditline.search_blocks")
        .execute(&env.pool)
        .await
        .expect("blocks removed");
    sqlx::query(
        "INSERT INTO auditline.rollup_pending (batch_id) \
         SELECT batch_id FROM auditline.batches WHERE inserted_count > 0",
    )
    .execute(&env.pool)
    .await
    .expect("pending again");
    assert_searches_equal_scans(&env, &admin, &token, &terms, from, to, "pending").await;

    // Half of them indexed, in one fold of the rollup keeper's.
    let folded = rollup::fold_pending(&env.pool, 1).await.expect("fold");
    assert_eq!(folded.batches, 1);
    assert_searches_equal_scans(&env, &admin, &token, &terms, from, to, "partly indexed").await;
    admin.stop().await;
}
