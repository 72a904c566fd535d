//! The admin API's errors, answered with the one JSON error body.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use auditline_shared::{auth::AuthError, error::ErrorBody};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query or path parameter is wrong; `param` names it.
    #[error("{param}: {message}")]
    BadParam { param: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The database did not answer in time or refused the connection.
    #[error("the database is unavailable; retry shortly")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
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
            Self::Auth(e) => e.status_code(),
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
            Self::Auth(e) => e.error_response(),
            Self::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                ErrorBody::new("unavailable", self.to_string())
                    .response(StatusCode::SERVICE_UNAVAILABLE)
            }
            Self::Unexpected(e) => {
                tracing::error!(error = %format!("{e:#}"), "admin request failed");
                ErrorBody::new("internal", "internal error; the server log has the details")
                    .response(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}
