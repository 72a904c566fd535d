//! `auditline demo-app`: a small actix-web service with file, code-execution,
//! admin and auth endpoints, audited by `AuditMiddleware`, so a running
//! installation shows real traffic end to end. `--traffic N` makes it call
//! itself N times a second.
//!
//! Authentication is pretend: the `x-demo-user` header names the user.

use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, HttpServer, dev::Service, web};
use anyhow::Context;
use auditline_client::{
    AuditConfig, AuditMiddleware, AuditResources, AuditUser, Publisher, spool::Spool,
};
use auditline_shared::Settings;
use rand::Rng;
use serde_json::json;
use std::{sync::Arc, time::Duration};

/// Options of `auditline demo-app`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// The service name on the demo's events.
    #[arg(long, default_value = "demo-app")]
    pub service: String,
    /// The demo's own spool directory.
    #[arg(long, default_value = "./var/spool-demo")]
    pub spool_dir: String,
    /// Requests per second the demo sends to itself (0: none).
    #[arg(long, default_value_t = 0)]
    pub traffic: u32,
    /// Serve without AuditMiddleware (the benchmark's baseline).
    #[arg(long)]
    pub no_audit: bool,
    /// How long the middleware gathers events before publishing, in ms.
    #[arg(long, default_value_t = 50)]
    pub linger_ms: u64,
    /// Events per published (zstd-compressed) message.
    #[arg(long, default_value_t = 5000)]
    pub events_per_message: usize,
}

/// The demo's routes (also used by the tests and the benchmark).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/files/{id}", web::get().to(get_file))
        .route("/files/{id}", web::put().to(put_file))
        .route("/files/{id}", web::delete().to(delete_file))
        .route("/code/run", web::post().to(run_code))
        .route("/admin/users/{id}/roles", web::post().to(grant_role))
        .route("/auth/login", web::post().to(login))
        .route("/auth/logout", web::post().to(logout))
        .route("/health", web::get().to(health));
}

/// The pretend authentication: `x-demo-user` becomes the audited user.
pub fn authenticate(req: &actix_web::dev::ServiceRequest) {
    if let Some(user) = req
        .headers()
        .get("x-demo-user")
        .and_then(|v| v.to_str().ok())
    {
        req.extensions_mut().insert(AuditUser(user.to_owned()));
    }
}

async fn get_file(path: web::Path<u64>) -> HttpResponse {
    let id = path.into_inner();
    if id == 0 {
        return HttpResponse::NotFound().json(json!({"error": "no such file"}));
    }
    HttpResponse::Ok().body("x".repeat((id % 4096) as usize + 16))
}

async fn put_file(path: web::Path<u64>, body: web::Bytes) -> HttpResponse {
    HttpResponse::Created().json(json!({"id": path.into_inner(), "size": body.len()}))
}

async fn delete_file(req: HttpRequest, path: web::Path<u64>) -> HttpResponse {
    if req.extensions().get::<AuditUser>().is_none() {
        return HttpResponse::Unauthorized().finish();
    }
    let _ = path.into_inner();
    HttpResponse::NoContent().finish()
}

async fn run_code(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let cpu_ms = (body.len() as u64 % 500) + 1;
    let mut usage = serde_json::Map::new();
    usage.insert("cpu_ms".into(), json!(cpu_ms));
    usage.insert("quota_units".into(), json!(1));
    req.extensions_mut().insert(AuditResources(usage));
    if body.starts_with(b"crash") {
        return HttpResponse::InternalServerError().json(json!({"error": "the program crashed"}));
    }
    HttpResponse::Ok().json(json!({"output": "ok", "cpu_ms": cpu_ms}))
}

async fn grant_role(req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let is_admin = req
        .extensions()
        .get::<AuditUser>()
        .is_some_and(|u| u.0 == "admin");
    if !is_admin {
        return HttpResponse::Forbidden().json(json!({"error": "admins only"}));
    }
    HttpResponse::Ok().json(json!({"user": path.into_inner(), "role": "editor"}))
}

async fn login(body: web::Bytes) -> HttpResponse {
    if body.is_empty() {
        return HttpResponse::Unauthorized().json(json!({"error": "bad credentials"}));
    }
    HttpResponse::Ok().json(json!({"status": "signed in"}))
}

async fn logout() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(
    settings: &Settings,
    args: DemoArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (server, port, audit) = if args.no_audit {
        let server = HttpServer::new(|| {
            App::new()
                .wrap_fn(|req, srv| {
                    authenticate(&req);
                    srv.call(req)
                })
                .configure(routes)
        })
        .workers(2)
        .disable_signals()
        .bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
        let port = server.addrs().first().map(|a| a.port()).unwrap_or(0);
        (server.run(), port, None)
    } else {
        let publisher = Publisher::new(&settings.client(), "auditline-demo-app");
        let spool = Arc::new(Spool::open(
            &args.spool_dir,
            settings.ingest.spool_max_bytes,
        )?);
        let mut config = AuditConfig::new(&args.service);
        config.redact = auditline_shared::redact::Redactor::new(&settings.audit.redact_params);
        config.linger = std::time::Duration::from_millis(args.linger_ms);
        config.events_per_message = args.events_per_message.max(1);
        let audit = AuditMiddleware::start(config, publisher, spool)?;
        let wrapped = audit.clone();
        let server = HttpServer::new(move || {
            App::new()
                .wrap_fn(|req, srv| {
                    authenticate(&req);
                    srv.call(req)
                })
                .wrap(wrapped.clone())
                .configure(routes)
        })
        .workers(2)
        .disable_signals()
        .bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
        let port = server.addrs().first().map(|a| a.port()).unwrap_or(0);
        (server.run(), port, Some(audit))
    };
    let handle = server.handle();
    println!(
        "demo app on http://127.0.0.1:{port} (service {:?})",
        args.service
    );
    let traffic =
        (args.traffic > 0).then(|| actix_web::rt::spawn(self_traffic(port, args.traffic)));
    tokio::select! {
        result = server => result?,
        () = shutdown => handle.stop(true).await,
    }
    if let Some(t) = traffic {
        t.abort();
    }
    // Every event is published or spooled before the process ends (shutdown
    // first waits for the server's workers to hand over what they hold).
    if let Some(audit) = audit {
        audit
            .shutdown(auditline_client::middleware::SHUTDOWN_GRACE)
            .await;
        tracing::info!(
            spilled = audit.spilled(),
            "audit middleware stopped (spilled: events that went through the spool)"
        );
    }
    Ok(())
}

/// Sends `per_second` random requests a second to the demo itself.
async fn self_traffic(port: u16, per_second: u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pause = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
    loop {
        let (method, path, user, body) = {
            let mut rng = rand::rng();
            let user = format!("user-{}", rng.random_range(0..20));
            let id = rng.random_range(0..5000);
            match rng.random_range(0..8) {
                0 => ("PUT", format!("/files/{id}"), user, "some bytes".to_owned()),
                1 => ("DELETE", format!("/files/{id}"), user, String::new()),
                2 => ("POST", "/code/run".to_owned(), user, "print(1)".to_owned()),
                3 => (
                    "POST",
                    format!("/admin/users/{id}/roles"),
                    user,
                    String::new(),
                ),
                4 => ("POST", "/auth/login".to_owned(), user, "secret".to_owned()),
                5 => ("GET", "/health".to_owned(), user, String::new()),
                _ => ("GET", format!("/files/{id}"), user, String::new()),
            }
        };
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: demo\r\nx-demo-user: {user}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(request.as_bytes()).await;
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        }
        tokio::time::sleep(pause).await;
    }
}
