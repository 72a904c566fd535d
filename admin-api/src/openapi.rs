//! The OpenAPI 3 document of the admin API and of the ingest gateway's
//! `POST /v1/events`, generated from the handlers' annotations (utoipa) and,
//! for the event itself, from the JSON Schema the event type derives.

use serde::Serialize;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::{
        RefOr, Schema,
        schema::{ArrayBuilder, OneOfBuilder, Ref},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{
    error::{ErrorEnvelope, ErrorObject},
    routes::{export, jobs, live, realtime, schedules, search, users},
};

/// The 202 answer of the ingest gateway.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// How many events were accepted.
    pub accepted: u64,
    /// The ids of the accepted events, in the order sent.
    pub event_ids: Vec<uuid::Uuid>,
    /// True when the broker was unreachable and the events wait in the durable spool.
    pub spooled: bool,
}

/// Publish audit events (served by the ingest listener, `AUDITLINE_INGEST_LISTEN`).
///
/// One event, a JSON array of events, or NDJSON (`application/x-ndjson`).
/// Accepted whole (202, after the broker confirmed or the spool made them
/// durable) or refused whole (400, every invalid item named by index or line
/// and field). Needs a `publish` token; its service is stamped on the events.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "ingest",
    request_body(
        description = "An event, an array of events, or NDJSON",
        content(
            (Value = "application/json"),
            (String = "application/x-ndjson"),
        ),
    ),
    responses(
        (status = 202, description = "Every event is confirmed by the broker or durably spooled", body = Accepted),
        (status = 400, description = "Malformed or invalid; nothing was published", body = ErrorEnvelope),
        (status = 401, description = "Missing, unknown, expired or revoked token", body = ErrorEnvelope),
        (status = 403, description = "The token lacks the `publish` scope, or an event claims another service", body = ErrorEnvelope),
        (status = 413, description = "Over the body size or event count limit", body = ErrorEnvelope),
        (status = 415, description = "Not JSON or NDJSON", body = ErrorEnvelope),
        (status = 503, description = "Neither the broker nor the spool can take the events; retry after `Retry-After`", body = ErrorEnvelope),
    )
)]
#[allow(dead_code)]
fn post_events() {}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Auditline",
        description = "Admin API (`/admin/...`, on AUDITLINE_ADMIN_LISTEN) and ingest API \
                       (`/v1/events`, on AUDITLINE_INGEST_LISTEN). Authenticate with \
                       `Authorization: Bearer <token>`; tokens carry scopes (`read` for the \
                       admin routes here, `export` for exports, `publish` for ingest)."
    ),
    paths(
        search::search,
        search::event,
        users::users,
        users::user,
        realtime::metrics,
        export::export,
        jobs::create,
        jobs::list,
        jobs::show,
        jobs::cancel,
        jobs::download,
        schedules::create,
        schedules::list,
        schedules::show,
        schedules::delete,
        live::ticket,
        live::stream,
        crate::routes::integrity::handler,
        post_events,
    ),
    components(schemas(ErrorEnvelope, ErrorObject, Accepted, crate::query::params::Text)),
    modifiers(&Security, &EventSchema, &TooLongToRecord),
    security(("bearer" = [])),
    tags(
        (name = "search", description = "Find audit events"),
        (name = "users", description = "Per-user activity summaries"),
        (name = "metrics", description = "Real-time audit metrics"),
        (name = "export", description = "Export audit events (scope `export`)"),
        (name = "stream", description = "Watch audit events live (websocket, scope `read`)"),
        (name = "ingest", description = "Publish audit events over HTTP"),
        (name = "integrity", description = "Prove the stored events untouched (scope `admin`)"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("alt_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// Every `/admin/audit` route refuses, with 414, a request whose audit
/// record would not hold its whole path and parameters.
struct TooLongToRecord;

impl Modify for TooLongToRecord {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, ResponseBuilder};
        let response = ResponseBuilder::new()
            .description(
                "The path or parameters are longer than an audit record holds (path over 255 \
                 characters, parameters over 16 KiB): refused, not recorded shorter",
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/admin/audit") {
                continue;
            }
            for operation in [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .insert("414".into(), RefOr::T(response.clone()));
            }
        }
    }
}

/// Adds the event's JSON Schema (the one shipped in `event/schema`) as the
/// `WireEvent` component.
struct EventSchema;

impl Modify for EventSchema {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut schema = auditline_shared::event::json_schema();
        if let Some(object) = schema.as_object_mut() {
            object.remove("$schema");
        }
        match serde_json::from_value::<Schema>(schema) {
            Ok(schema) => {
                let components = openapi.components.get_or_insert_with(Default::default);
                components
                    .schemas
                    .insert("WireEvent".into(), RefOr::T(schema));
                // POST /v1/events takes one event or an array of them.
                let event = || Ref::from_schema_name("WireEvent");
                let body = OneOfBuilder::new()
                    .item(event())
                    .item(ArrayBuilder::new().items(event()))
                    .build();
                if let Some(content) = openapi
                    .paths
                    .paths
                    .get_mut("/v1/events")
                    .and_then(|item| item.post.as_mut())
                    .and_then(|op| op.request_body.as_mut())
                    .and_then(|body| body.content.get_mut("application/json"))
                {
                    content.schema = Some(RefOr::T(Schema::OneOf(body)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "event schema not added to the OpenAPI document"),
        }
    }
}
