//! Whole-system tests of the durable pipeline, against the real PostgreSQL and
//! RabbitMQ. Each test owns a database and a broker namespace.

mod admin;
mod bad_input;
mod dashboard;
mod drills;
mod export;
mod export_guard;
mod faults;
mod free_text;
mod full_disk;
mod helpers;
mod ingest;
mod integrity;
mod live;
mod metrics;
mod middleware;
mod privilege;
mod redaction;
mod retention;
mod storage;
mod strict;

/// The harness itself: a test that fails before its cleanup leaves nothing
/// behind. (Here, not in helpers.rs, which the drills binary shares: the
/// drill that restarts PostgreSQL would cut it.)
#[actix_web::test]
async fn a_test_env_dropped_without_cleanup_removes_its_database() {
    let env = helpers::TestEnv::new().await;
    let name = env.db_name.clone();
    let dir = std::env::temp_dir().join(format!("auditline-test-{}", env.id));
    std::fs::create_dir_all(&dir).expect("directory");
    drop(env);
    let admin = sqlx::PgPool::connect(helpers::ADMIN_URL)
        .await
        .expect("PostgreSQL");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await
            .expect("query");
    admin.close().await;
    assert!(!exists, "{name} is dropped");
    assert!(!dir.exists(), "its directory is removed");
}
