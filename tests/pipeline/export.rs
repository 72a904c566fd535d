//! Exports against the known event set: every format, plain and zstd, decoded
//! and compared with what the search returns for the same filters; formula
//! cells neutralized in CSV; scope and parameter refusals.

use std::time::Duration;

use auditline_shared::{AuditEvent, auth::Scope};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    admin::{enc, known_events, rfc, stored_set},
    helpers::{InProcess, TestEnv, http_raw},
};

/// Every event of a search, oldest first, as the search API renders them.
async fn search_all(admin: &InProcess, token: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/admin/audit/logs?{query}&order=asc&limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", enc(c)));
        }
        let (status, body) = admin.get_json(Some(token), &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        out.extend(body["events"].as_array().expect("events").iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// GET an export; returns status, headers and the whole body (None if cut short).
async fn get_export(
    admin: &InProcess,
    token: &str,
    query: &str,
) -> (u16, Vec<(String, String)>, Option<Vec<u8>>) {
    let auth = format!("Bearer {token}");
    http_raw(
        admin.port,
        "GET",
        &format!("/admin/audit/export?{query}"),
        &[("Authorization", auth.as_str())],
        &[],
    )
    .await
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// A CSV export's rows as JSON objects shaped like the search API's events.
fn csv_as_events(body: &[u8]) -> Vec<Value> {
    let mut reader = csv::Reader::from_reader(body);
    let names: Vec<String> = reader
        .headers()
        .expect("header row")
        .iter()
        .map(str::to_owned)
        .collect();
    reader
        .records()
        .map(|record| {
            let record = record.expect("RFC 4180 row");
            let mut event = serde_json::Map::new();
            for (name, cell) in names.iter().zip(record.iter()) {
                let value = match (name.as_str(), cell) {
                    (_, "") => Value::Null,
                    ("request_size" | "response_size" | "status_code", n) => {
                        json!(n.parse::<i64>().expect("integer cell"))
                    }
                    ("response_time_ms", n) => json!(n.parse::<f64>().expect("number cell")),
                    ("success", b) => json!(b == "true"),
                    ("metadata" | "resource_usage", text) => {
                        serde_json::from_str(text).expect("JSON text in the cell")
                    }
                    (_, text) => json!(text),
                };
                event.insert(name.clone(), value);
            }
            Value::Object(event)
        })
        .collect()
}

#[actix_web::test]
async fn every_format_plain_and_zstd_equals_the_search_for_the_same_filters() {
    let env = TestEnv::new().await;
    let set = stored_set(&env).await;
    let token = env
        .named_token("exporter", &[Scope::Read, Scope::Export])
        .await;
    let window = format!("from={}&to={}", rfc(set.from), rfc(set.to));
    let filters = [
        window.clone(),
        format!("{window}&service=web&status=5xx"),
        format!("{window}&q=needle-3&action_type=file&action_type=admin"),
        format!("{window}&user_id=nobody"),
    ];
    for filter in &filters {
        let expected = search_all(&set.admin, &token, filter).await;
        for format in ["csv", "json", "ndjson"] {
            for compression in ["none", "zstd"] {
                let query = format!("{filter}&format={format}&compression={compression}");
                let (status, headers, body) = get_export(&set.admin, &token, &query).await;
                assert_eq!(status, 200, "{query}");
                let body = body.unwrap_or_else(|| panic!("{query}: the body was cut short"));
                let disposition = header(&headers, "content-disposition");
                let suffix = if compression == "zstd" {
                    format!(".{format}.zst")
                } else {
                    format!(".{format}")
                };
                assert!(
                    disposition.starts_with("attachment") && disposition.contains(&suffix),
                    "{query}: {disposition}"
                );
                let body = if compression == "zstd" {
                    assert_eq!(header(&headers, "content-type"), "application/zstd");
                    zstd::decode_all(body.as_slice()).expect("a whole zstd frame")
                } else {
                    body
                };
                let got: Vec<Value> = match format {
                    "csv" => csv_as_events(&body),
                    "json" => serde_json::from_slice::<Vec<Value>>(&body).expect("one JSON array"),
                    _ => body
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(|l| serde_json::from_slice(l).expect("one event a line"))
                        .collect(),
                };
                assert_eq!(got.len(), expected.len(), "{query}: row count");
                assert_eq!(got, expected, "{query}: values");
            }
        }
    }
    // The unfiltered window holds exactly the known set.
    let everything = search_all(&set.admin, &token, &window).await;
    assert_eq!(everything.len(), set.events.len());
    set.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn formula_cells_are_neutralized_and_refusals_name_their_cause() {
    let env = TestEnv::new().await;
    let set = stored_set(&env).await;
    let (mut known, _, _) = known_events();
    let mut trap: AuditEvent = known.remove(0);
    trap.event_id = Uuid::now_v7();
    trap.occurred_at = set.from + chrono::TimeDelta::seconds(1);
    trap.endpoint = "=HYPERLINK(\"http://x\")".into();
    trap.session_id = "+cmd".into();
    trap.metadata = json!({"note": "=1+1"}).as_object().cloned();
    env.publisher()
        .await
        .publish(&trap)
        .await
        .expect("published");
    env.wait_for_rows(set.events.len() as i64 + 1, Duration::from_secs(30))
        .await;
    let token = env.named_token("exporter", &[Scope::Export]).await;
    let query = format!(
        "from={}&to={}&session_id=%2Bcmd&format=csv",
        rfc(set.from),
        rfc(set.to)
    );
    let (status, _, body) = get_export(&set.admin, &token, &query).await;
    assert_eq!(status, 200);
    let body = body.expect("whole body");
    let mut reader = csv::Reader::from_reader(body.as_slice());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][8], "'=HYPERLINK(\"http://x\")", "endpoint");
    assert_eq!(&rows[0][4], "'+cmd", "session_id");
    assert!(
        rows[0][17].starts_with('{'),
        "JSON cells start with a brace"
    );

    let reader_only = env.named_token("reader", &[Scope::Read]).await;
    let (status, _, body) = get_export(&set.admin, &reader_only, "format=csv").await;
    assert_eq!(status, 403);
    let body: Value = serde_json::from_slice(&body.expect("body")).expect("JSON error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("export")),
        "{body}"
    );
    for (query, parameter) in [
        ("format=xlsx", "format"),
        ("compression=gzip", "compression"),
        ("order=sideways", "order"),
        ("limit=5", "limit"),
        ("cursor=abc", "cursor"),
    ] {
        let (status, _, body) = get_export(&set.admin, &token, query).await;
        assert_eq!(status, 400, "{query}");
        let body: Value = serde_json::from_slice(&body.expect("body")).expect("JSON error");
        assert_eq!(
            body["error"]["details"][0]["parameter"], parameter,
            "{query}: {body}"
        );
    }
    set.stop().await;
    env.cleanup().await;
}
