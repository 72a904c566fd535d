//! An event as the database holds it (with the time it was received): what
//! the admin API returns, the live stream sends, exports write and verify
//! reads back, and the columns that select it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// An event as stored, with the time it was received.
#[derive(Debug, Clone, Serialize, serde::Deserialize, sqlx::FromRow, ToSchema)]
pub struct StoredEvent {
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub service: String,
    pub session_id: String,
    pub user_id: Option<String>,
    /// IPv4 or IPv6 address.
    pub client_ip: Option<String>,
    pub action_type: String,
    pub endpoint: String,
    pub route: Option<String>,
    pub http_method: String,
    #[schema(minimum = 0)]
    pub request_size: Option<i64>,
    #[schema(minimum = 0)]
    pub response_size: Option<i64>,
    #[schema(minimum = 0)]
    pub response_time_ms: Option<f64>,
    #[schema(minimum = 100, maximum = 599)]
    pub status_code: Option<i16>,
    pub success: bool,
    #[schema(value_type = Option<Object>)]
    pub resource_usage: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// The columns of a [`StoredEvent`], as a literal for `concat!`.
#[macro_export]
macro_rules! event_columns {
    () => {
        "event_id, occurred_at, received_at, service, session_id, user_id, \
         host(client_ip) AS client_ip, action_type, endpoint, route, http_method, request_size, \
         response_size, response_time_ms, status_code, success, resource_usage, metadata"
    };
}
