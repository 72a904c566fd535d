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
use auditline_shared::{
    auth::{hex, unhex},
    settings::IntegritySettings,
    signing::{self, SigningKey},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

/// The copy of the newest checkpoint.
pub const LATEST: &str = "checkpoint-latest.json";
/// Every checkpoint file's name starts with this.
pub const PREFIX: &str = "checkpoint-";
/// The format written now: numbered, linked to the previous file.
pub const VERSION: u32 = 2;

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

/// SHA-256 (hex) of a checkpoint file's bytes.
pub fn file_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
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
