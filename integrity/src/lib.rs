//! Auditline's proofs, shared by the CLI (`auditline verify`, `checkpoint`,
//! `partitions`) and the admin service (its checkpointer, retention and
//! `GET /admin/audit/verify`). No HTTP here.
//!
//! - [`verify`]: recomputes every seal, checks its signature and its chain,
//!   walks the signed checkpoint history and compares every row
//!   (`verify/history.rs`: the forward-only checks of the history).
//! - [`checkpoint`]: signed checkpoints of every seal chain, each naming the
//!   one before it; the checkpointer refuses a regression.
//! - [`checkpointer`]: checks the database against the newest checkpoint
//!   and signs the next, or refuses a regression.
//! - [`drops`]: the signed records of days retention dropped.
//! - [`retention`]: verify a day, archive it (NDJSON + zstd, signed
//!   manifest), read it back, detach and drop it with a signed drop record.
//! - [`storage`]: where checkpoints, archives and exports land: the export
//!   directory (atomic, fsync'd writes) or S3-compatible buckets.

pub mod checkpoint;
pub mod checkpointer;
pub mod drops;
pub mod retention;
pub mod storage;
pub mod verify;
