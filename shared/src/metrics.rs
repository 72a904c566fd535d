//! Prometheus: one registry per service instance (so tests running several
//! services in one process do not collide) and the `/metrics` handler.

use actix_web::{HttpResponse, web};
use prometheus::{Encoder, Registry, TextEncoder};

/// Renders every metric of `registry` in the text exposition format.
pub async fn metrics_handler(registry: web::Data<Registry>) -> HttpResponse {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(buffer),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

/// Registers a collector, turning the (programming) error of a duplicate name
/// into a panic at start-up rather than a silently missing metric.
pub fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> C {
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(collector.clone()))
        .expect("metric registered twice");
    collector
}
