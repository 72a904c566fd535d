//! What a client needs to reach the broker: the AMQP URL, the namespace and
//! how the publisher batches and retries. The server's `Settings` embed these
//! and give a [`ClientConfig`] with `Settings::client()`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How to reach RabbitMQ and publish there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientConfig {
    /// `amqp://user:password@host:port/vhost`.
    pub amqp_url: SecretUrl,
    /// The prefix of every exchange and queue (`<ns>.events`, …).
    pub namespace: String,
    /// Batching, retries and compression.
    #[serde(default)]
    pub publisher: PublisherSettings,
}

impl ClientConfig {
    /// A configuration with the default publisher settings.
    pub fn new(amqp_url: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            amqp_url: SecretUrl::new(amqp_url),
            namespace: namespace.into(),
            publisher: PublisherSettings::default(),
        }
    }
}

/// The broker a default installation reaches: the local one, as `guest`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The default prefix of every exchange and queue.
pub const DEFAULT_NAMESPACE: &str = "auditline";

impl Default for ClientConfig {
    /// [`DEFAULT_AMQP_URL`] and [`DEFAULT_NAMESPACE`].
    fn default() -> Self {
        Self::new(DEFAULT_AMQP_URL, DEFAULT_NAMESPACE)
    }
}

/// A connection URL that may hold a password. `Debug` and `Display` redact the
/// password so the URL can be logged; [`SecretUrl::expose`] gives the real one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://") else {
            return "***".into();
        };
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let user = userinfo.split(':').next().unwrap_or("");
                let masked = if userinfo.contains(':') {
                    format!("{user}:***")
                } else {
                    user.to_owned()
                };
                format!("{}://{}@{}", &url[..scheme_end], masked, &rest[at + 1..])
            }
            None => url.clone(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The confirmed publisher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherSettings {
    /// Events per NDJSON message in `publish_batch`.
    #[serde(default = "default_events_per_message")]
    pub events_per_message: usize,
    /// How long a publish may keep retrying (reconnecting) before it fails.
    #[serde(default = "default_publish_timeout_ms")]
    pub publish_timeout_ms: u64,
    /// Compress NDJSON batch messages with zstd (`content_encoding: zstd`).
    #[serde(default = "default_true")]
    pub compress: bool,
}

fn default_true() -> bool {
    true
}
fn default_events_per_message() -> usize {
    100
}
fn default_publish_timeout_ms() -> u64 {
    30_000
}
impl Default for PublisherSettings {
    fn default() -> Self {
        Self {
            events_per_message: default_events_per_message(),
            publish_timeout_ms: default_publish_timeout_ms(),
            compress: true,
        }
    }
}
