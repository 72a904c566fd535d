//! Seals, checkpoints and `auditline verify`: an untouched database verifies
//! clean; each kind of tampering (done as a superuser, triggers bypassed) is
//! named.

use crate::helpers::{InProcess, InProcessAdmin, InProcessWriter, Process, TestEnv, event_at};
use auditline_shared::{AuditEvent, auth::Scope, signing::SigningKey};
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

    // Anchor the chains outside the database, signed (the installation's key).
    let keys: [(&str, &str); 0] = [];
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

    // A checkpointer with another key does not continue a history it cannot
    // verify, and a forged checkpoint file (signed by another key) dropped
    // into storage is refused, not trusted.
    let (other, _) = auditline_integrity::checkpoint::Keys::generate().expect("keys");
    let forged = [("AUDITLINE_INTEGRITY__SIGNING_KEY", other.as_str())];
    let (code, _, err) = Process::output(&env, &["checkpoint"], &forged).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("integrity violation"), "{err}");
    let dir = std::path::Path::new(&env.settings.export_dir);
    let mut cp: Value =
        serde_json::from_slice(&std::fs::read(dir.join("checkpoint-latest.json")).expect("latest"))
            .expect("JSON");
    cp["created_at"] = json!("2999-01-01T00:00:00Z");
    std::fs::write(
        dir.join("checkpoint-29990101T000000.000000Z.json"),
        serde_json::to_vec(&cp).expect("JSON"),
    )
    .expect("forge");
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

/// Publishes two rounds of events (two writer pipelines, so two chains)
/// and waits for them; returns the events.
async fn stored_events(env: &TestEnv) -> Vec<AuditEvent> {
    let writer = InProcessWriter::start(env).await;
    let publisher = env.publisher().await;
    let mut all = Vec::new();
    for round in 0..3 {
        let batch = odd_events(30 + round);
        publisher.publish_batch(&batch).await.expect("confirmed");
        all.extend(batch);
        env.wait_for_rows(all.len() as i64, Duration::from_secs(30))
            .await;
    }
    writer.stop().await;
    all
}

/// The seal chains and their newest sequence numbers.
async fn chains(env: &TestEnv) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT chain, max(seq) FROM auditline.batches WHERE chain IS NOT NULL \
         GROUP BY chain ORDER BY chain",
    )
    .fetch_all(&env.pool)
    .await
    .expect("chains")
}

/// Waits until the admin service's checkpoints anchor every chain at its tip.
async fn wait_anchored(env: &TestEnv, admin: &InProcess) {
    let tips = chains(env).await;
    let anchored = crate::helpers::wait_until(Duration::from_secs(20), || async {
        let (_, metrics) = crate::helpers::http_get(admin.port, "/metrics").await;
        tips.iter().all(|(chain, seq)| {
            metrics
                .lines()
                .any(|l| l == format!("auditline_checkpoint_seal_seq{{chain=\"{chain}\"}} {seq}"))
        })
    })
    .await;
    assert!(
        anchored,
        "the checkpoints do not anchor every chain {tips:?}"
    );
}

/// The checkpoint files in `dir`, oldest first (not the latest copy).
fn checkpoint_files(dir: &std::path::Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("checkpoint-2"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Waits until the checkpointer has refused at least `n` checkpoints;
/// returns the admin service's metrics page.
async fn wait_refused(admin: &InProcess, n: f64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = crate::helpers::http_get(admin.port, "/metrics").await;
        if crate::helpers::metric(&metrics, "auditline_integrity_violations_total") >= n {
            return metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpointer did not refuse {n} checkpoints:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removing a whole chain stays detected however many checkpoints follow:
/// the checkpointer refuses to sign the regression (metric, no new
/// checkpoint anchoring less), and verify, CLI and API, names it.
#[actix_web::test]
async fn a_removed_chain_stays_detected_after_later_checkpoints() {
    let env = TestEnv::new().await;
    stored_events(&env).await;
    let admin = InProcessAdmin::start(&env).await;
    wait_anchored(&env, &admin).await;
    // A history of three checkpoints at least.
    let dir = std::path::Path::new(&env.settings.export_dir);
    let history = crate::helpers::wait_until(Duration::from_secs(20), || async {
        checkpoint_files(dir).len() >= 3
    })
    .await;
    assert!(history, "{:?}", checkpoint_files(dir));
    let (victim, victim_seq) = chains(&env).await.remove(0);
    tamper(
        &env,
        &format!(
            "DELETE FROM auditline.events WHERE batch_id IN \
               (SELECT batch_id FROM auditline.batches WHERE chain = '{victim}'); \
             DELETE FROM auditline.rollup_pending WHERE batch_id IN \
               (SELECT batch_id FROM auditline.batches WHERE chain = '{victim}'); \
             DELETE FROM auditline.batches WHERE chain = '{victim}'"
        ),
    )
    .await;
    // Two checkpoint rounds (2 s apart) after the deletion.
    wait_refused(&admin, 2.0).await;
    let latest = std::fs::read_to_string(dir.join("checkpoint-latest.json")).expect("latest");
    assert!(
        latest.contains(&victim),
        "the newest checkpoint still anchors the removed chain: {latest}"
    );

    let (code, report) = verify_cli(&env).await;
    assert_eq!(code, 1, "{report:#}");
    let truncated: Vec<&Value> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == "truncated")
        .collect();
    assert_eq!(truncated.len(), 1, "one finding for the chain: {report:#}");
    assert_eq!(truncated[0]["chain"], victim.as_str());
    assert_eq!(truncated[0]["seq"], victim_seq);
    assert!(
        truncated[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("whole chain was removed")),
        "{report:#}"
    );
    assert!(
        report["checkpoints"].as_u64().unwrap_or(0) >= 1,
        "{report:#}"
    );
    let admin_token = env.named_token("auditor", &[Scope::Admin]).await;
    let (status, body) = admin
        .get_json(Some(&admin_token), "/admin/audit/verify")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], false, "{body:#}");
    assert!(
        kinds(&body).iter().any(|(k, _)| k == "truncated"),
        "{body:#}"
    );
    admin.stop().await;

    // Storage tampering is named too: the latest copy replaced by an older
    // checkpoint, and a checkpoint removed from the middle of the history.
    let files = checkpoint_files(dir);
    std::fs::copy(dir.join(&files[0]), dir.join("checkpoint-latest.json")).expect("copy");
    std::fs::remove_file(dir.join(&files[1])).expect("remove");
    let (code, report) = verify_cli(&env).await;
    assert_eq!(code, 1);
    let regressions: Vec<String> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == "checkpoint_regression")
        .map(|f| f["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        regressions.iter().any(|m| m.contains("not the newest")),
        "{report:#}"
    );
    assert!(
        regressions
            .iter()
            .any(|m| m.contains("does not name") && m.contains(&files[0])),
        "{report:#}"
    );
    env.cleanup().await;
}

/// Recomputes the entries and seals of `chain` from its stored rows, as
/// someone who knows the algorithm but not the writer key would, after
/// changing a row: every hash and link checks out again.
async fn recompute_chain(env: &TestEnv, chain: &str) {
    use auditline_integrity::verify::{ROW_COLUMNS, StoredRow};
    use auditline_shared::seal;
    let seals: Vec<(i64, Uuid, i32)> = sqlx::query_as(
        "SELECT seq, batch_id, inserted_count FROM auditline.batches WHERE chain = $1 ORDER BY seq",
    )
    .bind(chain)
    .fetch_all(&env.pool)
    .await
    .expect("seals");
    let mut prev = seal::GENESIS.to_vec();
    for (seq, batch_id, inserted) in seals {
        let rows: Vec<StoredRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM auditline.events WHERE batch_id = $1"
        )))
        .bind(batch_id)
        .fetch_all(&env.pool)
        .await
        .expect("rows");
        assert_eq!(rows.len() as i32, inserted);
        let mut entries: Vec<seal::Entry> = rows
            .into_iter()
            .map(|r| r.into_row().expect("row").entry())
            .collect();
        let entries = seal::encode_entries(&mut entries);
        let hash = seal::seal_hash(&seal::SealInput {
            chain,
            seq,
            prev_hash: &prev,
            batch_id,
            entry_count: i64::from(inserted),
            entries_hash: &seal::sha256(&entries),
        });
        let mut tx = env.pool.begin().await.expect("begin");
        sqlx::query("SET LOCAL session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .expect("bypass");
        sqlx::query(
            "UPDATE auditline.batches SET entries = $1, prev_hash = $2, seal_hash = $3 \
             WHERE batch_id = $4",
        )
        .bind(&entries)
        .bind(&prev)
        .bind(&hash[..])
        .bind(batch_id)
        .execute(&mut *tx)
        .await
        .expect("rewrite seal");
        tx.commit().await.expect("commit");
        prev = hash.to_vec();
    }
}

/// A row changed in an old batch and every seal after it recomputed: with
/// no writer key to give it away, the checkpoints alone still do, however
/// many follow.
#[actix_web::test]
async fn a_recomputed_chain_stays_a_checkpoint_mismatch() {
    let mut env = TestEnv::new().await;
    // Unsigned seals: this is the checkpoints' own defence.
    env.settings.integrity.writer_key = None;
    let events = stored_events(&env).await;
    let admin = InProcessAdmin::start(&env).await;
    wait_anchored(&env, &admin).await;
    let changed = events[0].event_id;
    let chain: String = sqlx::query_scalar(
        "SELECT b.chain FROM auditline.batches b JOIN auditline.events e USING (batch_id) \
         WHERE e.event_id = $1",
    )
    .bind(changed)
    .fetch_one(&env.pool)
    .await
    .expect("chain");
    tamper(
        &env,
        &format!("UPDATE auditline.events SET user_id = 'mallory' WHERE event_id = '{changed}'"),
    )
    .await;
    recompute_chain(&env, &chain).await;
    wait_refused(&admin, 2.0).await;
    admin.stop().await;

    let (code, report) = verify_cli(&env).await;
    assert_eq!(code, 1, "{report:#}");
    let found = kinds(&report);
    assert!(
        found.iter().all(|(k, _)| k == "checkpoint_mismatch"),
        "the recomputed chain checks out but for the checkpoints: {report:#}"
    );
    let mismatch = report["findings"]
        .as_array()
        .and_then(|f| f.first())
        .expect("a finding");
    assert_eq!(mismatch["chain"], chain.as_str(), "{report:#}");
    assert_eq!(report["writer_keys"], 0);
    env.cleanup().await;
}

/// Inserts `event` and a seal for it on a new chain, with correct digests,
/// as someone with database rights would: signed by `key`, or unsigned.
async fn forge_chain(env: &TestEnv, chain: &str, event: &AuditEvent, key: Option<&SigningKey>) {
    use auditline_shared::seal;
    let batch_id = Uuid::now_v7();
    let received_at = event.occurred_at + chrono::Duration::seconds(1);
    let day = event.occurred_at.date_naive();
    let mut entries = vec![seal::Entry::of(event, received_at, batch_id)];
    let entries = seal::encode_entries(&mut entries);
    let hash = seal::seal_hash(&seal::SealInput {
        chain,
        seq: 1,
        prev_hash: &seal::GENESIS,
        batch_id,
        entry_count: 1,
        entries_hash: &seal::sha256(&entries),
    });
    let signature = key.map(|k| {
        (
            k.public().to_vec(),
            k.sign(&seal::signed_message(&hash)).to_vec(),
        )
    });
    let mut tx = env.pool.begin().await.expect("begin");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS auditline.events_{} PARTITION OF auditline.events \
         FOR VALUES FROM ('{day}') TO ('{}')",
        day.format("%Y%m%d"),
        day.succ_opt().expect("next day")
    )))
    .execute(&mut *tx)
    .await
    .expect("partition");
    sqlx::query(
        "INSERT INTO auditline.events (event_id, occurred_at, received_at, batch_id, service, \
           session_id, user_id, client_ip, action_type, endpoint, route, http_method, \
           request_size, response_size, response_time_ms, status_code, success, resource_usage, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::inet, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
    )
    .bind(event.event_id)
    .bind(event.occurred_at)
    .bind(received_at)
    .bind(batch_id)
    .bind(&event.service)
    .bind(&event.session_id)
    .bind(&event.user_id)
    .bind(event.client_ip.map(|ip| ip.to_string()))
    .bind(&event.action_type)
    .bind(&event.endpoint)
    .bind(&event.route)
    .bind(&event.http_method)
    .bind(event.request_size.map(|n| n as i64))
    .bind(event.response_size.map(|n| n as i64))
    .bind(event.response_time_ms)
    .bind(event.status_code.map(|n| n as i16))
    .bind(event.success)
    .bind(event.resource_usage.clone().map(Value::Object))
    .bind(event.metadata.clone().map(Value::Object))
    .execute(&mut *tx)
    .await
    .expect("forged row");
    sqlx::query(
        "INSERT INTO auditline.batches (batch_id, writer_id, message_count, event_count, \
           inserted_count, first_event_id, last_event_id, chain, seq, prev_hash, seal_hash, \
           entries, occurred_min, occurred_max, seal_key, seal_signature) \
         VALUES ($1, 'forger', 1, 1, 1, $2, $2, $3, 1, $4, $5, $6, $7, $7, $8, $9)",
    )
    .bind(batch_id)
    .bind(event.event_id)
    .bind(chain)
    .bind(&seal::GENESIS[..])
    .bind(&hash[..])
    .bind(&entries)
    .bind(event.occurred_at)
    .bind(signature.as_ref().map(|(k, _)| k.clone()))
    .bind(signature.as_ref().map(|(_, s)| s.clone()))
    .execute(&mut *tx)
    .await
    .expect("forged seal");
    tx.commit().await.expect("commit");
}

/// Events slipped in through a new chain with correct digests (one
/// back-dated) fail verify at once, whether unsigned or signed by a key
/// that is not a writer's, and the checkpointer never anchors them.
#[actix_web::test]
async fn a_forged_chain_fails_at_once_and_is_never_anchored() {
    let env = TestEnv::new().await;
    stored_events(&env).await;
    let (code, report) = verify_cli(&env).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["writer_keys"], 1, "{report:#}");

    let now = Utc::now();
    let recent = event_at("tests", now, 7);
    let back_dated = event_at("tests", now - chrono::Duration::days(3), 8);
    forge_chain(&env, "forged/0", &recent, None).await;
    let (own, _) = SigningKey::generate().expect("key");
    let own = SigningKey::from_seed_hex(&own, "forger's key").expect("key");
    forge_chain(&env, "forged/1", &back_dated, Some(&own)).await;

    let (code, report) = verify_cli(&env).await;
    assert_eq!(code, 1, "{report:#}");
    let findings = report["findings"].as_array().expect("findings");
    let of = |chain: &str| -> Vec<String> {
        findings
            .iter()
            .filter(|f| f["chain"] == chain)
            .map(|f| f["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(of("forged/0"), ["unsigned_seal"], "{report:#}");
    assert_eq!(of("forged/1"), ["forged_seal"], "{report:#}");

    let admin = InProcessAdmin::start(&env).await;
    let metrics = wait_refused(&admin, 2.0).await;
    assert!(
        !metrics.contains("forged/"),
        "no checkpoint anchored the forged chains"
    );
    admin.stop().await;
    let dir = std::path::Path::new(&env.settings.export_dir);
    let written = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).count())
        .unwrap_or(0);
    assert_eq!(written, 0, "no checkpoint was written");
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
