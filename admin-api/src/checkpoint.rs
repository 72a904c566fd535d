//! Checkpoints: each seal chain's newest seal, written periodically (also
//! when nothing changed) into storage, outside the database, and signed with
//! the installation's Ed25519 key. Someone who can rewrite the database but
//! not the storage cannot remove the newest batches, or rewrite a chain,
//! without `verify` noticing; at most the batches committed after the last
//! checkpoint are unprotected.
//!
//! Files (in `integrity.checkpoint_destination`): `checkpoint-<time>.json` for
//! each one written and `checkpoint-latest.json`, which `verify` reads.

use crate::storage::Storage;
use anyhow::Context;
use auditline_shared::{
    auth::{hex, unhex},
    settings::IntegritySettings,
};
use chrono::{DateTime, Utc};
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::time::Duration;
use utoipa::ToSchema;
use uuid::Uuid;

/// The file `verify` reads.
pub const LATEST: &str = "checkpoint-latest.json";

/// One chain's newest seal at checkpoint time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct Anchored {
    pub chain: String,
    pub seq: i64,
    /// Hex.
    pub seal_hash: String,
    pub batch_id: Uuid,
    pub committed_at: DateTime<Utc>,
}

/// What is signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Body {
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub chains: Vec<Anchored>,
}

/// A checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Checkpoint {
    #[serde(flatten)]
    pub body: Body,
    /// The signer's Ed25519 public key (hex), when signed.
    pub public_key: Option<String>,
    /// Ed25519 signature (hex) over the JSON of `version`, `created_at` and `chains`.
    pub signature: Option<String>,
}

impl std::ops::Deref for Checkpoint {
    type Target = Body;
    fn deref(&self) -> &Body {
        &self.body
    }
}

/// The installation's keys.
pub struct Keys {
    signing: Option<Ed25519KeyPair>,
    verify: Option<Vec<u8>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("signing", &self.signing.is_some())
            .field("verify", &self.verify.as_deref().map(hex))
            .finish()
    }
}

/// A 32-byte key written as 64 hex digits.
fn key32(text: &str, what: &str) -> anyhow::Result<[u8; 32]> {
    unhex(text.trim())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| anyhow::anyhow!("{what} must be 32 bytes written as 64 hex digits"))
}

impl Keys {
    pub fn from_settings(settings: &IntegritySettings) -> anyhow::Result<Self> {
        let signing =
            match &settings.signing_key {
                None => None,
                Some(secret) => {
                    let seed = key32(secret.expose(), "integrity.signing_key")?;
                    Some(Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| {
                        anyhow::anyhow!("integrity.signing_key is not an Ed25519 seed")
                    })?)
                }
            };
        let verify = match &settings.verify_key {
            Some(key) => Some(key32(key, "integrity.verify_key")?.to_vec()),
            None => signing.as_ref().map(|k| k.public_key().as_ref().to_vec()),
        };
        Ok(Self { signing, verify })
    }

    /// A new key pair: (private seed, public key), hex.
    pub fn generate() -> anyhow::Result<(String, String)> {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| anyhow::anyhow!("cannot make a key pair"))?;
        Ok((hex(&seed), hex(pair.public_key().as_ref())))
    }

    /// Signs `message`: (public key, signature), hex; `None` without a signing key.
    pub fn sign(&self, message: &[u8]) -> Option<(String, String)> {
        self.signing
            .as_ref()
            .map(|k| (hex(k.public_key().as_ref()), hex(k.sign(message).as_ref())))
    }

    /// Checks a signature made by [`Keys::sign`]. Without a verify key
    /// anything passes; with one, a missing or wrong signature is an error.
    pub fn check(&self, message: &[u8], signature: Option<&str>) -> Result<(), String> {
        let Some(key) = &self.verify else {
            return Ok(());
        };
        let Some(signature) = signature else {
            return Err("it is not signed, and a verify key is configured".into());
        };
        let signature = unhex(signature).ok_or("its signature is not hexadecimal")?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(message, &signature)
            .map_err(|_| "its signature does not verify with the configured key".to_owned())
    }

    pub fn can_verify(&self) -> bool {
        self.verify.is_some()
    }
}

/// Each chain's newest seal.
pub async fn tips(pool: &PgPool) -> sqlx::Result<Vec<Anchored>> {
    sqlx::query_as(
        "SELECT DISTINCT ON (chain) chain, seq, encode(seal_hash, 'hex') AS seal_hash, batch_id, committed_at \
         FROM auditline.batches WHERE chain IS NOT NULL ORDER BY chain, seq DESC",
    )
    .fetch_all(pool)
    .await
}

/// Builds, signs and stores a checkpoint of the chains' current tips.
pub async fn publish(
    pool: &PgPool,
    storage: &Storage,
    destination: &str,
    keys: &Keys,
) -> anyhow::Result<(String, Checkpoint)> {
    let body = Body {
        version: 1,
        created_at: Utc::now(),
        chains: tips(pool).await.context("cannot read the seal chains")?,
    };
    let signed = keys.sign(&serde_json::to_vec(&body)?);
    let checkpoint = Checkpoint {
        body,
        public_key: signed.as_ref().map(|(k, _)| k.clone()),
        signature: signed.map(|(_, s)| s),
    };
    let json = serde_json::to_vec_pretty(&checkpoint)?;
    let file = format!(
        "checkpoint-{}.json",
        checkpoint.created_at.format("%Y%m%dT%H%M%S%.6fZ")
    );
    storage.put(destination, &file, json.clone()).await?;
    storage.put(destination, LATEST, json).await?;
    Ok((file, checkpoint))
}

/// Reads and checks the newest checkpoint: `None` when none was written yet.
pub async fn latest(
    storage: &Storage,
    destination: &str,
    keys: &Keys,
) -> Option<Result<(String, Checkpoint), String>> {
    let bytes = match storage.get(destination, LATEST).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return None,
        Err(e) => return Some(Err(format!("cannot read {LATEST}: {e:#}"))),
    };
    Some(parse(&bytes, keys).map(|cp| (LATEST.to_owned(), cp)))
}

/// Parses a checkpoint file and checks its signature.
pub fn parse(bytes: &[u8], keys: &Keys) -> Result<Checkpoint, String> {
    let cp: Checkpoint = serde_json::from_slice(bytes)
        .map_err(|e| format!("the checkpoint is not readable: {e}"))?;
    let message = serde_json::to_vec(&cp.body).map_err(|e| e.to_string())?;
    keys.check(&message, cp.signature.as_deref())
        .map_err(|e| format!("the checkpoint of {} is refused: {e}", cp.created_at))?;
    Ok(cp)
}

/// The checkpoint metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    seq: IntGaugeVec,
    published: IntGauge,
    failures: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let seq = IntGaugeVec::new(
            Opts::new(
                "auditline_checkpoint_seal_seq",
                "Newest seal of each chain (writer pipeline) in the last checkpoint; chains with a seal in the last 24 h",
            ),
            &["chain"],
        )?;
        let published = IntGauge::new(
            "auditline_checkpoint_published_timestamp_seconds",
            "When the last checkpoint was written to storage (Unix time)",
        )?;
        let failures = IntCounter::new(
            "auditline_checkpoint_failures_total",
            "Checkpoints that could not be written",
        )?;
        registry.register(Box::new(seq.clone()))?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Self {
            seq,
            published,
            failures,
        })
    }

    fn observe(&self, cp: &Checkpoint) {
        self.seq.reset();
        let recent = cp.created_at - chrono::Duration::hours(24);
        for chain in cp.chains.iter().filter(|c| c.committed_at >= recent) {
            self.seq.with_label_values(&[&chain.chain]).set(chain.seq);
        }
        self.published.set(cp.created_at.timestamp());
    }
}

/// Publishes a checkpoint every `interval` until the task is dropped.
pub async fn run(
    pool: PgPool,
    storage: Storage,
    destination: String,
    keys: std::sync::Arc<Keys>,
    interval: Duration,
    metrics: Metrics,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match publish(&pool, &storage, &destination, &keys).await {
            Ok((file, cp)) => {
                metrics.observe(&cp);
                tracing::debug!(file, chains = cp.chains.len(), "checkpoint written");
            }
            Err(e) => {
                metrics.failures.inc();
                tracing::warn!(error = %format!("{e:#}"), "cannot write a checkpoint");
            }
        }
    }
}
