//! Least privilege: the writer runs as a member of `auditline_writer` (INSERT
//! and SELECT on events, nothing else), the admin service as a member of
//! `auditline_reader`; neither can change a stored row.

use crate::helpers::{InProcessAdmin, InProcessWriter, TestEnv, event_at};
use auditline_shared::{auth::Scope, settings::SecretUrl};
use chrono::{Duration as Days, Utc};
use sqlx::PgPool;
use std::time::Duration;

/// The SQLSTATE of `sql` run as the pool's role; `None` when it succeeded.
async fn refusal(pool: &PgPool, sql: &str) -> Option<String> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
    {
        Ok(_) => None,
        Err(sqlx::Error::Database(db)) => {
            assert!(
                db.message().contains("permission denied")
                    || db.message().contains("must be owner"),
                "refused by privileges, not by a trigger: {sql}: {}",
                db.message()
            );
            db.code().map(|c| c.into_owned())
        }
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[actix_web::test]
async fn the_writer_and_the_admin_run_as_least_privilege_roles() {
    let env = TestEnv::new().await;
    let writer_role = format!("auditline_test_w_{}", env.id);
    let reader_role = format!("auditline_test_r_{}", env.id);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {writer_role} LOGIN IN ROLE auditline_writer; \
         CREATE ROLE {reader_role} LOGIN IN ROLE auditline_reader"
    )))
    .execute(&env.pool)
    .await
    .expect("login roles");
    let url = |role: &str| format!("postgres://{role}@127.0.0.1:5432/{}", env.db_name);

    // The writer stores events, creating a partition for a back-filled day.
    let mut settings = env.settings.clone();
    settings.database_url = SecretUrl::new(url(&writer_role));
    let writer = InProcessWriter::start_with(settings).await;
    let old = Utc::now() - Days::days(40);
    let mut events: Vec<_> = (0..50).map(|i| event_at("tests", Utc::now(), i)).collect();
    events.extend((0..10).map(|i| event_at("tests", old, i)));
    env.publisher()
        .await
        .publish_batch(&events)
        .await
        .expect("confirmed");
    env.wait_for_rows(60, Duration::from_secs(30)).await;
    writer.stop().await;

    let as_writer = PgPool::connect(&url(&writer_role))
        .await
        .expect("writer login");
    for sql in [
        "DELETE FROM auditline.events",
        "UPDATE auditline.events SET user_id = 'x'",
        "TRUNCATE auditline.events",
        "DELETE FROM auditline.batches",
        "SET session_replication_role = replica",
        "DROP TABLE auditline.partition_drops",
        "SELECT * FROM auditline.tokens",
    ] {
        assert_eq!(
            refusal(&as_writer, sql).await.as_deref(),
            Some("42501"),
            "{sql}"
        );
    }
    as_writer.close().await;

    // The admin service searches and verifies as the reader.
    let mut settings = env.settings.clone();
    settings.database_url = SecretUrl::new(url(&reader_role));
    let admin = InProcessAdmin::start_with(settings).await;
    let token = env
        .named_token("auditor", &[Scope::Read, Scope::Admin])
        .await;
    let (status, body) = admin
        .get_json(Some(&token), "/admin/audit/logs?limit=100&service=tests")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(50));
    let (status, body) = admin.get_json(Some(&token), "/admin/audit/verify").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true, "{body:#}");
    assert_eq!(body["rows"], 60);
    admin.stop().await;

    let as_reader = PgPool::connect(&url(&reader_role))
        .await
        .expect("reader login");
    for sql in [
        "INSERT INTO auditline.events SELECT * FROM auditline.events LIMIT 1",
        "DELETE FROM auditline.events",
        "UPDATE auditline.tokens SET revoked_at = now()",
        "INSERT INTO auditline.batches SELECT * FROM auditline.batches LIMIT 1",
    ] {
        assert_eq!(
            refusal(&as_reader, sql).await.as_deref(),
            Some("42501"),
            "{sql}"
        );
    }
    as_reader.close().await;
    env.cleanup().await;
    let admin_pool = PgPool::connect(crate::helpers::ADMIN_URL)
        .await
        .expect("server");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP ROLE IF EXISTS {writer_role}; DROP ROLE IF EXISTS {reader_role}"
    )))
    .execute(&admin_pool)
    .await
    .expect("drop roles");
}
