//! The audit middleware's own CPU per request, with no network and no load
//! generator: one thread calls a plain app and an audited app in turns
//! (`actix_web::test::call_service`, the demo's `GET /files/42`), and the
//! background publisher runs on that same thread, so the difference is all
//! the middleware costs: observing, writing the event, handing it over,
//! compressing and publishing it to RabbitMQ (`AUDITLINE_AMQP_URL`, default
//! local). Side by side in one run, so the machine's drift cancels out.
//!
//! `cargo run --release -p auditline-client --example middleware_cost`
use actix_web::{App, HttpMessage, HttpResponse, dev::Service, test, web};
use auditline_client::{
    AuditConfig, AuditMiddleware, AuditUser, ClientConfig, Publisher, SecretUrl, amqp::Topology,
    spool::Spool,
};
use std::{sync::Arc, time::Instant};

async fn get_file(path: web::Path<u64>) -> HttpResponse {
    HttpResponse::Ok().body("x".repeat((path.into_inner() % 4096) as usize + 16))
}

/// Nanoseconds a request, over `n` requests.
async fn run<S, B>(app: &S, n: u32) -> f64
where
    S: Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: actix_web::body::MessageBody,
{
    let start = Instant::now();
    for i in 0..n {
        if i % 16 == 0 {
            // Lets the background tasks (the publisher) run, as a server's
            // event loop would between requests.
            tokio::task::yield_now().await;
        }
        let req = test::TestRequest::get()
            .uri("/files/42")
            .insert_header(("x-session-id", "bench"))
            .peer_addr("127.0.0.1:40000".parse().expect("addr"))
            .to_request();
        let res = test::call_service(app, req).await;
        assert!(res.status().is_success());
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let mut settings = ClientConfig::default();
    if let Ok(url) = std::env::var("AUDITLINE_AMQP_URL") {
        settings.amqp_url = SecretUrl::new(url);
    }
    settings.namespace = format!("mwcost-{}", uuid::Uuid::new_v4().simple());
    let spool_dir = std::env::temp_dir().join(&settings.namespace);
    let publisher = Publisher::connect(&settings, "middleware-cost").await?;
    let spool = Arc::new(Spool::open(&spool_dir, 1 << 30)?);
    let audit = AuditMiddleware::start(AuditConfig::new("bench"), publisher, spool)?;
    let user = |req: actix_web::dev::ServiceRequest, srv: &_| {
        req.extensions_mut().insert(AuditUser("alice".into()));
        Service::call(srv, req)
    };
    let plain = test::init_service(
        App::new()
            .wrap_fn(user)
            .route("/files/{id}", web::get().to(get_file)),
    )
    .await;
    let audited = test::init_service(
        App::new()
            .wrap_fn(user)
            .wrap(audit.clone())
            .route("/files/{id}", web::get().to(get_file)),
    )
    .await;
    let n = 200_000;
    run(&plain, n / 4).await;
    run(&audited, n / 4).await;
    let (mut plain_ns, mut audited_ns) = (Vec::new(), Vec::new());
    for round in 1..=7 {
        let p = run(&plain, n).await;
        let a = run(&audited, n).await;
        println!(
            "[round {round}] plain {p:.0} ns, audited {a:.0} ns a request: +{:.0} ns",
            a - p
        );
        plain_ns.push(p);
        audited_ns.push(a);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, a) = (median(&mut plain_ns), median(&mut audited_ns));
    println!(
        "median: plain {p:.0} ns, audited {a:.0} ns a request: +{:.0} ns ({:.2}x)",
        a - p,
        a / p
    );
    println!("spilled to the spool: {}", audit.spilled());
    let connection = auditline_client::amqp::connect(&settings.amqp_url, "middleware-cost").await?;
    Topology::new(&settings.namespace)
        .delete(&connection.create_channel().await?)
        .await;
    let _ = std::fs::remove_dir_all(spool_dir);
    Ok(())
}
