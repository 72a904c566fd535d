//! JSON is read strictly at every boundary: duplicate keys are refused (not
//! read as their last value) and numbers are stored exactly or refused.

use crate::helpers::{InProcessAdmin, InProcessIngest, InProcessWriter, TestEnv, events};
use auditline_shared::auth::Scope;
use serde_json::{Value, json};
use std::time::Duration;

/// An event's JSON with `pair` added after its own fields (repeating a key).
fn appended(event: &auditline_shared::AuditEvent, pair: &str) -> Vec<u8> {
    let mut json = event.to_json();
    json.pop();
    json.extend_from_slice(format!(",{pair}}}").as_bytes());
    json
}

/// An event's JSON with its (null) resource usage written as `usage`.
fn with_usage(event: &auditline_shared::AuditEvent, usage: &str) -> Vec<u8> {
    let json = String::from_utf8(event.to_json()).expect("utf-8");
    assert!(json.contains(r#""resource_usage":null"#), "{json}");
    json.replace(
        r#""resource_usage":null"#,
        &format!(r#""resource_usage":{usage}"#),
    )
    .into_bytes()
}

#[actix_web::test]
async fn broker_messages_with_duplicate_keys_or_inexact_numbers_are_dead_lettered() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let mut good = events(6);
    for event in &mut good {
        event.success = true;
    }
    let mut ndjson = good[2].to_json();
    ndjson.push(b'\n');
    ndjson.extend(with_usage(&good[3], r#"{"a":1,"a":2}"#));
    ndjson.push(b'\n');
    ndjson.extend(good[4].to_json());
    env.publish_raw(&[
        ("application/json", good[0].to_json()),
        ("application/json", appended(&good[1], r#""success":false"#)),
        ("application/x-ndjson", ndjson),
        (
            "application/json",
            with_usage(&good[5], r#"{"n":123456789012345678901234567890}"#),
        ),
    ])
    .await;
    env.wait_for_rows(3, Duration::from_secs(30)).await;
    let dead = env.wait_dead_letters(3).await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, r)| r.clone().expect("reason header"))
        .collect();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("success") && r.contains("duplicate key")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("line 2") && r.contains("duplicate key \"a\"")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("resource_usage") && r.contains("64-bit range")),
        "{reasons:?}"
    );
    let mut ids: Vec<_> = [0, 2, 4].iter().map(|&i| good[i].event_id).collect();
    ids.sort();
    env.assert_exactly(&ids).await;
    writer.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn metadata_numbers_come_back_exactly_as_sent() {
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let ingest = InProcessIngest::start_with(env.settings.clone()).await;
    let admin = InProcessAdmin::start(&env).await;
    let publish = env.token(&[Scope::Publish], Some("shop")).await;
    let read = env.token(&[Scope::Read], None).await;
    let sent = r#"{"big":9007199254740993,"max":18446744073709551615,"min":-9223372036854775808,"tenth":0.1,"ms":158.25,"sci":1e3}"#;
    let body = format!(
        r#"{{"occurred_at":"{}","session_id":"s","user_id":"exact","action_type":"data","endpoint":"/n","http_method":"POST","success":true,"metadata":{sent}}}"#,
        chrono::Utc::now().to_rfc3339()
    );
    let (status, _, answer) = ingest
        .post(Some(&publish), "application/json", body.as_bytes())
        .await;
    assert_eq!(status, 202, "{answer}");
    // Duplicate keys at the gateway: refused, naming the key, whichever the last value.
    let twice = body.replacen(r#""success":true"#, r#""success":true,"success":false"#, 1);
    let (status, _, answer) = ingest
        .post(Some(&publish), "application/json", twice.as_bytes())
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_events");
    assert_eq!(
        answer["error"]["details"][0]["field"], "success",
        "{answer}"
    );
    let inexact = body.replace("9007199254740993,", "9007199254740993.0,");
    let (status, _, answer) = ingest
        .post(Some(&publish), "application/json", inexact.as_bytes())
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["error"]["details"][0]["field"], "metadata",
        "{answer}"
    );

    env.wait_for_rows(1, Duration::from_secs(30)).await;
    let (status, _, text) = crate::helpers::http(
        admin.port,
        "GET",
        "/admin/audit/logs?user_id=exact",
        &[("Authorization", &format!("Bearer {read}"))],
        &[],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // As text: a JSON reader of the answer could round it again.
    assert!(text.contains(r#""big":9007199254740993"#), "{text}");
    assert!(text.contains(r#""max":18446744073709551615"#), "{text}");
    assert!(text.contains(r#""min":-9223372036854775808"#), "{text}");
    let found: Value = serde_json::from_str(&text).expect("json");
    let metadata = &found["events"][0]["metadata"];
    assert_eq!(metadata["big"].as_u64(), Some(9_007_199_254_740_993));
    assert_eq!(metadata["tenth"], json!(0.1));
    assert_eq!(metadata["ms"], json!(158.25));
    assert_eq!(metadata["sci"].as_f64(), Some(1000.0));
    let stored: String = sqlx::query_scalar(
        "SELECT (metadata->'big')::text FROM auditline.events WHERE user_id = 'exact'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("stored");
    assert_eq!(stored, "9007199254740993");
    admin.stop().await;
    ingest.stop().await;
    writer.stop().await;
    env.cleanup().await;
}
