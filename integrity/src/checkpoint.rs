//! Checkpoints: each seal chain's newest seal, written periodically into
//! storage, outside the database, and signed with the installation's
//! Ed25519 key.
//!
//! Checkpoints only move forward. Each one is numbered and names the
//! SHA-256 of the file before it, and the checkpointer signs a new one only
//! when the database still holds everything the previous one anchored: every
//! chain, each anchored seal with the same hash, and every seal after it
//! linked, recomputing and (with writer keys) signed by a writer. A
//! regression (a chain gone, a seal changed, a sequence gone backwards) is
//! refused: nothing is signed, `auditline_integrity_violations_total`
//! rises, an error is logged and the alert fires. Retention never removes
//! seals, so no drop record can excuse one. Several admin instances take
//! turns through an advisory lock, so the history never forks.
//!
//! `verify` walks the whole history (or from one named checkpoint): the
//! signatures, the `previous` links, that no checkpoint anchors less than
//! the one before, and every anchored seal against the database. Someone
//! who can rewrite the database but not the storage, and holds neither key,
//! cannot remove or rewrite sealed batches without `verify` noticing; at
//! most the batches committed after the last checkpoint can be cut off
//! (and only before the next one), and with writer keys not even rewritten.
//!
//! Files (in `integrity.checkpoint_destination`): `checkpoint-<time>.json`
//! for each one written, and `checkpoint-latest.json`, a copy of the newest.

use crate::storage::Storage;
use crate::verify::{self, Report};
use anyhow::Context;
use auditline_shared::{
    auth::{hex, unhex},
    settings::IntegritySettings,
    signing::{self, SigningKey},
};
use chrono::{DateTime, Utc};
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use utoipa::ToSchema;
use uuid::Uuid;

/// The copy of the newest checkpoint.
pub const LATEST: &str = "checkpoint-latest.json";
/// Every checkpoint file's name starts with this.
pub const PREFIX: &str = "checkpoint-";
/// The format written now: numbered, linked to the previous file.
pub const VERSION: u32 = 2;
/// The advisory lock checkpointers take turns with.
const LOCK: i64 = 0x6175_6469_7463_6b70;

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
    /// 1, 2, 3, … (version 2 on; version 1 files have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    pub created_at: DateTime<Utc>,
    /// SHA-256 (hex) of the previous checkpoint file; absent on the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    pub chains: Vec<Anchored>,
}

/// A checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Checkpoint {
    #[serde(flatten)]
    pub body: Body,
    /// The signer's Ed25519 public key (hex), when signed.
    pub public_key: Option<String>,
    /// Ed25519 signature (hex) over the JSON of the other fields.
    pub signature: Option<String>,
}

impl std::ops::Deref for Checkpoint {
    type Target = Body;
    fn deref(&self) -> &Body {
        &self.body
    }
}

/// A checkpoint as read from storage.
#[derive(Debug, Clone)]
pub struct Stored {
    pub file: String,
    /// SHA-256 (hex) of the file's bytes, which the next one names.
    pub sha256: String,
    pub checkpoint: Checkpoint,
}

impl std::ops::Deref for Stored {
    type Target = Body;
    fn deref(&self) -> &Body {
        &self.checkpoint.body
    }
}

/// What is wrong with a seal's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealSignature {
    /// No signature, and writer keys are configured.
    Missing,
    /// Signed by a key that is not a configured writer key.
    UnknownKey,
    /// The signature does not verify.
    Invalid,
}

/// The installation's keys: the checkpoint key pair and the writers' public keys.
pub struct Keys {
    signing: Option<SigningKey>,
    verify: Option<[u8; 32]>,
    writers: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("signing", &self.signing.is_some())
            .field("verify", &self.verify.as_ref().map(|k| hex(k)))
            .field(
                "writers",
                &self.writers.iter().map(|k| hex(k)).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keys {
    pub fn from_settings(settings: &IntegritySettings) -> anyhow::Result<Self> {
        let signing = SigningKey::load(
            settings.signing_key.as_ref(),
            settings.signing_key_file.as_deref(),
            "integrity.signing_key",
        )?;
        let verify = match &settings.verify_key {
            Some(key) => Some(signing::public_key(key, "integrity.verify_key")?),
            None => signing.as_ref().map(SigningKey::public),
        };
        let mut writers = settings
            .writer_verify_keys
            .iter()
            .map(|k| signing::public_key(k, "integrity.writer_verify_keys"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if writers.is_empty() {
            let own = SigningKey::load(
                settings.writer_key.as_ref(),
                settings.writer_key_file.as_deref(),
                "integrity.writer_key",
            )?;
            writers.extend(own.map(|k| k.public()));
        }
        Ok(Self {
            signing,
            verify,
            writers,
        })
    }

    /// A new key pair: (private seed, public key), hex.
    pub fn generate() -> anyhow::Result<(String, String)> {
        SigningKey::generate()
    }

    /// Signs `message`: (public key, signature), hex; `None` without a signing key.
    pub fn sign(&self, message: &[u8]) -> Option<(String, String)> {
        self.signing
            .as_ref()
            .map(|k| (hex(&k.public()), hex(&k.sign(message))))
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
        if signing::verify(key, message, &signature) {
            Ok(())
        } else {
            Err("its signature does not verify with the configured key".to_owned())
        }
    }

    pub fn can_verify(&self) -> bool {
        self.verify.is_some()
    }

    /// How many writer public keys seal signatures are checked against (0: not checked).
    pub fn writer_keys(&self) -> usize {
        self.writers.len()
    }

    /// Checks a seal's signature; always passes without writer keys.
    pub fn check_seal(
        &self,
        seal_hash: &[u8],
        key: Option<&[u8]>,
        signature: Option<&[u8]>,
    ) -> Result<(), SealSignature> {
        if self.writers.is_empty() {
            return Ok(());
        }
        let (Some(key), Some(signature)) = (key, signature) else {
            return Err(SealSignature::Missing);
        };
        if !self.writers.iter().any(|w| w[..] == *key) {
            return Err(SealSignature::UnknownKey);
        }
        if signing::verify(
            key,
            &auditline_shared::seal::signed_message(seal_hash),
            signature,
        ) {
            Ok(())
        } else {
            Err(SealSignature::Invalid)
        }
    }
}

/// Why no checkpoint was written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The database no longer holds what the previous checkpoint anchored,
    /// or a new seal does not verify: refused, never signed.
    #[error("integrity violation, checkpoint refused: {}", .0.join("; "))]
    Violation(Vec<String>),
    /// Another instance is writing a checkpoint right now.
    #[error("another instance is writing a checkpoint")]
    Busy,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// SHA-256 (hex) of a checkpoint file's bytes.
pub fn file_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Checks the database against the newest checkpoint, then builds, signs
/// and stores the next one (see the module doc).
pub async fn publish(
    pool: &PgPool,
    storage: &Storage,
    destination: &str,
    keys: &Keys,
) -> Result<(String, Checkpoint), PublishError> {
    // Held until the transaction ends, on this connection: one
    // checkpointer at a time across instances.
    let mut lock = pool.begin().await.context("cannot reach the database")?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK)
        .fetch_one(&mut *lock)
        .await
        .context("cannot take the checkpoint lock")?;
    if !locked {
        return Err(PublishError::Busy);
    }
    let previous = match storage.get(destination, LATEST).await? {
        None => None,
        Some(bytes) => match parse(&bytes, keys) {
            Ok(cp) => Some((file_hash(&bytes), cp)),
            Err(e) => {
                return Err(PublishError::Violation(vec![format!(
                    "{LATEST} is refused ({e}); it was replaced outside Auditline, or the \
                     checkpoint key changed (then move the old history aside deliberately)"
                )]));
            }
        },
    };
    let mut report = Report::new(None, None);
    let since: HashMap<String, i64> = previous
        .iter()
        .flat_map(|(_, cp)| cp.chains.iter().map(|a| (a.chain.clone(), a.seq)))
        .collect();
    let seals = verify::check_chains(pool, keys, &since, &mut report).await?;
    if let Some((_, cp)) = &previous {
        verify::check_anchors(
            std::slice::from_ref(&Stored {
                file: LATEST.into(),
                sha256: String::new(),
                checkpoint: cp.clone(),
            }),
            &seals,
            &mut report,
        );
    }
    if !report.ok {
        return Err(PublishError::Violation(
            report.findings.iter().map(|f| f.message.clone()).collect(),
        ));
    }
    let body = Body {
        version: VERSION,
        number: Some(previous.as_ref().and_then(|(_, cp)| cp.number).unwrap_or(0) + 1),
        created_at: Utc::now(),
        previous: previous.map(|(hash, _)| hash),
        chains: seals.tips(),
    };
    let signed = keys.sign(&serde_json::to_vec(&body).context("checkpoint JSON")?);
    let checkpoint = Checkpoint {
        body,
        public_key: signed.as_ref().map(|(k, _)| k.clone()),
        signature: signed.map(|(_, s)| s),
    };
    let json = serde_json::to_vec_pretty(&checkpoint).context("checkpoint JSON")?;
    let file = format!(
        "{PREFIX}{}.json",
        checkpoint.created_at.format("%Y%m%dT%H%M%S%.6fZ")
    );
    storage.put(destination, &file, json.clone()).await?;
    storage.put(destination, LATEST, json).await?;
    lock.rollback()
        .await
        .context("cannot release the checkpoint lock")?;
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

/// Every checkpoint file in `destination`, oldest first, from `start` (a
/// file name) when given; each file that cannot be read or whose signature
/// does not verify is an `Err` in its place.
pub async fn history(
    storage: &Storage,
    destination: &str,
    keys: &Keys,
    start: Option<&str>,
) -> anyhow::Result<Vec<Result<Stored, String>>> {
    let mut names: Vec<String> = storage
        .list(destination, PREFIX)
        .await?
        .into_iter()
        .filter(|n| n.ends_with(".json") && n != LATEST)
        .collect();
    // The names carry the creation time, fixed width: they sort by it.
    names.sort();
    if let Some(start) = start {
        let Some(at) = names.iter().position(|n| n == start) else {
            anyhow::bail!("no checkpoint named {start:?} in {destination:?}");
        };
        names.drain(..at);
    }
    let mut out = Vec::with_capacity(names.len());
    for file in names {
        let bytes = storage
            .get(destination, &file)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{file} disappeared while it was read"))?;
        out.push(
            parse(&bytes, keys)
                .map(|checkpoint| Stored {
                    file: file.clone(),
                    sha256: file_hash(&bytes),
                    checkpoint,
                })
                .map_err(|e| format!("{file}: {e}")),
        );
    }
    Ok(out)
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
    violations: IntCounter,
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
            "Checkpoints that could not be written (storage or database errors)",
        )?;
        let violations = IntCounter::new(
            "auditline_integrity_violations_total",
            "Checkpoints refused because the database no longer holds what the previous one anchored, or a new seal does not verify",
        )?;
        registry.register(Box::new(seq.clone()))?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(violations.clone()))?;
        Ok(Self {
            seq,
            published,
            failures,
            violations,
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

    /// Counts and logs a failed attempt.
    pub fn failed(&self, error: &PublishError) {
        match error {
            PublishError::Busy => {
                tracing::debug!("another instance is writing a checkpoint");
            }
            PublishError::Violation(problems) => {
                self.violations.inc();
                tracing::error!(
                    problems = %problems.join("; "),
                    "INTEGRITY VIOLATION: the database no longer holds what the last checkpoint \
                     anchored, or a seal does not verify; no checkpoint is signed until this is \
                     investigated (run `auditline verify`)"
                );
            }
            PublishError::Unexpected(e) => {
                self.failures.inc();
                tracing::warn!(error = %format!("{e:#}"), "cannot write a checkpoint");
            }
        }
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
            Err(e) => metrics.failed(&e),
        }
    }
}
