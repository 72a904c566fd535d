//! Ed25519 keys: the writers' seal key and the checkpoint key.
//!
//! A private key is the 32-byte seed written as 64 hex digits, given inline
//! (a setting, usually from the environment) or in a file of its own; it is
//! never stored in PostgreSQL, so a database superuser cannot sign. A public
//! key is 64 hex digits too. `auditline keygen` prints a new pair.

use crate::auth::{hex, unhex};
use crate::settings::Secret;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Length of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// A private Ed25519 key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &hex(&self.public))
            .finish_non_exhaustive()
    }
}

/// 32 bytes written as 64 hex digits.
fn key32(text: &str, what: &str) -> anyhow::Result<[u8; 32]> {
    unhex(text.trim())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| anyhow::anyhow!("{what} must be 32 bytes written as 64 hex digits"))
}

/// A public key given as 64 hex digits; `what` names the setting in the error.
pub fn public_key(text: &str, what: &str) -> anyhow::Result<[u8; 32]> {
    key32(text, what)
}

impl SigningKey {
    /// The key of a hex seed; `what` names the setting in the error (never the key).
    pub fn from_seed_hex(text: &str, what: &str) -> anyhow::Result<Self> {
        let seed = key32(text, what)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| anyhow::anyhow!("{what} is not an Ed25519 seed"))?;
        let mut public = [0; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(Self { pair, public })
    }

    /// The key given inline or in a file (not both); `None` when neither is set.
    pub fn load(
        inline: Option<&Secret>,
        file: Option<&str>,
        what: &str,
    ) -> anyhow::Result<Option<Self>> {
        match (inline, file) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => anyhow::bail!("set {what} or {what}_file, not both"),
            (Some(secret), None) => Self::from_seed_hex(secret.expose(), what).map(Some),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("{what}_file: cannot read {path}: {e}"))?;
                Self::from_seed_hex(&text, &format!("{what}_file ({path})")).map(Some)
            }
        }
    }

    /// A new key pair: (private seed, public key), hex.
    pub fn generate() -> anyhow::Result<(String, String)> {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let key = Self::from_seed_hex(&hex(&seed), "a new key")?;
        Ok((hex(&seed), hex(&key.public)))
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// Whether `signature` is `public`'s signature of `message`.
pub fn verify(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_under_its_key_only() {
        let (seed, public) = SigningKey::generate().expect("pair");
        let key = SigningKey::from_seed_hex(&seed, "k").expect("key");
        assert_eq!(hex(&key.public()), public);
        let signature = key.sign(b"message");
        assert!(verify(&key.public(), b"message", &signature));
        assert!(!verify(&key.public(), b"messagE", &signature));
        let (other, _) = SigningKey::generate().expect("pair");
        let other = SigningKey::from_seed_hex(&other, "k").expect("key");
        assert!(!verify(&other.public(), b"message", &signature));
        // The key never shows in Debug output.
        assert!(!format!("{key:?}").contains(&seed));
    }

    #[test]
    fn keys_load_from_a_file_or_inline_not_both() {
        let (seed, _) = SigningKey::generate().expect("pair");
        let path = std::env::temp_dir().join(format!("auditline-key-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, format!("{seed}\n")).expect("write");
        let file = path.to_str();
        let from_file = SigningKey::load(None, file, "k").expect("load");
        let inline = SigningKey::load(Some(&Secret::new(seed.clone())), None, "k").expect("load");
        assert_eq!(from_file.map(|k| k.public()), inline.map(|k| k.public()));
        assert!(SigningKey::load(Some(&Secret::new(seed.clone())), file, "k").is_err());
        let err = SigningKey::load(Some(&Secret::new("zz")), None, "k").expect_err("bad");
        assert!(!err.to_string().contains("zz"));
        std::fs::remove_file(path).expect("remove");
    }
}
