//! The HTTP handlers, one module per resource.

pub mod dashboard;
pub mod export;
pub mod integrity;
pub mod jobs;
pub mod live;
pub mod realtime;
pub mod schedules;
pub mod search;
pub mod users;
