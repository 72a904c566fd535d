//! The audit event contract, shared by everything that builds, publishes,
//! stores or checks an event, and nothing else: no I/O, no runtime, no
//! database (serde, chrono, uuid and sha2, plus small byte helpers).
//!
//! - [`event`]: the wire type, validation, fast JSON and NDJSON encoding, and
//!   (feature `schema`) the JSON Schema checked in under `event/schema/`.
//! - [`strict_json`]: duplicate keys and inexact numbers refused.
//! - [`redact`]: credentials kept out of events, logs and error messages.
//! - [`seal`]: row digests and chained batch seals (tamper evidence).
//! - [`text_index`]: the bit layout of the free-text search's Bloom filters.

pub mod event;
pub mod redact;
pub mod seal;
pub mod strict_json;
pub mod text_index;

pub use event::{AuditEvent, FieldError, ValidationError, WireEvent};
