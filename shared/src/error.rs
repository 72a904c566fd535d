//! The one JSON error body of every HTTP answer that is not a success:
//! `{"error": {"code": "...", "message": "...", "details": [...]}}`.

use actix_web::{HttpResponse, http::StatusCode};
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;

fn redact_strings(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Cow::Owned(clean) = crate::redact::text(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_strings),
        Value::Object(map) => map.values_mut().for_each(redact_strings),
        _ => {}
    }
}

/// The body's `error` object.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Value>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ErrorBody,
}

impl ErrorBody {
    /// An error body. Anything in `message` shaped like a token or ticket
    /// (a value echoed back) is redacted: error bodies end up in logs.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            code: code.into(),
            message: match crate::redact::text(&message) {
                Cow::Borrowed(_) => message,
                Cow::Owned(clean) => clean,
            },
            details: Vec::new(),
        }
    }

    /// Details, their strings redacted as the message is.
    pub fn with_details(mut self, mut details: Vec<Value>) -> Self {
        details.iter_mut().for_each(redact_strings);
        self.details = details;
        self
    }

    /// The response with this body and `status`. A 503 carries `Retry-After`.
    pub fn response(&self, status: StatusCode) -> HttpResponse {
        let mut builder = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            builder.insert_header(("Retry-After", "5"));
        }
        builder.json(Envelope { error: self })
    }
}

/// A resource answering one method; any other method gets a 405 with this
/// body and `Allow`.
pub fn single_method(
    path: &str,
    method: &'static str,
    route: actix_web::Route,
) -> actix_web::Resource {
    methods(path, method, vec![route])
}

/// A resource answering `routes`; other methods get a 405 with `Allow: allow`
/// (e.g. `"GET, POST"`).
pub fn methods(
    path: &str,
    allow: &'static str,
    routes: Vec<actix_web::Route>,
) -> actix_web::Resource {
    let method = allow;
    routes
        .into_iter()
        .fold(actix_web::web::resource(path), actix_web::Resource::route)
        .default_service(actix_web::web::to(
            move |req: actix_web::HttpRequest| async move {
                let mut response = ErrorBody::new(
                    "method_not_allowed",
                    format!(
                        "{} is not allowed on {}; use {method}",
                        req.method(),
                        req.path()
                    ),
                )
                .response(StatusCode::METHOD_NOT_ALLOWED);
                response.headers_mut().insert(
                    actix_web::http::header::ALLOW,
                    actix_web::http::header::HeaderValue::from_static(method),
                );
                response
            },
        ))
}
