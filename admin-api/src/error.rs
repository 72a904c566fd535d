//! The admin API's errors, answered with the one JSON error body.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use auditline_shared::{auth::AuthError, error::ErrorBody};
use serde::Serialize;
use serde_json::Value;
use serde_json::json;
use utoipa::{IntoResponses, ToSchema};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query or path parameter is wrong; `param` names it.
    #[error("{param}: {message}")]
    BadParam { param: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The resource is not in a state that allows this (e.g. downloading an
    /// export that is still running).
    #[error("{0}")]
    Conflict(String),
    /// The request body is not what the route takes; `field` names the part.
    #[error("{field}: {message}")]
    BadBody { field: String, message: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Refused for a reason of its own (a stream ticket, an origin, a cap).
    #[error("{message}")]
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// Over a quota: 429, `Retry-After` in seconds.
    #[error("{message}")]
    TooMany {
        code: &'static str,
        message: String,
        retry_after: u64,
    },
    /// The database did not answer in time or refused the connection.
    #[error("the database is unavailable; retry shortly")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    pub fn body(field: &str, message: impl Into<String>) -> Self {
        Self::BadBody {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub fn param(param: &str, message: impl Into<String>) -> Self {
        Self::BadParam {
            param: param.to_owned(),
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                Self::Unavailable(e)
            }
            other => Self::Unexpected(anyhow::Error::new(other).context("database query failed")),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadParam { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BadBody { .. } => StatusCode::BAD_REQUEST,
            Self::Auth(e) => e.status_code(),
            Self::Refused { status, .. } => *status,
            Self::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::BadParam { param, message } => ErrorBody::new(
                "invalid_parameter",
                format!("invalid parameter `{param}`: {message}"),
            )
            .with_details(vec![json!({"parameter": param, "message": message})])
            .response(StatusCode::BAD_REQUEST),
            Self::NotFound(what) => {
                ErrorBody::new("not_found", what.clone()).response(StatusCode::NOT_FOUND)
            }
            Self::Conflict(what) => {
                ErrorBody::new("conflict", what.clone()).response(StatusCode::CONFLICT)
            }
            Self::BadBody { field, message } => ErrorBody::new(
                "invalid_body",
                format!("invalid request body, `{field}`: {message}"),
            )
            .with_details(vec![json!({"field": field, "message": message})])
            .response(StatusCode::BAD_REQUEST),
            Self::Auth(e) => e.error_response(),
            Self::Refused {
                status,
                code,
                message,
            } => {
                let mut response = ErrorBody::new(code, message.clone()).response(*status);
                if *status == StatusCode::SERVICE_UNAVAILABLE {
                    response.headers_mut().insert(
                        actix_web::http::header::RETRY_AFTER,
                        actix_web::http::header::HeaderValue::from_static("5"),
                    );
                }
                response
            }
            Self::TooMany {
                code,
                message,
                retry_after,
            } => {
                let mut response =
                    ErrorBody::new(code, message.clone()).response(StatusCode::TOO_MANY_REQUESTS);
                response.headers_mut().insert(
                    actix_web::http::header::RETRY_AFTER,
                    actix_web::http::header::HeaderValue::from(*retry_after),
                );
                response
            }
            Self::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                ErrorBody::new("unavailable", self.to_string())
                    .response(StatusCode::SERVICE_UNAVAILABLE)
            }
            Self::Unexpected(e) => {
                let error = format!("{e:#}");
                tracing::error!(error = %auditline_shared::redact::text(&error), "admin request failed");
                ErrorBody::new("internal", "internal error; the server log has the details")
                    .response(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}

/// The error body of every failed request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// Machine-readable, e.g. `invalid_parameter`, `unauthorized`.
    pub code: String,
    pub message: String,
    /// Per-item details, e.g. `{"parameter": "from", "message": "…"}`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub details: Option<Vec<Value>>,
}

/// The refusals every admin read route can answer (documentation only).
#[derive(Debug, IntoResponses)]
#[allow(dead_code)]
pub enum ReadErrors {
    /// A parameter is invalid; the error names it
    #[response(status = 400)]
    BadRequest(ErrorEnvelope),
    /// Missing, unknown, expired or revoked token
    #[response(status = 401)]
    Unauthorized(ErrorEnvelope),
    /// The token lacks the scope the route needs (`read`; `export` for exports)
    #[response(status = 403)]
    Forbidden(ErrorEnvelope),
}
