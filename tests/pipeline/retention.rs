//! Retention: archive, verify the archive, drop, record the drop signed;
//! verify accepts the gap, and refuses a forged drop record.

use crate::helpers::{InProcessAdmin, InProcessWriter, Process, TestEnv, event_at, wait_until};
use chrono::{Duration as Days, NaiveDate, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::{io::BufRead, time::Duration};

async fn partition_exists(env: &TestEnv, day: NaiveDate) -> bool {
    auditline_shared::db::partition_exists(&env.pool, day)
        .await
        .expect("to_regclass")
}

async fn search_blocks_on(env: &TestEnv, day: NaiveDate) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM auditline.search_blocks \
         WHERE first_at >= ($1::timestamp AT TIME ZONE 'UTC') \
           AND last_at < (($1::date + 1)::timestamp AT TIME ZONE 'UTC')",
    )
    .bind(day)
    .fetch_one(&env.pool)
    .await
    .expect("blocks")
}

async fn rows_on(env: &TestEnv, day: NaiveDate) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM auditline.events WHERE occurred_at >= $1::date AND occurred_at < $1::date + 1",
    )
    .bind(day)
    .fetch_one(&env.pool)
    .await
    .expect("count")
}

#[actix_web::test]
async fn retention_archives_verifies_and_drops_and_verify_accepts_the_gap() {
    let env = TestEnv::new().await;
    let today = Utc::now().date_naive();
    let (d1, d2, d3) = (
        today - Days::days(5),
        today - Days::days(3),
        today - Days::days(2),
    );
    let noon = |d: NaiveDate| d.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    let mut events = Vec::new();
    for (k, day) in [d1, d2, d3].into_iter().enumerate() {
        events.extend((0..30 + k).map(|i| event_at("tests", noon(day), i)));
    }
    events.extend((0..20).map(|i| event_at("tests", Utc::now(), i)));
    let writer = InProcessWriter::start(&env).await;
    env.publisher()
        .await
        .publish_batch(&events)
        .await
        .expect("confirmed");
    env.wait_for_rows(events.len() as i64, Duration::from_secs(30))
        .await;
    env.wait_rollups().await;
    writer.stop().await;
    let d2_rows = rows_on(&env, d2).await;
    assert_eq!(d2_rows, 31);
    assert!(search_blocks_on(&env, d2).await > 0, "the rows are indexed");

    let (private, public) = auditline_integrity::checkpoint::Keys::generate().expect("keys");
    let keys = [
        ("AUDITLINE_INTEGRITY__SIGNING_KEY", private.as_str()),
        ("AUDITLINE_INTEGRITY__VERIFY_KEY", public.as_str()),
    ];
    let day = d2.to_string();
    let (code, out, err) =
        Process::output(&env, &["partitions", "drop", "--day", &day], &keys).await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("31 rows archived"), "{out}");
    assert!(
        !partition_exists(&env, d2).await,
        "the partition is dropped"
    );

    // The archive holds every row; its manifest names its hash and is signed.
    let dir = std::path::Path::new(&env.settings.export_dir);
    let stamp = d2.format("%Y%m%d");
    let archive =
        std::fs::read(dir.join(format!("archive-events-{stamp}.ndjson.zst"))).expect("archive");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("archive-events-{stamp}.manifest.json")))
            .expect("manifest"),
    )
    .expect("manifest JSON");
    assert_eq!(manifest["rows"], 31);
    assert_eq!(
        manifest["sha256"].as_str(),
        Some(auditline_shared::auth::hex(&Sha256::digest(&archive)).as_str())
    );
    assert!(manifest["signature"].is_string(), "{manifest:#}");
    assert!(!manifest["seals"].as_array().expect("seals").is_empty());
    let lines: Vec<Value> =
        std::io::BufReader::new(zstd::stream::read::Decoder::new(&archive[..]).expect("zstd"))
            .lines()
            .map(|l| serde_json::from_str(&l.expect("line")).expect("row JSON"))
            .collect();
    assert_eq!(lines.len(), 31);
    assert!(
        lines
            .iter()
            .all(|l| l["batch_id"].is_string() && l["received_at"].is_string())
    );

    // The admin service applies partitions.retention_days on its own.
    let mut settings = env.settings.clone();
    settings.partitions.retention_days = Some(4);
    settings.integrity.signing_key = Some(auditline_shared::settings::Secret::new(private.clone()));
    let admin = InProcessAdmin::start_with(settings).await;
    let gone = wait_until(Duration::from_secs(30), || async {
        !partition_exists(&env, d1).await
    })
    .await;
    assert!(gone, "the admin's retention did not drop {d1}");
    assert!(partition_exists(&env, d3).await, "{d3} is within retention");
    admin.stop().await;
    // The free-text index went with the dropped days, and only with them
    // (d2 was dropped before the older d1).
    assert_eq!(search_blocks_on(&env, d1).await, 0);
    assert_eq!(search_blocks_on(&env, d2).await, 0);
    assert!(search_blocks_on(&env, d3).await > 0);

    let (code, stdout, stderr) = Process::output(&env, &["verify", "--json"], &keys).await;
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stdout} {stderr}"));
    assert_eq!(code, 0, "the gap is accepted: {report:#}");
    assert_eq!(report["dropped_days"], serde_json::json!([d1, d2]));
    assert_eq!(report["rows"], 32 + 20);
    let (_, list, _) = Process::output(&env, &["partitions", "list"], &keys).await;
    assert!(
        list.contains(&format!("dropped {d2}")) && list.contains("signed"),
        "{list}"
    );

    // Today cannot be archived; a partition that does not verify is not dropped.
    let (code, _, err) = Process::output(
        &env,
        &["partitions", "archive", "--day", &today.to_string()],
        &keys,
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("not over yet"), "{err}");
    let mut tx = env.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("bypass");
    sqlx::query(
        "UPDATE auditline.events SET user_id = 'mallory' \
         WHERE event_id = (SELECT event_id FROM auditline.events WHERE occurred_at::date = $1 LIMIT 1)",
    )
    .bind(d3)
    .execute(&mut *tx)
    .await
    .expect("tamper");
    tx.commit().await.expect("commit");
    let (code, _, err) = Process::output(
        &env,
        &["partitions", "drop", "--day", &d3.to_string()],
        &keys,
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("does not verify"), "{err}");
    assert!(partition_exists(&env, d3).await, "nothing was dropped");
    assert_eq!(rows_on(&env, d3).await, 32);

    // Someone with database access drops a day and forges the record: refused.
    let mut tx = env.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("bypass");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE auditline.events_{}; \
         INSERT INTO auditline.partition_drops (day, rows, archive, archive_sha256) \
         VALUES ('{d3}', 32, 'nowhere', 'none')",
        d3.format("%Y%m%d")
    )))
    .execute(&mut *tx)
    .await
    .expect("forge");
    tx.commit().await.expect("commit");
    let (code, stdout, _) = Process::output(&env, &["verify", "--json"], &keys).await;
    let report: Value = serde_json::from_str(&stdout).expect("report");
    assert_eq!(code, 1);
    let kinds: Vec<&str> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"bad_drop_record"), "{report:#}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "removed_row").count(),
        32,
        "the forged drop hides nothing: {report:#}"
    );
    env.cleanup().await;
}
