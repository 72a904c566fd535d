//! A full disk: checkpoints and export files are written whole or not at
//! all, and a failure is an error (metric, job state), never an empty file
//! reported as success. The export directory is a small real tmpfs
//! (mounting one needs root, as the test machines run).

use crate::export::send_json;
use crate::helpers::{InProcessAdmin, InProcessWriter, TestEnv, events, http_get, metric};
use auditline_shared::auth::Scope;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A 1 MiB tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "auditline-test"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (the full-disk test runs as root)",
            dir.display()
        );
        Self(dir)
    }

    /// Writes a filler file until the file system refuses more.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.0.join("filler")).expect("filler");
        let chunk = vec![0u8; 4096];
        while filler.write_all(&chunk).is_ok() {}
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).expect("remove filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn empty_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.metadata().is_ok_and(|m| m.len() == 0))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[actix_web::test]
async fn a_full_disk_fails_checkpoints_and_exports_loudly_and_leaves_no_empty_file() {
    let mut env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("auditline-test-{}/small-disk", env.id));
    let disk = SmallDisk::mount(dir.clone());
    env.settings.export_dir = dir.to_string_lossy().into_owned();

    let writer = InProcessWriter::start(&env).await;
    let stored = events(50);
    env.publisher()
        .await
        .publish_batch(&stored)
        .await
        .expect("confirmed");
    env.wait_for_rows(50, Duration::from_secs(30)).await;
    writer.stop().await;

    let admin = InProcessAdmin::start(&env).await;
    let latest = dir.join("checkpoint-latest.json");
    let first = crate::helpers::wait_until(Duration::from_secs(15), || async {
        std::fs::metadata(&latest).is_ok_and(|m| m.len() > 0)
    })
    .await;
    assert!(first, "no checkpoint was written");

    disk.fill();
    let before = std::fs::read(&latest).expect("latest");
    let failed = crate::helpers::wait_until(Duration::from_secs(20), || async {
        let (_, metrics) = http_get(admin.port, "/metrics").await;
        metric(&metrics, "auditline_checkpoint_failures_total") >= 2.0
    })
    .await;
    assert!(
        failed,
        "checkpoints on a full disk are not counted as failures"
    );
    let after = std::fs::read(&latest).expect("latest");
    assert!(
        after == before || serde_json::from_slice::<serde_json::Value>(&after).is_ok(),
        "the latest checkpoint was damaged"
    );
    assert_eq!(empty_files(&dir), Vec::<String>::new());

    let token = env.named_token("exporter", &[Scope::Export]).await;
    let body = json!({"format": "ndjson", "compression": "none", "filters": {}});
    let (status, job) = send_json(
        admin.port,
        "POST",
        &token,
        "/admin/audit/exports",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let ended = crate::helpers::wait_until(Duration::from_secs(30), || {
        let (port, token, id) = (admin.port, token.clone(), id.clone());
        async move {
            let (_, j) = send_json(
                port,
                "GET",
                &token,
                &format!("/admin/audit/exports/{id}"),
                b"",
            )
            .await;
            matches!(j["state"].as_str(), Some("done" | "failed"))
        }
    })
    .await;
    assert!(ended, "the export job did not end");
    let (_, job) = send_json(
        admin.port,
        "GET",
        &token,
        &format!("/admin/audit/exports/{id}"),
        b"",
    )
    .await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left")),
        "the job says why: {job}"
    );
    let (_, metrics) = http_get(admin.port, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "auditline_export_jobs_finished_total{outcome=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(empty_files(&dir), Vec::<String>::new());
    assert!(
        !std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("manifest")),
        "no manifest describes a file that was not written"
    );

    // Space again: checkpoints resume.
    disk.free();
    let resumed = crate::helpers::wait_until(Duration::from_secs(15), || async {
        std::fs::read(&latest).is_ok_and(|now| now != before)
    })
    .await;
    assert!(resumed, "checkpoints did not resume");
    admin.stop().await;
    drop(disk);
    env.cleanup().await;
}
