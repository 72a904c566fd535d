//! The dashboard: `GET /admin/` and its assets, embedded in the binary (no
//! CDN, no build step, works offline), under a strict Content-Security-Policy:
//! only this origin's scripts, styles and API, no inline code, no framing.

use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{self, HeaderValue},
    web,
};

use crate::error::ApiError;

/// The policy every dashboard response carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                       form-action 'self'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../../assets/index.html");
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/app.css"),
    ),
];

fn secured(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The dashboard's page (the sign-in form until a token is given).
pub async fn index() -> HttpResponse {
    secured(
        HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(INDEX),
    )
}

/// `/admin` → `/admin/`.
pub async fn redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/admin/"))
        .finish()
}

/// A script or style sheet of the dashboard.
pub async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    crate::query::params::Params::parse(req.query_string(), &[])?;
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(file, _, _)| *file == name.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no dashboard asset {:?}", name.as_str())))?;
    Ok(secured(
        HttpResponse::Ok().content_type(*content_type).body(*body),
    ))
}

/// Registers `/admin/`, `/admin` and `/admin/assets/{file}` (outside the
/// audited scope: the page itself reads nothing).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::get;
    cfg.service(get("/admin/", web::get().to(index)))
        .service(get("/admin", web::get().to(redirect)))
        .service(get("/admin/assets/{file}", web::get().to(asset)));
}
