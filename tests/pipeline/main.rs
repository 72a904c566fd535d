//! Whole-system tests of the durable pipeline, against the real PostgreSQL and
//! RabbitMQ. Each test owns a database and a broker namespace.

mod admin;
mod bad_input;
mod dashboard;
mod drills;
mod export;
mod export_guard;
mod faults;
mod free_text;
mod full_disk;
mod helpers;
mod ingest;
mod integrity;
mod live;
mod metrics;
mod middleware;
mod privilege;
mod redaction;
mod retention;
mod storage;
mod strict;
