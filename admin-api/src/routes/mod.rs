//! The HTTP handlers, one module per resource, each with its `configure`
//! (the dashboard's routes are outside the audited scope: [`configure`]).

pub mod dashboard;
pub mod export;
pub mod integrity;
pub mod jobs;
pub mod live;
pub mod realtime;
pub mod schedules;
pub mod search;
pub mod users;

/// A GET-only resource: other methods get a 405 with `Allow: GET`.
pub(crate) fn get(path: &str, route: actix_web::Route) -> actix_web::Resource {
    auditline_shared::error::single_method(path, "GET", route)
}

/// The audited `/admin/audit` routes, every resource module's.
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.configure(search::configure)
        .configure(users::configure)
        .configure(realtime::configure)
        .configure(export::configure)
        .configure(jobs::configure)
        .configure(schedules::configure)
        .configure(live::configure)
        .configure(integrity::configure);
}
