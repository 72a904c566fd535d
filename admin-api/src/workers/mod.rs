//! What the admin service runs in the background.

pub mod jobs;
pub mod live;
pub mod scheduler;
