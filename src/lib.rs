//! The `auditline` binary's library: the command line and the load generator.
//! The services themselves live in the workspace crates (`auditline-shared`,
//! `auditline-ingest`, `auditline-writer`, `auditline-admin-api`).

pub mod cli;
pub mod demo;
pub mod loadgen;
