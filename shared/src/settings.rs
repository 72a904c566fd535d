//! Settings, layered: defaults, then an optional TOML file, then `AUDITLINE_*`
//! environment variables (nested keys with `__`, e.g.
//! `AUDITLINE_WRITER__BATCH__MAX_EVENTS`), then command-line flags.

pub use auditline_client::config::{PublisherSettings, SecretUrl};
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};
use std::{fmt, path::Path};

/// Everything Auditline's services read at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// PostgreSQL URL.
    #[serde(default = "default_database_url")]
    pub database_url: SecretUrl,
    /// RabbitMQ URL.
    #[serde(default = "default_amqp_url")]
    pub amqp_url: SecretUrl,
    /// Prefix of every exchange and queue, so installations (and tests) can share a broker.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Admin API listen address.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Ingest gateway listen address.
    #[serde(default = "default_ingest_listen")]
    pub ingest_listen: String,
    /// Writer's `/metrics` and `/healthz` listen address.
    #[serde(default = "default_writer_listen")]
    pub writer_listen: String,
    /// Default storage directory for export files.
    #[serde(default = "default_export_dir")]
    pub export_dir: String,
    /// `text` (default) or `json` log lines. The level comes from `RUST_LOG`.
    #[serde(default = "default_log_format")]
    pub log_format: LogFormat,
    /// The writer's settings.
    #[serde(default)]
    pub writer: WriterSettings,
    /// Time-partition upkeep.
    #[serde(default)]
    pub partitions: PartitionSettings,
    /// Settings of the library publisher (`auditline_client::Publisher`) and `loadgen`.
    #[serde(default)]
    pub publisher: PublisherSettings,
    /// The HTTP ingest gateway.
    #[serde(default)]
    pub ingest: IngestSettings,
    /// Export jobs.
    #[serde(default)]
    pub exports: ExportSettings,
    #[serde(default)]
    pub stream: StreamSettings,
    /// Seals, checkpoints and verify.
    #[serde(default)]
    pub integrity: IntegritySettings,
    /// What the services' own audit events (the `AuditMiddleware`) record.
    #[serde(default)]
    pub audit: AuditSettings,
}

/// What audit events built from requests may record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Query parameters and headers whose values are recorded as
    /// `[REDACTED]`, besides the built-in credential names (`token`,
    /// `access_token`, `api_key`, `password`, `ticket`, … see
    /// `auditline_shared::redact`). Compared case-insensitively, any
    /// character but a letter or digit read as `_`.
    #[serde(default)]
    pub redact_params: Vec<String>,
}

/// Checkpoints of the seal chains, anchored outside the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegritySettings {
    /// Ed25519 private key (the 32-byte seed, hex) checkpoints and
    /// retention drops are signed with (`auditline keygen` makes one).
    /// Without it they are written unsigned.
    #[serde(default)]
    pub signing_key: Option<Secret>,
    /// A file holding `signing_key` instead (only one of the two).
    #[serde(default)]
    pub signing_key_file: Option<String>,
    /// The matching public key (hex). `verify` refuses a checkpoint it does
    /// not verify; derived from `signing_key` when absent.
    #[serde(default)]
    pub verify_key: Option<String>,
    /// Ed25519 private key (hex seed) the writers sign each batch seal with.
    /// Without it seals are unsigned, and someone who can write to
    /// PostgreSQL can forge a whole chain.
    #[serde(default)]
    pub writer_key: Option<Secret>,
    /// A file holding `writer_key` instead (only one of the two).
    #[serde(default)]
    pub writer_key_file: Option<String>,
    /// Public keys (hex) whose seal signatures `verify` and the checkpointer
    /// accept (several while a key is being rotated). Derived from
    /// `writer_key` when empty. When neither is set, seal signatures are not
    /// checked and verify says so.
    #[serde(default)]
    pub writer_verify_keys: Vec<String>,
    /// How often the admin service publishes a checkpoint (0: never).
    #[serde(default = "default_checkpoint_interval_secs")]
    pub checkpoint_interval_secs: u64,
    /// The storage destination checkpoints are written to (`local` is the export directory).
    #[serde(default = "default_checkpoint_destination")]
    pub checkpoint_destination: String,
}

impl Default for IntegritySettings {
    fn default() -> Self {
        Self {
            signing_key: None,
            signing_key_file: None,
            verify_key: None,
            writer_key: None,
            writer_key_file: None,
            writer_verify_keys: Vec::new(),
            checkpoint_interval_secs: default_checkpoint_interval_secs(),
            checkpoint_destination: default_checkpoint_destination(),
        }
    }
}

fn default_checkpoint_interval_secs() -> u64 {
    60
}
fn default_checkpoint_destination() -> String {
    "local".into()
}

/// The live stream (`GET /admin/audit/stream`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// Browser origins (`https://admin.example.com`) allowed to connect, besides
    /// the admin service's own; a client that sends no `Origin` is not a browser.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Websocket clients at once per admin instance; beyond it, 503.
    #[serde(default = "default_stream_max_clients")]
    pub max_clients: usize,
    /// Matching events waiting per client; a commit's events that do not
    /// fit are dropped for that client, which is told `lagged`.
    #[serde(default = "default_stream_client_queue")]
    pub client_queue: usize,
    /// How long a ticket can be redeemed.
    #[serde(default = "default_stream_ticket_ttl_secs")]
    pub ticket_ttl_secs: u64,
    /// The server pings this often…
    #[serde(default = "default_stream_ping_secs")]
    pub ping_secs: u64,
    /// …and closes a connection it has heard nothing from for this long.
    #[serde(default = "default_stream_idle_secs")]
    pub idle_secs: u64,
    /// How often one task per instance checks the tokens of every open
    /// stream; a connection whose token was revoked or has expired is closed
    /// (code 1008) at the next check.
    #[serde(default = "default_stream_token_check_secs")]
    pub token_check_secs: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_clients: default_stream_max_clients(),
            client_queue: default_stream_client_queue(),
            ticket_ttl_secs: default_stream_ticket_ttl_secs(),
            ping_secs: default_stream_ping_secs(),
            idle_secs: default_stream_idle_secs(),
            token_check_secs: default_stream_token_check_secs(),
        }
    }
}

fn default_stream_max_clients() -> usize {
    1000
}
fn default_stream_client_queue() -> usize {
    10_000
}
fn default_stream_ticket_ttl_secs() -> u64 {
    60
}
fn default_stream_ping_secs() -> u64 {
    15
}
fn default_stream_idle_secs() -> u64 {
    60
}
fn default_stream_token_check_secs() -> u64 {
    2
}

/// Export jobs (`POST /admin/audit/exports`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSettings {
    /// How long a finished export's file is kept before it expires.
    #[serde(default = "default_export_retention_hours")]
    pub retention_hours: u64,
    /// A running job whose instance sent no heartbeat for this long is taken
    /// over by another (its process is presumed dead) and started again.
    #[serde(default = "default_export_claim_timeout_secs")]
    pub claim_timeout_secs: u64,
    /// Named S3-compatible destinations for export jobs and schedules,
    /// besides `local` (the `export_dir`), e.g. `[exports.destinations.archive]`
    /// or `AUDITLINE_EXPORTS__DESTINATIONS__ARCHIVE__BUCKET`.
    #[serde(default)]
    pub destinations: std::collections::BTreeMap<String, S3Destination>,
    /// Export jobs one token may have queued or running at once (scheduled
    /// jobs not counted); beyond it, 429.
    #[serde(default = "default_export_max_queued_per_token")]
    pub max_queued_per_token: u32,
    /// Streamed exports (`GET /admin/audit/export`) at once per admin
    /// instance, each holding a database connection; beyond it, 503.
    #[serde(default = "default_export_max_streams")]
    pub max_streams: usize,
    /// A streamed export whose reader takes nothing for this long is cut and
    /// its snapshot released.
    #[serde(default = "default_export_stream_send_timeout_secs")]
    pub stream_send_timeout_secs: u64,
}

/// An S3-compatible bucket that export files and manifests are written to.
/// Credentials not given here come from the standard `AWS_*` environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Destination {
    pub bucket: String,
    /// Key prefix of every file (e.g. `auditline/exports`).
    #[serde(default)]
    pub prefix: String,
    /// The service's URL, for S3-compatible stores (MinIO, Ceph, …); AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_s3_region")]
    pub region: String,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Allows a plain `http://` endpoint (test and on-premises stores).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

/// A secret setting: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            retention_hours: default_export_retention_hours(),
            claim_timeout_secs: default_export_claim_timeout_secs(),
            destinations: Default::default(),
            max_queued_per_token: default_export_max_queued_per_token(),
            max_streams: default_export_max_streams(),
            stream_send_timeout_secs: default_export_stream_send_timeout_secs(),
        }
    }
}

fn default_export_retention_hours() -> u64 {
    24
}
fn default_export_claim_timeout_secs() -> u64 {
    30
}
fn default_export_max_queued_per_token() -> u32 {
    5
}
fn default_export_max_streams() -> usize {
    4
}
fn default_export_stream_send_timeout_secs() -> u64 {
    30
}

/// The HTTP ingest gateway (`POST /v1/events`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Largest request body accepted, in bytes (413 above).
    #[serde(default = "default_ingest_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events in one request (413 above).
    #[serde(default = "default_ingest_max_events")]
    pub max_events: usize,
    /// How long a request may wait for the broker before the events are
    /// spooled (or, without a spool, answered 503).
    #[serde(default = "default_ingest_publish_timeout_ms")]
    pub publish_timeout_ms: u64,
    /// Spool accepted events to local disk while the broker cannot take them.
    #[serde(default = "default_true")]
    pub spool_enabled: bool,
    /// The spool directory (one per gateway process).
    #[serde(default = "default_spool_dir")]
    pub spool_dir: String,
    /// Most bytes the spool may hold; beyond it requests are answered 503.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
}

fn default_true() -> bool {
    true
}
fn default_spool_dir() -> String {
    "./var/spool".into()
}
fn default_spool_max_bytes() -> u64 {
    1024 * 1024 * 1024
}

fn default_ingest_max_body_bytes() -> usize {
    5 * 1024 * 1024
}
fn default_ingest_max_events() -> usize {
    10_000
}
fn default_ingest_publish_timeout_ms() -> u64 {
    2_000
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: default_ingest_max_body_bytes(),
            max_events: default_ingest_max_events(),
            publish_timeout_ms: default_ingest_publish_timeout_ms(),
            spool_enabled: true,
            spool_dir: default_spool_dir(),
            spool_max_bytes: default_spool_max_bytes(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How the writer consumes and batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterSettings {
    /// Parallel consume pipelines, each with its own AMQP connection and database connection.
    #[serde(default = "default_consumers")]
    pub consumers: usize,
    /// Unacknowledged messages the broker may send each pipeline (`basic.qos`).
    #[serde(default = "default_prefetch_count")]
    pub prefetch_count: u16,
    /// When to flush a batch to PostgreSQL.
    #[serde(default)]
    pub batch: BatchSettings,
    /// A name for this writer instance, recorded with every batch it commits.
    /// Defaults to `<hostname>-<pid>`.
    #[serde(default)]
    pub writer_id: Option<String>,
}

/// Batch flush thresholds (whichever comes first).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// Flush when this many events are pending.
    #[serde(default = "default_batch_max_events")]
    pub max_events: usize,
    /// Flush when the pending message bodies reach this many bytes.
    #[serde(default = "default_batch_max_bytes")]
    pub max_bytes: usize,
    /// Flush at most this long after the first pending event arrived.
    #[serde(default = "default_batch_timeout_ms")]
    pub timeout_ms: u64,
}

/// Daily partitions of `auditline.events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSettings {
    /// Days ahead of today (UTC) for which partitions must exist.
    #[serde(default = "default_ahead_days")]
    pub ahead_days: u32,
    /// How often the partition keeper checks the runway.
    #[serde(default = "default_check_interval_secs")]
    pub check_interval_secs: u64,
    /// Days of events kept: older daily partitions are archived to
    /// `archive_destination`, the archive verified, then dropped (by the admin
    /// service, hourly). None (the default): kept forever.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// Where retention archives go (`local` is the export directory).
    #[serde(default = "default_checkpoint_destination")]
    pub archive_destination: String,
    /// The oldest `occurred_at` accepted, in days before now: older events
    /// are refused by the gateway (400 naming the field) and dead-lettered
    /// by the writer, so no publisher can make the writer create partitions
    /// for decades past. None (the default): `retention_days` when set, else
    /// [`DEFAULT_MAX_EVENT_AGE_DAYS`].
    #[serde(default)]
    pub max_event_age_days: Option<u32>,
    /// Partitions a writer process creates on demand (for days outside the
    /// runway) per rolling hour; events of further new days are
    /// dead-lettered with the reason. Every partition costs locks in any
    /// query that spans it, so one publish token must not be able to make
    /// hundreds.
    #[serde(default = "default_max_created_per_hour")]
    pub max_created_per_hour: u32,
}

fn default_max_created_per_hour() -> u32 {
    50
}

/// The oldest accepted event without `retention_days` or `max_event_age_days`.
pub const DEFAULT_MAX_EVENT_AGE_DAYS: u32 = 400;

impl PartitionSettings {
    /// How old an event's `occurred_at` may be.
    pub fn max_event_age(&self) -> chrono::Duration {
        let days = self
            .max_event_age_days
            .or(self.retention_days)
            .unwrap_or(DEFAULT_MAX_EVENT_AGE_DAYS);
        chrono::Duration::days(i64::from(days))
    }
}

fn default_database_url() -> SecretUrl {
    SecretUrl::new("postgres://postgres@127.0.0.1:5432/auditline")
}
fn default_amqp_url() -> SecretUrl {
    SecretUrl::new(auditline_client::config::DEFAULT_AMQP_URL)
}
fn default_namespace() -> String {
    auditline_client::config::DEFAULT_NAMESPACE.into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_ingest_listen() -> String {
    "127.0.0.1:8081".into()
}
fn default_writer_listen() -> String {
    "127.0.0.1:8082".into()
}
fn default_export_dir() -> String {
    "./var/exports".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_consumers() -> usize {
    2
}
fn default_prefetch_count() -> u16 {
    // Single-event messages make batches no larger than the prefetch; large
    // messages wait in the client, still encoded, while a pipeline holds
    // four batches' worth of parsed events; see docs/configuration.md.
    500
}
fn default_batch_max_events() -> usize {
    5_000
}
fn default_batch_max_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_batch_timeout_ms() -> u64 {
    200
}
fn default_ahead_days() -> u32 {
    7
}
fn default_check_interval_secs() -> u64 {
    3_600
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            consumers: default_consumers(),
            prefetch_count: default_prefetch_count(),
            batch: BatchSettings::default(),
            writer_id: None,
        }
    }
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_events: default_batch_max_events(),
            max_bytes: default_batch_max_bytes(),
            timeout_ms: default_batch_timeout_ms(),
        }
    }
}

impl Default for PartitionSettings {
    fn default() -> Self {
        Self {
            ahead_days: default_ahead_days(),
            check_interval_secs: default_check_interval_secs(),
            retention_days: None,
            archive_destination: default_checkpoint_destination(),
            max_event_age_days: None,
            max_created_per_hour: default_max_created_per_hour(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: default_database_url(),
            amqp_url: default_amqp_url(),
            namespace: default_namespace(),
            admin_listen: default_admin_listen(),
            ingest_listen: default_ingest_listen(),
            writer_listen: default_writer_listen(),
            export_dir: default_export_dir(),
            log_format: default_log_format(),
            writer: WriterSettings::default(),
            partitions: PartitionSettings::default(),
            publisher: PublisherSettings::default(),
            ingest: IngestSettings::default(),
            exports: ExportSettings::default(),
            stream: StreamSettings::default(),
            integrity: IntegritySettings::default(),
            audit: AuditSettings::default(),
        }
    }
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid settings: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid settings: {0}")]
    Rule(String),
}

impl Settings {
    /// What the client library needs of these settings: the broker, the
    /// namespace, the publisher's batching and retries.
    pub fn client(&self) -> auditline_client::ClientConfig {
        auditline_client::ClientConfig {
            amqp_url: self.amqp_url.clone(),
            namespace: self.namespace.clone(),
            publisher: self.publisher.clone(),
        }
    }

    /// Loads defaults, then `config` (if given), then `AUDITLINE_*` variables,
    /// then `overrides` (command-line flags, as a partial settings table).
    pub fn load(config: Option<&Path>, overrides: impl Serialize) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config {
            if !path.exists() {
                return Err(SettingsError::Rule(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let settings: Settings = figment
            .merge(Env::prefixed("AUDITLINE_").split("__"))
            .merge(Serialized::globals(overrides))
            .extract()
            .map_err(Box::new)?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), SettingsError> {
        let ns_ok = !self.namespace.is_empty()
            && self.namespace.len() <= 100
            && self
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ns_ok {
            return Err(SettingsError::Rule(format!(
                "namespace {:?} must be 1-100 ASCII letters, digits, '-', '_' or '.'",
                self.namespace
            )));
        }
        let w = &self.writer;
        if w.consumers == 0
            || w.prefetch_count == 0
            || w.batch.max_events == 0
            || w.batch.max_bytes == 0
        {
            return Err(SettingsError::Rule(
                "writer.consumers, writer.prefetch_count, writer.batch.max_events and writer.batch.max_bytes must be > 0".into(),
            ));
        }
        for (name, destination) in &self.exports.destinations {
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')
                });
            if !name_ok || name == "local" {
                return Err(SettingsError::Rule(format!(
                    "export destination {name:?}: names are 1-64 of a-z, 0-9, '-', '_', and \"local\" is the export_dir"
                )));
            }
            if destination.bucket.is_empty() {
                return Err(SettingsError::Rule(format!(
                    "export destination {name:?} needs a bucket"
                )));
            }
        }
        if self.publisher.events_per_message == 0 {
            return Err(SettingsError::Rule(
                "publisher.events_per_message must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// The name recorded with each committed batch.
    pub fn writer_id(&self) -> String {
        self.writer.writer_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "writer".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords() {
        let url = SecretUrl::new("amqp://guest:hunter2@broker:5672/%2f");
        let shown = format!("{url:?} {url}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("guest:***@broker:5672"), "{shown}");
        let settings = Settings {
            database_url: SecretUrl::new("postgres://app:s3cret@db/auditline"),
            ..Settings::default()
        };
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "auditline.toml",
                "namespace = \"from-file\"\nadmin_listen = \"127.0.0.1:1\"\n[writer.batch]\nmax_events = 10\n",
            )?;
            jail.set_env("AUDITLINE_ADMIN_LISTEN", "127.0.0.1:2");
            jail.set_env("AUDITLINE_WRITER__BATCH__TIMEOUT_MS", "7");
            let flags = serde_json::json!({ "namespace": "from-flag" });
            let s = Settings::load(Some(Path::new("auditline.toml")), flags)
                .map_err(|e| e.to_string())?;
            assert_eq!(s.namespace, "from-flag");
            assert_eq!(s.admin_listen, "127.0.0.1:2");
            assert_eq!(s.writer.batch.max_events, 10);
            assert_eq!(s.writer.batch.timeout_ms, 7);
            assert_eq!(s.ingest_listen, "127.0.0.1:8081");
            Ok(())
        });
    }

    #[test]
    fn export_destinations_come_from_the_environment_with_their_secret_hidden() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("AUDITLINE_EXPORTS__DESTINATIONS__ARCHIVE__BUCKET", "audit");
            jail.set_env(
                "AUDITLINE_EXPORTS__DESTINATIONS__ARCHIVE__ENDPOINT",
                "http://s3:9000",
            );
            jail.set_env(
                "AUDITLINE_EXPORTS__DESTINATIONS__ARCHIVE__ALLOW_HTTP",
                "true",
            );
            jail.set_env(
                "AUDITLINE_EXPORTS__DESTINATIONS__ARCHIVE__SECRET_ACCESS_KEY",
                "hunter2",
            );
            let s = Settings::load(None, serde_json::json!({})).map_err(|e| e.to_string())?;
            let archive = &s.exports.destinations["archive"];
            assert_eq!(archive.bucket, "audit");
            assert_eq!(archive.endpoint.as_deref(), Some("http://s3:9000"));
            assert!(archive.allow_http);
            assert_eq!(archive.region, "us-east-1");
            assert_eq!(
                archive.secret_access_key.as_ref().map(Secret::expose),
                Some("hunter2")
            );
            assert!(!format!("{s:?}").contains("hunter2"));
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("AUDITLINE_EXPORTS__DESTINATIONS__LOCAL__BUCKET", "audit");
            let err = Settings::load(None, serde_json::json!({})).expect_err("local is reserved");
            assert!(err.to_string().contains("\"local\""), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_shipped_example_config_loads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/auditline.example.toml"
        ));
        let settings =
            Settings::load(Some(path), serde_json::json!({})).expect("example config is valid");
        assert_eq!(settings.writer.batch.max_events, 5_000);
    }

    #[test]
    fn unknown_keys_and_bad_namespaces_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "namespce = \"typo\"\n")?;
            let err = Settings::load(Some(Path::new("bad.toml")), serde_json::json!({}))
                .expect_err("typo must be refused");
            assert!(err.to_string().contains("namespce"), "{err}");
            let err = Settings::load(None, serde_json::json!({ "namespace": "a b" }))
                .expect_err("space must be refused");
            assert!(err.to_string().contains("namespace"), "{err}");
            Ok(())
        });
    }
}
