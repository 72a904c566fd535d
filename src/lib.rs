//! The `auditline` binary's library: the command line ([`cli`]), the load
//! generator ([`loadgen`]) and the demo app ([`demo`]). The services and
//! libraries live in the workspace crates: `auditline-event` (the contract),
//! `auditline-client` (publishing), `auditline-shared` (server foundation),
//! `auditline-integrity` (verify, checkpoints, retention), `auditline-ingest`
//! (the gateway), `auditline-writer`, `auditline-admin-api`.

pub mod cli;
pub mod demo;
pub mod loadgen;
