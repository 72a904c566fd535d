//! `GET /admin/audit/logs` and `GET /admin/audit/logs/{event_id}`: filtered
//! search with keyset pagination on (`occurred_at`, `event_id`).
//!
//! The cursor is opaque to clients: it carries the position of the last event
//! of a page, the time window of the first page (so "the last 24 hours" does
//! not slide while a client walks the pages), the order and a digest of the
//! filters, signed with an installation-wide HMAC key. A cursor that was
//! altered, forged or reused with other filters is a 400.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::{
    error::ApiError,
    extract::Reader,
    query::{
        filters::{Filters, SEARCH_NAMES},
        params::Params,
        search::{PageParams, Search, SearchPage},
    },
    state::State,
};
use auditline_shared::{event_columns, stored::StoredEvent};

/// Search the audit log.
#[utoipa::path(
    get,
    path = "/admin/audit/logs",
    tag = "search",
    params(Filters, PageParams),
    responses(
        (status = 200, description = "One page of matching events", body = SearchPage),
        crate::error::ReadErrors,
    )
)]
pub async fn search(
    req: HttpRequest,
    _reader: Reader,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse_from(req.query_string(), SEARCH_NAMES)?;
    let search = Search::parse(&params, &state.cursor_key)?;
    let page = search.run(&state.pool, &state.cursor_key).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// One stored event.
#[utoipa::path(
    get,
    path = "/admin/audit/logs/{event_id}",
    tag = "search",
    params(("event_id" = Uuid, Path, description = "The event's id")),
    responses(
        (status = 200, description = "The event", body = StoredEvent),
        crate::error::ReadErrors,
        (status = 404, description = "No event has this id", body = crate::error::ErrorEnvelope),
    )
)]
pub async fn event(
    req: HttpRequest,
    _reader: Reader,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let id = crate::query::params::path_uuid("event_id", &path)?;
    // The same id could in theory be stored at two times (the key is
    // (event_id, occurred_at)); the earliest is the answer.
    let event: Option<StoredEvent> = sqlx::query_as(concat!(
        "SELECT ",
        event_columns!(),
        " FROM auditline.events WHERE event_id = $1 ORDER BY occurred_at LIMIT 1"
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    match event {
        Some(event) => Ok(HttpResponse::Ok().json(event)),
        None => Err(ApiError::NotFound(format!("no event with id {id}"))),
    }
}

/// Registers `/admin/audit/logs[/{event_id}]` (inside the `/admin/audit` scope).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    use super::get;
    use actix_web::web;
    cfg.service(get("/logs", web::get().to(search)))
        .service(get("/logs/{event_id}", web::get().to(event)));
}
