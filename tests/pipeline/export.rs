//! Exports against the known event set: every format, plain and zstd, decoded
//! and compared with what the search returns for the same filters; formula
//! cells neutralized in CSV; scope and parameter refusals.

use std::time::Duration;

use chrono::DurationRound;

use auditline_shared::{AuditEvent, auth::Scope};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    admin::{enc, known_events, rfc, stored_set},
    helpers::{InProcess, TestEnv, header, http_raw},
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

/// POST with a bearer token and a JSON body; returns status and JSON answer.
pub(crate) async fn send_json(
    port: u16,
    method: &str,
    token: &str,
    path: &str,
    body: &[u8],
) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, _, body) = http_raw(
        port,
        method,
        path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await;
    let body = body.unwrap_or_default();
    let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "JSON expected from {method} {path}, got {status}: {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, json)
}

/// Creates an export schedule; returns it.
async fn create_schedule(port: u16, token: &str, body: &Value) -> Value {
    let (status, schedule) = send_json(
        port,
        "POST",
        token,
        "/admin/audit/export-schedules",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{schedule}");
    schedule
}

/// Polls a job until it is `done` (or fails the test on `failed`).
async fn wait_done(port: u16, token: &str, id: &str, timeout: Duration) -> Value {
    let start = std::time::Instant::now();
    loop {
        let (status, job) = send_json(
            port,
            "GET",
            token,
            &format!("/admin/audit/exports/{id}"),
            b"",
        )
        .await;
        assert_eq!(status, 200, "{job}");
        match job["state"].as_str() {
            Some("done") => return job,
            Some("failed" | "cancelled" | "expired") => panic!("job ended badly: {job}"),
            _ => {}
        }
        assert!(
            start.elapsed() < timeout,
            "job not done in {timeout:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The export directory's files, but the seal checkpoints the admin service
/// writes there too.
fn export_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with("checkpoint-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks that the export directory holds one file and its manifest, nothing
/// partial, and returns the manifest.
fn only_file_and_manifest(dir: &std::path::Path) -> Value {
    let names = export_files(dir);
    assert_eq!(
        names.len(),
        2,
        "the file and its manifest, nothing partial: {names:?}"
    );
    let manifest_name = names
        .iter()
        .find(|n| n.ends_with(".manifest.json"))
        .expect("manifest");
    serde_json::from_slice(&std::fs::read(dir.join(manifest_name)).expect("read")).expect("JSON")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[actix_web::test]
async fn export_jobs_write_a_file_equal_to_the_streamed_export_with_a_true_manifest() {
    let env = TestEnv::new().await;
    let set = stored_set(&env).await;
    let port = set.admin.port;
    let token = env.named_token("job-owner", &[Scope::Export]).await;
    let filters = json!({
        "from": set.from.to_rfc3339(),
        "to": set.to.to_rfc3339(),
        "service": "web",
        "status": ["5xx", "404"],
    });
    let body = json!({"format": "ndjson", "compression": "zstd", "filters": filters});
    let (status, job) = send_json(
        port,
        "POST",
        &token,
        "/admin/audit/exports",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["requested_by"], "job-owner");
    assert_eq!(job["filters"]["status"], json!(["5xx", "404"]));
    let id = job["id"].as_str().expect("id").to_owned();
    let job = wait_done(port, &token, &id, Duration::from_secs(60)).await;
    assert_eq!(job["progress"], 1.0);
    // The job shows on the admin's /metrics.
    let (status, metrics) = crate::helpers::http_get(port, "/metrics").await;
    assert_eq!(status, 200);
    let value = |series: &str| crate::helpers::metric(&metrics, series);
    assert_eq!(
        value("auditline_export_jobs_finished_total{outcome=\"done\"}"),
        1.0
    );
    assert_eq!(
        value("auditline_export_rows_total"),
        job["rows"].as_f64().expect("rows")
    );
    assert_eq!(
        value("auditline_export_bytes_total"),
        job["bytes"].as_f64().expect("bytes")
    );
    assert_eq!(value("auditline_export_duration_seconds_count"), 1.0);
    let (status, headers, file) = http_raw(
        port,
        "GET",
        job["download"].as_str().expect("download link"),
        &[("Authorization", format!("Bearer {token}").as_str())],
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), "application/zstd");
    let file = file.expect("whole file");
    assert_eq!(job["bytes"], file.len() as u64);
    assert_eq!(job["sha256"], sha256_hex(&file));
    let query = format!(
        "from={}&to={}&service=web&status=5xx&status=404&format=ndjson",
        rfc(set.from),
        rfc(set.to)
    );
    let (_, _, streamed) = get_export(&set.admin, &token, &query).await;
    let decoded = zstd::decode_all(file.as_slice()).expect("zstd");
    assert_eq!(
        decoded,
        streamed.expect("whole stream"),
        "the job's file equals the streamed export"
    );
    let expected = set
        .events
        .iter()
        .filter(|e| e.service == "web" && e.status_code.is_some_and(|s| s >= 500 || s == 404))
        .count();
    assert!(expected > 0);
    assert_eq!(job["rows"], expected as u64);

    // The manifest beside the file tells the same.
    let dir = std::path::Path::new(&env.settings.export_dir);
    let manifest = only_file_and_manifest(dir);
    assert_eq!(manifest["rows"], expected as u64);
    assert_eq!(manifest["sha256"], sha256_hex(&file));
    assert_eq!(manifest["bytes"], file.len() as u64);
    assert_eq!(manifest["format"], "ndjson");
    assert_eq!(manifest["filters"]["service"], "web");
    // It carries the newest checkpoint of the seal chains.
    let chains = manifest["checkpoint"]["chains"]
        .as_array()
        .expect("checkpoint");
    assert!(!chains.is_empty(), "{manifest:#}");
    let first: Value = serde_json::from_slice(decoded.split(|b| *b == b'\n').next().expect("line"))
        .expect("event");
    assert_eq!(manifest["first_event"]["event_id"], first["event_id"]);

    // Listed; deleting a finished job deletes its file; it can no longer be downloaded.
    let (status, list) =
        send_json(port, "GET", &token, "/admin/audit/exports?state=done", b"").await;
    assert_eq!(status, 200);
    assert!(
        list["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .any(|j| j["id"] == id.as_str())
    );
    let (status, deleted) = send_json(
        port,
        "DELETE",
        &token,
        &format!("/admin/audit/exports/{id}"),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(deleted["state"], "expired");
    assert_eq!(export_files(dir).len(), 0, "file and manifest removed");
    let (status, refusal) = send_json(
        port,
        "GET",
        &token,
        &format!("/admin/audit/exports/{id}/download"),
        b"",
    )
    .await;
    assert_eq!(status, 409, "{refusal}");

    // Bad requests name what is wrong; nothing is queued.
    for (body, field) in [
        (r#"{"format": "xlsx"}"#.to_owned(), "format"),
        (r#"{"compression": "gzip"}"#.to_owned(), "compression"),
        (
            r#"{"filters": {"status": "9xx"}}"#.to_owned(),
            "filters.status",
        ),
        (r#"{"filters": {"limit": 5}}"#.to_owned(), "filters.limit"),
        (
            r#"{"filters": {"user_id": {"a": 1}}}"#.to_owned(),
            "filters.user_id",
        ),
        (r#"{"filters": [], "x": 1}"#.to_owned(), "filters"),
        (r#"{"destination": "s3"}"#.to_owned(), "destination"),
        ("{not json".to_owned(), "$"),
        // serde would read a struct from an array of its fields.
        ("[null, null]".to_owned(), "$"),
        (
            r#"{"filters": {"success": "yes"}}"#.to_owned(),
            "filters.success",
        ),
        // null is not "absent": leave the field out instead.
        (r#"{"format": null}"#.to_owned(), "format"),
        (r#"{"filters": null}"#.to_owned(), "filters"),
    ] {
        let (status, error) = send_json(
            port,
            "POST",
            &token,
            "/admin/audit/exports",
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(
            error["error"]["details"][0]["field"], field,
            "{body}: {error}"
        );
    }
    let (_, list) = send_json(port, "GET", &token, "/admin/audit/exports", b"").await;
    assert_eq!(
        list["jobs"].as_array().map(Vec::len),
        Some(1),
        "only the first job exists"
    );
    let reader = env.named_token("reader", &[Scope::Read]).await;
    let (status, _) = send_json(port, "POST", &reader, "/admin/audit/exports", b"{}").await;
    assert_eq!(status, 403, "export jobs need the export scope");
    set.stop().await;
    env.cleanup().await;
}

/// Whether a service listens on `port` and answers `/healthz`.
async fn answers(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
        && crate::helpers::http_get(port, "/healthz").await.0 == 200
}

#[actix_web::test]
async fn a_job_whose_admin_was_killed_is_finished_by_the_next_one() {
    a_job_cut_short_is_finished_by_the_next_admin("KILL").await;
}

#[actix_web::test]
async fn a_job_whose_admin_stops_is_handed_back_and_finished_by_the_next_one() {
    a_job_cut_short_is_finished_by_the_next_admin("TERM").await;
}

/// An admin running a long export is killed (SIGKILL: the job stays
/// `running` until its heartbeat is old) or stopped (SIGTERM: it hands the
/// job back, `queued`, before it exits); the next admin finishes it, whole.
async fn a_job_cut_short_is_finished_by_the_next_admin(signal: &str) {
    let env = TestEnv::new().await;
    // Enough rows that the export takes a few seconds.
    let rows: i64 = 200_000;
    sqlx::query("SELECT auditline.ensure_partition((now() - interval '2 hours')::date)")
        .execute(&env.pool)
        .await
        .expect("partition");
    sqlx::query(
        "INSERT INTO auditline.events (event_id, occurred_at, received_at, batch_id, service, \
         session_id, user_id, action_type, endpoint, http_method, status_code, success, metadata) \
         SELECT gen_random_uuid(), now() - interval '2 hours' + n * interval '10 ms', now(), \
                gen_random_uuid(), 'bulk', 's-' || (n % 97), 'user-' || (n % 1000), 'file', \
                '/files/' || n, 'GET', 200, true, jsonb_build_object('n', n) \
         FROM generate_series(1, $1) AS n",
    )
    .bind(rows)
    .execute(&env.pool)
    .await
    .expect("bulk rows");
    let token = env.named_token("night-shift", &[Scope::Export]).await;
    let first_port = crate::helpers::free_port();
    let mut first = crate::helpers::Process::spawn_with(
        &env,
        &["admin"],
        &[("AUDITLINE_ADMIN_LISTEN", &format!("127.0.0.1:{first_port}"))],
    );
    assert!(
        crate::helpers::wait_until(Duration::from_secs(30), || async {
            answers(first_port).await
        })
        .await,
        "the first admin came up"
    );
    let body = json!({
        "format": "csv",
        "compression": "zstd",
        "filters": {"service": "bulk", "from": (chrono::Utc::now() - chrono::TimeDelta::hours(3)).to_rfc3339()},
    });
    let (status, job) = send_json(
        first_port,
        "POST",
        &token,
        "/admin/audit/exports",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id: Uuid = job["id"].as_str().expect("id").parse().expect("uuid");
    let running = crate::helpers::wait_until(Duration::from_secs(30), || async {
        let state: String =
            sqlx::query_scalar("SELECT state FROM auditline.export_jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .expect("job row");
        state == "running"
    })
    .await;
    assert!(running, "the job was seen running");
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal(signal);
    let exit = first.wait(Duration::from_secs(40)).await;
    let (state, written): (String, i64) =
        sqlx::query_as("SELECT state, rows_written FROM auditline.export_jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .expect("job row");
    if signal == "KILL" {
        assert_eq!(exit, None, "killed by SIGKILL");
        assert_eq!(state, "running", "killed mid-job, not after it");
    } else {
        assert_eq!(exit, Some(0), "stopped cleanly by SIGTERM");
        assert_eq!(state, "queued", "handed back for the next instance");
    }
    assert!(written < rows, "cut short before the last row");

    let second_port = crate::helpers::free_port();
    let _second = crate::helpers::Process::spawn_with(
        &env,
        &["admin"],
        &[(
            "AUDITLINE_ADMIN_LISTEN",
            &format!("127.0.0.1:{second_port}"),
        )],
    );
    assert!(
        crate::helpers::wait_until(Duration::from_secs(30), || async {
            answers(second_port).await
        })
        .await,
        "the second admin came up"
    );
    let job = wait_done(
        second_port,
        &token,
        &id.to_string(),
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(job["rows"], rows);
    let (status, _, file) = http_raw(
        second_port,
        "GET",
        &format!("/admin/audit/exports/{id}/download"),
        &[("Authorization", format!("Bearer {token}").as_str())],
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let file = file.expect("whole file");
    let manifest = only_file_and_manifest(std::path::Path::new(&env.settings.export_dir));
    assert_eq!(
        manifest["sha256"],
        sha256_hex(&file),
        "the manifest's hash is the file's"
    );
    assert_eq!(manifest["rows"], rows);
    let csv = zstd::decode_all(file.as_slice()).expect("a whole zstd frame");
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let mut ids = std::collections::HashSet::new();
    for record in reader.records() {
        let record = record.expect("row");
        assert!(ids.insert(record[0].to_owned()), "no row twice");
    }
    assert_eq!(ids.len() as i64, rows, "every row once");
    env.cleanup().await;
}

#[actix_web::test]
async fn a_minutely_schedule_covers_every_minute_once_across_three_minutes_of_downtime() {
    let env = TestEnv::new().await;
    for day in ["now()", "now() + interval '1 day'"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT auditline.ensure_partition(({day})::date)"
        )))
        .execute(&env.pool)
        .await
        .expect("partition");
    }
    // An event every 5 seconds from 2 minutes ago to 13 minutes ahead.
    sqlx::query(
        "INSERT INTO auditline.events (event_id, occurred_at, received_at, batch_id, service, \
         session_id, action_type, endpoint, http_method, success) \
         SELECT gen_random_uuid(), date_trunc('minute', now()) - interval '2 minutes' \
                + n * interval '5 seconds', now(), gen_random_uuid(), 'minutely', 's', 'file', \
                '/files/' || n, 'GET', true \
         FROM generate_series(0, 179) AS n",
    )
    .execute(&env.pool)
    .await
    .expect("events");
    let token = env.named_token("scheduler", &[Scope::Export]).await;
    let admin = crate::helpers::InProcessAdmin::start(&env).await;
    for (body, field) in [
        (json!({"window": "previous_minute"}), "cron"),
        (
            json!({"cron": "61 * * * *", "window": "previous_minute"}),
            "cron",
        ),
        (
            json!({"cron": "* * * * *", "window": "last_week"}),
            "window",
        ),
        (
            json!({"cron": "* * * * *", "window": "previous_hour", "filters": {"from": "2026-01-01T00:00:00Z"}}),
            "filters.from",
        ),
        (
            json!({"cron": "* * * * *", "window": "previous_hour", "destination": "ftp"}),
            "destination",
        ),
    ] {
        let (status, error) = send_json(
            admin.port,
            "POST",
            &token,
            "/admin/audit/export-schedules",
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(
            error["error"]["details"][0]["field"], field,
            "{body}: {error}"
        );
    }
    let body = json!({
        "name": "minutely",
        "cron": "* * * * *",
        "window": "previous_minute",
        "format": "ndjson",
        "filters": {"service": "minutely"},
    });
    let schedule = create_schedule(admin.port, &token, &body).await;
    assert_eq!(schedule["window"], "previous_minute");
    let id: Uuid = schedule["id"].as_str().expect("id").parse().expect("uuid");
    // The schedule's clock is driven here rather than waited for: firing
    // reads only the time it is given and the schedule's row. `first` is the
    // first minute boundary after the schedule was created.
    let first: chrono::DateTime<chrono::Utc> = schedule["next_run_at"]
        .as_str()
        .expect("next_run_at")
        .parse()
        .expect("time");
    let minute = chrono::TimeDelta::minutes(1);
    let pending = |want_to: chrono::DateTime<chrono::Utc>| {
        let pool = env.pool.clone();
        async move {
            let (last_to, pending): (Option<chrono::DateTime<chrono::Utc>>, i64) = sqlx::query_as(
                "SELECT max(window_to), count(*) FILTER (WHERE state <> 'done') \
                     FROM auditline.export_jobs WHERE schedule_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("jobs");
            pending == 0 && last_to == Some(want_to)
        }
    };
    // Two minutes pass: the minute before `first` and the one after it.
    let queued = auditline_admin_api::workers::scheduler::fire_due(&env.pool, first + minute)
        .await
        .expect("fire");
    assert!(queued <= 2, "at most two minutes due: {queued}");
    assert!(
        crate::helpers::wait_until(Duration::from_secs(60), || pending(first + minute)).await,
        "two minutes exported"
    );
    admin.stop().await;
    // Three minutes of downtime: nothing fires until an instance is back.
    let stopped = first + minute;
    let restarted = first + minute * 4;
    // The stopped instance's background tasks still hold its spool in this
    // process; the new instance gets its own, as a restarted process would.
    let mut second = env.settings.clone();
    second.ingest.spool_dir.push_str("-second");
    let admin = crate::helpers::InProcessAdmin::start_with(second).await;
    auditline_admin_api::workers::scheduler::fire_due(&env.pool, restarted)
        .await
        .expect("fire");
    // (The running instance fires by the real clock too; whoever fires a
    // minute, it is queued once.)
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM auditline.export_jobs WHERE schedule_id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .expect("count");
    assert_eq!(queued, 5, "the three missed minutes are queued at once");
    assert_eq!(
        auditline_admin_api::workers::scheduler::fire_due(&env.pool, restarted)
            .await
            .expect("fire"),
        0,
        "firing again at the same time queues nothing"
    );
    assert!(
        crate::helpers::wait_until(Duration::from_secs(60), || pending(restarted)).await,
        "the missed minutes were caught up"
    );
    admin.stop().await;

    let jobs: Vec<(
        Uuid,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        i64,
    )> = sqlx::query_as(
        "SELECT id, window_from, window_to, rows_written FROM auditline.export_jobs \
             WHERE schedule_id = $1 ORDER BY window_from",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .expect("jobs");
    assert_eq!(
        jobs.len(),
        5,
        "2 minutes before the stop, 3 caught up after it: {jobs:?}"
    );
    let downtime_minutes = jobs
        .iter()
        .filter(|(_, from, to, _)| *from >= stopped && *to <= restarted)
        .count();
    assert_eq!(
        downtime_minutes, 3,
        "the minutes of the downtime have files"
    );
    let dir = std::path::Path::new(&env.settings.export_dir);
    for pair in jobs.windows(2) {
        assert_eq!(pair[0].2, pair[1].1, "no gap and no overlap between files");
    }
    for (job, from, to, rows) in &jobs {
        assert_eq!(
            *to - *from,
            chrono::TimeDelta::minutes(1),
            "one minute a file"
        );
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("export-{job}.ndjson.manifest.json")))
                .expect("manifest"),
        )
        .expect("JSON");
        let expected: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM auditline.events WHERE service = 'minutely' \
             AND occurred_at >= $1 AND occurred_at < $2",
        )
        .bind(from)
        .bind(to)
        .fetch_one(&env.pool)
        .await
        .expect("count");
        assert_eq!(manifest["rows"], expected, "{job}");
        assert_eq!(*rows, expected);
        assert_eq!(expected, 12, "an event every 5 seconds");
        let file = std::fs::read(dir.join(format!("export-{job}.ndjson"))).expect("file");
        assert_eq!(manifest["sha256"], sha256_hex(&file));
    }
    env.cleanup().await;
}

/// `n` events of service `bulk` straight into the events table (the pipeline
/// is tested elsewhere), spread over the hour before `to`, each with a long
/// metadata text so that a CSV of them spans several upload parts.
async fn insert_bulk(env: &TestEnv, n: i64, to: chrono::DateTime<chrono::Utc>) {
    sqlx::query(
        "INSERT INTO auditline.events (event_id, occurred_at, received_at, batch_id, service, \
         session_id, user_id, client_ip, action_type, endpoint, route, http_method, \
         request_size, response_size, response_time_ms, status_code, success, metadata) \
         SELECT gen_random_uuid(), $2 - interval '1 hour' + i * (interval '1 hour' / $1), \
                now(), '00000000-0000-0000-0000-000000000002', 'bulk', 'sess-' || (i % 97), \
                'user-' || (i % 13), '10.1.0.1', 'file', '/files/' || i, '/files/{id}', 'GET', \
                i, 2 * i, 1.5, 200, true, \
                jsonb_build_object('note', repeat(md5(i::text), 8), 'n', i) \
         FROM generate_series(0, $1 - 1) AS i",
    )
    .bind(n)
    .bind(to)
    .execute(&env.pool)
    .await
    .expect("bulk rows");
}

#[actix_web::test]
async fn an_s3_destination_gets_whole_files_and_manifests_from_jobs_and_schedules() {
    use crate::helpers::{InProcessAdmin, TestBucket};
    let env = TestEnv::new().await;
    let bucket = TestBucket::create(&env).await;
    let mut settings = env.settings.clone();
    settings
        .exports
        .destinations
        .insert("archive".into(), bucket.destination("audit/exports"));
    let mut nowhere = bucket.destination("");
    nowhere.bucket = format!("{}-missing", bucket.name);
    settings
        .exports
        .destinations
        .insert("nowhere".into(), nowhere);
    let to = chrono::Utc::now()
        .duration_trunc(chrono::TimeDelta::minutes(1))
        .expect("minute");
    let rows = 40_000;
    insert_bulk(&env, rows, to).await;
    let admin = InProcessAdmin::start_with(settings).await;
    let token = env.named_token("archivist", &[Scope::Export]).await;
    let from = to - chrono::TimeDelta::hours(1);
    let filters = json!({"from": from.to_rfc3339(), "to": to.to_rfc3339(), "service": "bulk"});

    // A job into the bucket: one data object and its manifest, nothing else.
    let body = json!({"format": "csv", "destination": "archive", "filters": filters});
    let (status, job) = send_json(
        admin.port,
        "POST",
        &token,
        "/admin/audit/exports",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["destination"], "archive");
    let id = job["id"].as_str().expect("id").to_owned();
    let job = wait_done(admin.port, &token, &id, Duration::from_secs(120)).await;
    assert_eq!(job["rows"], rows);
    let key = format!("audit/exports/export-{id}.csv");
    assert_eq!(
        bucket.keys().await,
        vec![key.clone(), format!("{key}.manifest.json")]
    );
    assert!(
        !bucket.open_uploads().await.contains("<Upload>"),
        "no multipart upload left open"
    );
    let file = bucket.get(&key).await;
    assert!(
        file.len() > 16 * 1024 * 1024,
        "a file of several 8 MiB parts: {} bytes",
        file.len()
    );
    let manifest: Value =
        serde_json::from_slice(&bucket.get(&format!("{key}.manifest.json")).await).expect("JSON");
    assert_eq!(manifest["rows"], rows);
    assert_eq!(manifest["bytes"], file.len() as u64);
    assert_eq!(manifest["sha256"], sha256_hex(&file));
    assert_eq!(manifest["sha256"], job["sha256"]);
    assert_eq!(manifest["destination"], "archive");
    assert_eq!(manifest["window"]["to"], json!(to));
    let query = format!("from={}&to={}&service=bulk&format=csv", rfc(from), rfc(to));
    let (status, _, streamed) = get_export(&admin, &token, &query).await;
    assert_eq!(status, 200);
    assert!(
        streamed.as_deref() == Some(file.as_slice()),
        "the object equals the streamed export of the same filters"
    );
    assert_eq!(csv_as_events(&file).len() as i64, rows);
    // Downloading through the API streams the object from the bucket.
    let (status, headers, downloaded) = http_raw(
        admin.port,
        "GET",
        job["download"].as_str().expect("download link"),
        &[("Authorization", format!("Bearer {token}").as_str())],
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), "text/csv; charset=utf-8");
    assert!(downloaded.as_deref() == Some(file.as_slice()));
    let local = std::path::Path::new(&env.settings.export_dir);
    assert!(
        export_files(local).is_empty(),
        "nothing landed in the export directory"
    );
    // Deleting the finished job deletes its objects.
    let (status, deleted) = send_json(
        admin.port,
        "DELETE",
        &token,
        &format!("/admin/audit/exports/{id}"),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{deleted}");
    assert!(bucket.keys().await.is_empty(), "objects removed");

    // A bucket that does not exist: the job fails and says where.
    let body = json!({"destination": "nowhere", "filters": filters});
    let (status, job) = send_json(
        admin.port,
        "POST",
        &token,
        "/admin/audit/exports",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let failed = crate::helpers::wait_until(Duration::from_secs(60), || async {
        let (_, job) = send_json(
            admin.port,
            "GET",
            &token,
            &format!("/admin/audit/exports/{}", job["id"].as_str().expect("id")),
            b"",
        )
        .await;
        job["state"] == "failed"
            && job["error"]
                .as_str()
                .is_some_and(|e| e.contains("\"nowhere\""))
    })
    .await;
    assert!(
        failed,
        "the job into a missing bucket failed, naming its destination"
    );
    // An unknown destination is refused, listing the known ones.
    for path in ["/admin/audit/exports", "/admin/audit/export-schedules"] {
        let body = json!({"cron": "* * * * *", "window": "previous_hour", "destination": "ftp"});
        let body = if path.ends_with("exports") {
            json!({"destination": "ftp"})
        } else {
            body
        };
        let (status, error) = send_json(
            admin.port,
            "POST",
            &token,
            path,
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{path}: {error}");
        assert_eq!(error["error"]["details"][0]["field"], "destination");
        let message = error["error"]["details"][0]["message"]
            .as_str()
            .unwrap_or("");
        assert!(message.contains("\"archive\""), "{message}");
    }

    // A schedule lands its runs in the bucket too, kept (they do not expire).
    let body = json!({
        "cron": "* * * * *",
        "window": "previous_minute",
        "format": "ndjson",
        "compression": "zstd",
        "destination": "archive",
        "filters": {"service": "bulk"},
    });
    let schedule = create_schedule(admin.port, &token, &body).await;
    assert_eq!(schedule["destination"], "archive");
    let schedule_id: Uuid = schedule["id"].as_str().expect("id").parse().expect("uuid");
    let started = std::time::Instant::now();
    let (run_id, expires_at) = loop {
        let run: Option<(Uuid, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
            "SELECT id, expires_at FROM auditline.export_jobs \
             WHERE schedule_id = $1 AND state = 'done' LIMIT 1",
        )
        .bind(schedule_id)
        .fetch_optional(&env.pool)
        .await
        .expect("jobs");
        if let Some(run) = run {
            break run;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the schedule ran within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(expires_at, None, "scheduled exports are kept");
    let key = format!("audit/exports/export-{run_id}.ndjson.zst");
    let file = bucket.get(&key).await;
    let manifest: Value =
        serde_json::from_slice(&bucket.get(&format!("{key}.manifest.json")).await).expect("JSON");
    assert_eq!(manifest["sha256"], sha256_hex(&file));
    assert_eq!(manifest["schedule_id"], json!(schedule_id));
    let lines = zstd::decode_all(file.as_slice())
        .expect("zstd")
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(manifest["rows"], lines as u64);
    admin.stop().await;
    env.cleanup().await;
}

/// Jobs and schedules stored while filters were kept as query strings keep
/// their filters when the migration turns them into JSON: the same values,
/// typed, repeated names as arrays, escapes decoded.
#[actix_web::test]
async fn filters_stored_as_query_strings_survive_the_move_to_json() {
    let env = TestEnv::migrated_to(Some(20261203000013)).await;
    // As the service wrote them (form encoding): a space, an escaped `+`,
    // `&`, `=` and `%`, non-ASCII text, repeated names, an offset time.
    let query = "service=web+site&status=5xx&status=404&success=false&min_response_time_ms=2.5\
                 &q=%C3%9Cn%C3%AFcode%2B%26%3D%25&order=desc&from=2026-12-03T10%3A00%3A00%2B01%3A00";
    let job = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO auditline.export_jobs (id, state, query, format, compression, window_from, \
         window_to, requested_by) VALUES ($1, 'cancelled', $2, 'csv', 'none', now(), now(), 'old')",
    )
    .bind(job)
    .bind(query)
    .execute(&env.pool)
    .await
    .expect("old job");
    let schedule = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO auditline.export_schedules (id, name, cron, window_unit, query, format, \
         compression, created_by, next_run_at) \
         VALUES ($1, 'old', '0 0 1 1 *', 'day', 'user_id=alice&user_id=bob', 'csv', 'none', \
                 'old', now() + interval '300 days')",
    )
    .bind(schedule)
    .execute(&env.pool)
    .await
    .expect("old schedule");
    auditline_shared::db::migrate(&env.pool)
        .await
        .expect("the migration runs on the old rows");

    let admin = crate::helpers::InProcessAdmin::start(&env).await;
    let token = env.named_token("auditor", &[Scope::Admin]).await;
    let (status, shown) = admin
        .get_json(Some(&token), &format!("/admin/audit/exports/{job}"))
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        shown["filters"],
        json!({
            "service": "web site", "status": ["5xx", "404"], "success": false,
            "min_response_time_ms": 2.5, "q": "Ünïcode+&=%", "order": "desc",
            "from": "2026-12-03T10:00:00+01:00",
        }),
        "the stored text, decoded and typed"
    );
    let (status, shown) = admin
        .get_json(
            Some(&token),
            &format!("/admin/audit/export-schedules/{schedule}"),
        )
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["filters"], json!({"user_id": ["alice", "bob"]}));
    admin.stop().await;
    env.cleanup().await;
}
