//! Credentials sent where they do not belong (a query string, a path) never
//! reach the audit trail: a reader cannot search them out and become admin.

use crate::helpers::{InProcessAdmin, InProcessWriter, TestEnv, http, wait_until};
use auditline_shared::auth::Scope;
use serde_json::Value;
use std::time::Duration;

#[actix_web::test]
async fn a_token_in_a_query_string_is_not_stored_and_a_reader_cannot_find_it() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let admin = InProcessAdmin::start(&env).await;
    let secret = env.named_token("root", &[Scope::Admin]).await;
    let read = env.named_token("snoop", &[Scope::Read]).await;
    let bearer = format!("Bearer {read}");
    let auth = [("Authorization", bearer.as_str())];

    // The attack: the admin's secret in the query string, no header.
    let (status, _, _) = http(
        admin.port,
        "GET",
        &format!("/admin/audit/logs?access_token={secret}"),
        &[],
        &[],
    )
    .await;
    assert_eq!(status, 401);
    // The same secret under a name no list knows, in a path, and echoed by
    // an error message.
    let (status, _, _) = http(
        admin.port,
        "GET",
        &format!("/admin/audit/logs?user_id={secret}"),
        &auth,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, _) = http(
        admin.port,
        "GET",
        &format!("/admin/audit/users/{secret}"),
        &auth,
        &[],
    )
    .await;
    let (status, _, error) = http(
        admin.port,
        "GET",
        &format!("/admin/audit/logs?from={secret}"),
        &auth,
        &[],
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        !error.contains(&secret),
        "the error echoes the secret: {error}"
    );
    // A stream ticket, redeemed (not as a websocket) with it in the query.
    let (status, _, body) =
        http(admin.port, "POST", "/admin/audit/stream/ticket", &auth, &[]).await;
    assert_eq!(status, 201, "{body}");
    let ticket = serde_json::from_str::<Value>(&body).expect("ticket")["ticket"]
        .as_str()
        .expect("ticket")
        .to_owned();
    let (_, _, _) = http(
        admin.port,
        "GET",
        &format!("/admin/audit/stream?ticket={ticket}"),
        &[],
        &[],
    )
    .await;

    let stored = wait_until(Duration::from_secs(30), || async {
        env.count().await.0 >= 6
    })
    .await;
    assert!(stored, "the admin requests were stored as events");
    let rows: Vec<String> = sqlx::query_scalar("SELECT e::text FROM auditline.events e")
        .fetch_all(&env.pool)
        .await
        .expect("rows");
    let secret_part = &secret[secret.rfind('_').expect("alt_<id>_<secret>") + 1..];
    for row in &rows {
        assert!(
            !row.contains(secret_part),
            "a stored event holds the secret: {row}"
        );
        assert!(
            !row.contains(&ticket),
            "a stored event holds the ticket: {row}"
        );
    }
    let attack: Value = sqlx::query_scalar(
        "SELECT jsonb_build_object('endpoint', endpoint, 'metadata', metadata) \
         FROM auditline.events WHERE status_code = 401 AND route = '/admin/audit/logs'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("the refused request is recorded");
    assert_eq!(
        attack["endpoint"], "/admin/audit/logs?access_token=[REDACTED]",
        "{attack}"
    );
    assert_eq!(attack["metadata"]["query"]["access_token"], "[REDACTED]");

    // What the attacker does next: search the trail for tokens.
    let (status, _, found) = http(
        admin.port,
        "GET",
        "/admin/audit/logs?q=alt_&limit=1000",
        &auth,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !found.contains(secret_part),
        "a reader found the secret: {found}"
    );

    admin.stop().await;
    writer.stop().await;
    env.cleanup().await;
}
