//! `GET /admin/audit/verify`: `auditline_integrity::verify` over HTTP.

/// `GET /admin/audit/verify?from&to`: the verify report (scope `admin`).
/// 200 whether or not something was found: `ok` says which.
#[utoipa::path(
    get,
    path = "/admin/audit/verify",
    tag = "integrity",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339: verify rows that occurred at or after this (default: all)"),
        ("to" = Option<String>, Query, description = "RFC 3339: verify rows that occurred before this (default: all)"),
        ("checkpoint" = Option<String>, Query, description = "Walk the checkpoint history from this file on (default: the whole history)"),
    ),
    responses(
        (status = 200, description = "The report; `ok` is false when something was found", body = auditline_integrity::verify::Report),
        (status = 400, description = "A bad parameter", body = crate::error::ErrorEnvelope),
        (status = 401, description = "No valid token", body = crate::error::ErrorEnvelope),
        (status = 403, description = "The token lacks the `admin` scope", body = crate::error::ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn handler(
    _admin: crate::extract::Administrator,
    req: actix_web::HttpRequest,
    state: actix_web::web::Data<crate::state::State>,
) -> Result<actix_web::HttpResponse, crate::error::ApiError> {
    let params =
        crate::query::params::Params::parse(req.query_string(), &["from", "to", "checkpoint"])?;
    let range = crate::query::params::open_time_range(&params)?;
    let start = params.one("checkpoint")?;
    let report = auditline_integrity::verify::verify(
        &state.pool,
        &state.storage,
        &state.integrity.checkpoint_destination,
        &state.keys,
        range,
        start,
    )
    .await?;
    Ok(actix_web::HttpResponse::Ok().json(report))
}

/// Registers `/admin/audit/verify` (inside the `/admin/audit` scope).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    use super::get;
    use actix_web::web;
    cfg.service(get("/verify", web::get().to(handler)));
}
