//! The dashboard as served: the page and its assets come from the admin
//! service itself, under a strict Content-Security-Policy, and name no other
//! origin.

use crate::helpers::{InProcessAdmin, TestEnv, header, http};

#[actix_web::test]
async fn the_dashboard_is_served_whole_from_the_admin_service_under_a_strict_policy() {
    let env = TestEnv::new().await;
    let admin = InProcessAdmin::start(&env).await;
    let (status, headers, page) = http(admin.port, "GET", "/admin/", &[], &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    let csp = header(&headers, "content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe"),
        "no unsafe-inline or unsafe-eval: {csp}"
    );
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    // No inline script or style for the policy to block.
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );

    let mut bodies = vec![page];
    for (asset, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
    ] {
        let path = format!("/admin/assets/{asset}");
        assert!(bodies[0].contains(&path), "the page loads {path}");
        let (status, headers, body) = http(admin.port, "GET", &path, &[], &[]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&headers, "content-type"), content_type);
        assert!(!header(&headers, "content-security-policy").is_empty());
        bodies.push(body);
    }
    for body in &bodies {
        // The SVG namespace is a name, never fetched.
        let body = body.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "an asset names another origin"
        );
    }
    // The token never goes into a URL: the script sends it as a header only.
    assert!(bodies[1].contains("Authorization: `Bearer ${token()}`"));
    assert!(!bodies[1].contains("token=") && !bodies[1].contains("access_token"));

    let (status, headers, _) = http(admin.port, "GET", "/admin", &[], &[]).await;
    assert_eq!(status, 308);
    assert_eq!(header(&headers, "location"), "/admin/");
    let (status, _, body) = http(admin.port, "GET", "/admin/assets/secrets.txt", &[], &[]).await;
    assert_eq!(status, 404, "{body}");
    admin.stop().await;
    env.cleanup().await;
}

#[actix_web::test]
async fn a_browser_signs_in_searches_pages_and_opens_an_event() {
    use crate::helpers::{InProcessWriter, event_at};
    use auditline_shared::auth::Scope;
    let env = TestEnv::new().await;
    let writer = InProcessWriter::start(&env).await;
    let admin = InProcessAdmin::start(&env).await;
    let ingest = crate::helpers::InProcessIngest::start_with(env.settings.clone()).await;
    let token = env
        .named_token("browser", &[Scope::Read, Scope::Export])
        .await;
    let publish_token = env.token(&[Scope::Publish], Some("web")).await;
    // 120 events of alice (three pages of 50) among 40 of bob.
    let start = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let events: Vec<_> = (0..160usize)
        .map(|i| {
            let mut e = event_at("web", start + chrono::TimeDelta::seconds(i as i64), i);
            e.user_id = Some(if i % 4 == 3 { "bob" } else { "alice" }.into());
            e
        })
        .collect();
    env.publisher()
        .await
        .publish_batch(&events)
        .await
        .expect("published");
    env.wait_for_rows(160, std::time::Duration::from_secs(30))
        .await;
    let mut alice: Vec<_> = events
        .iter()
        .filter(|e| e.user_id.as_deref() == Some("alice"))
        .map(|e| (e.occurred_at, e.event_id))
        .collect();
    alice.sort_unstable_by(|a, b| b.cmp(a));
    let expected: Vec<String> = alice.iter().map(|(_, id)| id.to_string()).collect();
    let screenshots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.mjs");
    let output = tokio::process::Command::new("node")
        .arg(script)
        .env("ADMIN", format!("http://127.0.0.1:{}", admin.port))
        .env("TOKEN", &token)
        .env("USER", "alice")
        .env("EXPECTED", expected.join(","))
        .env("SCREENSHOTS", &screenshots)
        .env("INGEST", format!("http://127.0.0.1:{}", ingest.port))
        .env("PUBLISH_TOKEN", &publish_token)
        .output()
        .await
        .expect("node (deploy/scripts/test.sh installs Chromium and playwright-core)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the browser test failed:\n{text}");
    assert!(text.contains("ok: paging forward shows exactly"), "{text}");
    println!("{text}screenshots: {}", screenshots.display());
    ingest.stop().await;
    admin.stop().await;
    writer.stop().await;
    env.cleanup().await;
}
