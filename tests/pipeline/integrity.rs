//! Seals, checkpoints and `auditline verify`: an untouched database verifies
//! clean; each kind of tampering (done as a superuser, triggers bypassed) is
//! named.

use crate::helpers::{InProcessAdmin, InProcessWriter, Process, TestEnv, event_at};
use auditline_shared::{AuditEvent, auth::Scope};
use chrono::Utc;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

/// Events whose JSON jsonb prints back differently (floats, exponents,
/// unordered keys, unicode), and both address families.
fn odd_events(n: usize) -> Vec<AuditEvent> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let mut e = event_at("tests", now, i);
            let metadata = json!({
                "zeta": 1e15, "alpha": -0.0, "big": 1.8e19, "ratio": 0.1 + i as f64,
                "nested": {"b": [1, 2.5, null, true], "a": "ünïcødé \u{1F600}"},
                "i": i
            });
            e.metadata = metadata.as_object().cloned();
            e.client_ip = Some(if i % 2 == 0 {
                "2001:db8::1".parse().expect("ip")
            } else {
                "::ffff:192.0.2.7".parse().expect("ip")
            });
            e.response_time_ms = Some(i as f64 / 3.0);
            e
        })
        .collect()
}

/// Runs `auditline verify --json`: exit code and report.
async fn verify_cli(env: &TestEnv) -> (i32, Value) {
    Process::output(env, &["verify", "--json"], &[])
        .await
        .into_report()
}

fn kinds(report: &Value) -> Vec<(String, Option<String>)> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or_default().to_owned(),
                f["event_id"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Runs SQL as the superuser with the append-only triggers bypassed.
async fn tamper(env: &TestEnv, sql: &str) {
    let mut tx = env.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("bypass triggers");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *tx)
        .await
        .expect("tamper");
    tx.commit().await.expect("commit");
}

#[actix_web::test]
async fn verify_names_a_changed_removed_and_inserted_row_and_a_truncated_chain() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let publisher = env.publisher().await;
    // Four rounds, so four batches (seals) at least.
    let mut rounds = Vec::new();
    for round in 0..4 {
        let batch = odd_events(40 + round);
        publisher.publish_batch(&batch).await.expect("confirmed");
        env.wait_for_rows(
            rounds.iter().map(Vec::len).sum::<usize>() as i64 + batch.len() as i64,
            Duration::from_secs(30),
        )
        .await;
        rounds.push(batch);
    }
    // Duplicates go through the dedup path: sealed as storing nothing.
    publisher
        .publish_batch(&rounds[0])
        .await
        .expect("confirmed");
    let total: usize = rounds.iter().map(Vec::len).sum();
    let processed = crate::helpers::wait_until(Duration::from_secs(30), || async {
        env.processed().await >= (total + rounds[0].len()) as i64
    })
    .await;
    assert!(processed, "the duplicates were not processed");
    writer.stop().await;

    let seals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM auditline.batches WHERE chain IS NOT NULL")
            .fetch_one(&env.pool)
            .await
            .expect("seals");
    assert!(seals >= 5, "every commit is sealed ({seals})");

    let (code, report) = verify_cli(&env).await;
    assert_eq!(code, 0, "an untouched database verifies clean: {report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["rows"], total as u64);
    assert_eq!(report["seals"], seals);

    // The API says the same, to admins only.
    let admin = InProcessAdmin::start(&env).await;
    // The admin service anchors every chain on its own (every 2 s in tests)
    // and says so on /metrics.
    let chains: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT chain) FROM auditline.batches WHERE chain IS NOT NULL",
    )
    .fetch_one(&env.pool)
    .await
    .expect("chains");
    let anchored = crate::helpers::wait_until(Duration::from_secs(15), || async {
        let (_, metrics) = crate::helpers::http_get(admin.port, "/metrics").await;
        metrics
            .lines()
            .filter(|l| l.starts_with("auditline_checkpoint_seal_seq{"))
            .count() as i64
            == chains
            && crate::helpers::metric(&metrics, "auditline_checkpoint_published_timestamp_seconds")
                > 0.0
    })
    .await;
    assert!(anchored, "the checkpoint metrics name every chain");
    let latest = std::path::Path::new(&env.settings.export_dir).join("checkpoint-latest.json");
    let cp: Value = serde_json::from_slice(&std::fs::read(latest).expect("checkpoint file"))
        .expect("checkpoint JSON");
    assert_eq!(
        cp["chains"].as_array().map(|c| c.len() as i64),
        Some(chains),
        "{cp:#}"
    );
    let admin_token = env.named_token("auditor", &[Scope::Admin]).await;
    let reader = env.named_token("reader", &[Scope::Read]).await;
    let (status, body) = admin.get_json(Some(&reader), "/admin/audit/verify").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = admin
        .get_json(Some(&admin_token), "/admin/audit/verify")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true, "{body:#}");
    let (status, body) = admin
        .get_json(Some(&admin_token), "/admin/audit/verify?from=yesterday")
        .await;
    assert_eq!(status, 400, "{body}");
    // Its unsigned checkpoints would replace the signed one below.
    admin.stop().await;

    // Anchor the chains outside the database, signed.
    let (private, public) = auditline_admin_api::checkpoint::Keys::generate().expect("keys");
    let keys = [
        ("AUDITLINE_INTEGRITY__SIGNING_KEY", private.as_str()),
        ("AUDITLINE_INTEGRITY__VERIFY_KEY", public.as_str()),
    ];
    let (code, out, err) = Process::output(&env, &["checkpoint"], &keys).await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("signed"), "{out}");

    let first = &rounds[0];
    let (changed, removed, copied) = (first[0].event_id, first[1].event_id, first[2].event_id);
    // One byte of one row.
    tamper(
        &env,
        &format!(
            "UPDATE auditline.events SET endpoint = overlay(endpoint placing 'X' from 2 for 1) \
             WHERE event_id = '{changed}'"
        ),
    )
    .await;
    tamper(
        &env,
        &format!("DELETE FROM auditline.events WHERE event_id = '{removed}'"),
    )
    .await;
    let inserted = Uuid::now_v7();
    tamper(
        &env,
        &format!(
            "INSERT INTO auditline.events SELECT '{inserted}', occurred_at, received_at, batch_id, \
             service, session_id, user_id, client_ip, action_type, endpoint, route, http_method, \
             request_size, response_size, response_time_ms, status_code, success, resource_usage, metadata \
             FROM auditline.events WHERE event_id = '{copied}'"
        ),
    )
    .await;
    // The newest batch, rows and seal.
    let (newest, chain): (Uuid, String) = sqlx::query_as(
        "SELECT batch_id, chain FROM auditline.batches WHERE chain IS NOT NULL ORDER BY committed_at DESC, seq DESC LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .expect("newest batch");
    tamper(
        &env,
        &format!(
            "DELETE FROM auditline.events WHERE batch_id = '{newest}'; \
             DELETE FROM auditline.rollup_pending WHERE batch_id = '{newest}'; \
             DELETE FROM auditline.batches WHERE batch_id = '{newest}'"
        ),
    )
    .await;

    let (code, report) = Process::output(&env, &["verify", "--json"], &keys)
        .await
        .into_report();
    assert_eq!(code, 1, "findings exit with 1: {report:#}");
    assert_eq!(report["ok"], false);
    let found = kinds(&report);
    assert!(
        found.contains(&("changed_row".into(), Some(changed.to_string()))),
        "{report:#}"
    );
    assert!(
        found.contains(&("removed_row".into(), Some(removed.to_string()))),
        "{report:#}"
    );
    assert!(
        found.contains(&("inserted_row".into(), Some(inserted.to_string()))),
        "{report:#}"
    );
    let truncated = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "truncated")
        .unwrap_or_else(|| panic!("truncation not reported: {report:#}"));
    assert_eq!(truncated["chain"], chain.as_str());
    assert_eq!(found.len(), 4, "nothing else is reported: {report:#}");
    // The checkpoint anchored every chain (one per writer pipeline).
    assert_eq!(report["checkpoint"]["chains"], report["chains"]);

    // The human form names them too, and the API agrees.
    let (code, text, _) = Process::output(&env, &["verify"], &keys).await;
    assert_eq!(code, 1);
    for needle in [
        changed.to_string(),
        removed.to_string(),
        inserted.to_string(),
    ] {
        assert!(text.contains(&needle), "{text}");
    }
    assert!(text.contains("newest batches were removed"), "{text}");
    // An admin service that only verifies (no checkpoints of its own) agrees.
    let mut settings = env.settings.clone();
    settings.integrity.checkpoint_interval_secs = 0;
    settings.integrity.verify_key = Some(public.clone());
    settings.ingest.spool_dir = format!("{}-2", env.settings.ingest.spool_dir);
    let admin = InProcessAdmin::start_with(settings).await;
    let (_, body) = admin
        .get_json(Some(&admin_token), "/admin/audit/verify")
        .await;
    assert_eq!(body["ok"], false);
    assert!(
        body["findings"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["kind"] == "truncated")),
        "{body:#}"
    );
    admin.stop().await;

    // A forged checkpoint (signed by another key) is refused, not trusted.
    let (other, _) = auditline_admin_api::checkpoint::Keys::generate().expect("keys");
    let forged = [("AUDITLINE_INTEGRITY__SIGNING_KEY", other.as_str())];
    let (code, _, _) = Process::output(&env, &["checkpoint"], &forged).await;
    assert_eq!(code, 0);
    let (code, report) = Process::output(&env, &["verify", "--json"], &keys)
        .await
        .into_report();
    assert_eq!(code, 1);
    assert!(
        kinds(&report).iter().any(|(k, _)| k == "bad_checkpoint"),
        "{report:#}"
    );
    env.cleanup().await;
}

trait IntoReport {
    fn into_report(self) -> (i32, Value);
}

impl IntoReport for (i32, String, String) {
    fn into_report(self) -> (i32, Value) {
        let (code, stdout, stderr) = self;
        let report = serde_json::from_str(&stdout)
            .unwrap_or_else(|_| panic!("verify printed no JSON (exit {code}): {stdout} {stderr}"));
        (code, report)
    }
}
