//! Signed desired states. The operator's Ed25519 key signs each host's document; agents
//! hold the public keys they trust and refuse anything else. A stolen agent credential
//! can write etcd keys (if RBAC is wrong) but cannot forge a document another agent
//! accepts.
//!
//! Key files are hex text: `signing.key` holds the 32-byte secret seed (mode 0600),
//! `signing.pub` the 32-byte public key.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, Verifier};
use hids_types::desired::{DesiredState, SignedDocument, ENVELOPE_VERSION};
use sha2::{Digest, Sha256};

use crate::hex;

pub const SECRET_FILE: &str = "signing.key";
pub const PUBLIC_FILE: &str = "signing.pub";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a hex Ed25519 key of 32 bytes")]
    Format { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a desired state was refused. The text goes to the agent's log and, as
/// `desired_error`, to its status key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed desired state: {0}")]
    Malformed(String),
    #[error("envelope version {0} is not supported (this agent reads {ENVELOPE_VERSION})")]
    Version(u32),
    #[error("signed by key {0}, which this agent does not trust")]
    UntrustedKey(String),
    #[error("bad signature (document altered, or not signed by key {0})")]
    BadSignature(String),
    #[error("document is for host {found}, not this host ({expected})")]
    WrongHost { expected: String, found: String },
    #[error(
        "generation {offered} is not above the applied generation {applied} (rollback refused)"
    )]
    Rollback { applied: u64, offered: u64 },
    #[error("body blob {0} is missing")]
    BlobMissing(String),
    #[error("body blob {0} does not match its hash")]
    BlobMismatch(String),
}

/// The operator's signing key.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// A new key from the kernel's random source.
    ///
    /// # Errors
    /// When `/dev/urandom` cannot be read.
    pub fn generate() -> std::io::Result<Self> {
        let seed = crate::os_random::<32>()?;
        Ok(SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// # Errors
    /// When the file is unreadable or not a hex 32-byte seed.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let seed = read_hex32(path)?;
        Ok(SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// Writes `signing.key` (0600) and `signing.pub` into `dir`, refusing to overwrite.
    ///
    /// # Errors
    /// When a file exists already or cannot be written.
    pub fn save(&self, dir: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let secret = dir.join(SECRET_FILE);
        let public = dir.join(PUBLIC_FILE);
        let write = |path: &Path, text: String, mode: u32| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|source| KeyError::Write {
                    path: path.to_owned(),
                    source,
                })
        };
        write(&secret, hex::encode(&self.key.to_bytes()) + "\n", 0o600)?;
        write(&public, self.public_hex() + "\n", 0o644)?;
        Ok((secret, public))
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    pub fn key_id(&self) -> String {
        key_id(&self.key.verifying_key())
    }

    /// Serializes and signs a desired state.
    pub fn sign(&self, state: &DesiredState) -> SignedDocument {
        // Serializing plain data with string keys cannot fail.
        let doc = serde_json::to_string(state).unwrap_or_default();
        let sig = self.key.sign(doc.as_bytes());
        SignedDocument {
            v: ENVELOPE_VERSION,
            key_id: self.key_id(),
            sig: hex::encode(&sig.to_bytes()),
            doc,
        }
    }
}

/// `key_id`: the first 8 bytes of SHA-256 of the public key, hex.
pub fn key_id(key: &ed25519_dalek::VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// SHA-256 of a blob, hex: its name under `blobs/`.
pub fn blob_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes))
}

/// The settings a verified document names: inline, from `blob` (checked against the
/// signed hash), or none.
///
/// # Errors
/// When the document names a blob and `blob` is missing, does not match the hash, or
/// is not a settings document.
pub fn signed_body(
    state: &hids_types::desired::DesiredState,
    blob: Option<&[u8]>,
) -> Result<hids_types::desired::DesiredBody, Refusal> {
    match (&state.body, &state.body_sha256) {
        (_, Some(hash)) => {
            let blob = blob.ok_or_else(|| Refusal::BlobMissing(hash.clone()))?;
            if &blob_hash(blob) != hash {
                return Err(Refusal::BlobMismatch(hash.clone()));
            }
            serde_json::from_slice(blob)
                .map_err(|e| Refusal::Malformed(format!("body blob {hash}: {e}")))
        }
        (Some(body), None) => Ok(body.clone()),
        (None, None) => Ok(Default::default()),
    }
}

fn read_hex32(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    hex::decode(text.trim())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| KeyError::Format {
            path: path.to_owned(),
        })
}

/// The public keys an agent accepts desired states from.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, ed25519_dalek::VerifyingKey)>,
}

/// A desired state that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// Newer than the applied one: apply it.
    New(Box<DesiredState>),
    /// The generation already applied (a re-read after a reconnect): nothing to do.
    Current,
}

impl TrustedKeys {
    /// Loads `signing.pub` files.
    ///
    /// # Errors
    /// When a file is unreadable or not a hex 32-byte public key.
    pub fn load(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for p in paths {
            let bytes = read_hex32(p)?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|_| KeyError::Format { path: p.clone() })?;
            keys.push((key_id(&key), key));
        }
        Ok(TrustedKeys { keys })
    }

    /// Trusts exactly the public half of `key` (for an operator reading back its own
    /// documents).
    pub fn from_signing_key(key: &SigningKey) -> Self {
        let vk = key.key.verifying_key();
        TrustedKeys {
            keys: vec![(key_id(&vk), vk)],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a raw `desired/<host_id>` value: envelope, signature by a trusted key,
    /// document, host id, and generation against the one applied.
    ///
    /// # Errors
    /// The [`Refusal`] saying exactly why.
    pub fn verify(
        &self,
        raw: &[u8],
        host_id: &str,
        applied_generation: u64,
    ) -> Result<Verified, Refusal> {
        let env: SignedDocument = serde_json::from_slice(raw)
            .map_err(|e| Refusal::Malformed(format!("not a signed envelope: {e}")))?;
        if env.v != ENVELOPE_VERSION {
            return Err(Refusal::Version(env.v));
        }
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == env.key_id)
            .map(|(_, k)| k)
            .ok_or_else(|| Refusal::UntrustedKey(env.key_id.clone()))?;
        let sig = hex::decode(&env.sig)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| ed25519_dalek::Signature::from_bytes(&b))
            .ok_or_else(|| Refusal::BadSignature(env.key_id.clone()))?;
        key.verify(env.doc.as_bytes(), &sig)
            .map_err(|_| Refusal::BadSignature(env.key_id.clone()))?;
        let state: DesiredState = serde_json::from_str(&env.doc)
            .map_err(|e| Refusal::Malformed(format!("signed document: {e}")))?;
        if state.host_id != host_id {
            return Err(Refusal::WrongHost {
                expected: host_id.to_owned(),
                found: state.host_id,
            });
        }
        if state.generation < applied_generation {
            return Err(Refusal::Rollback {
                applied: applied_generation,
                offered: state.generation,
            });
        }
        if state.generation == applied_generation {
            return Ok(Verified::Current);
        }
        Ok(Verified::New(Box::new(state)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hids_types::Timestamp;

    fn state(host: &str, generation: u64) -> DesiredState {
        DesiredState {
            generation,
            host_id: host.into(),
            issued_at: Timestamp::now(),
            issued_by: "test".into(),
            body: None,
            body_sha256: None,
            commands: Vec::new(),
        }
    }

    fn keys() -> (SigningKey, TrustedKeys, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let (_, public) = key.save(dir.path()).unwrap();
        let trusted = TrustedKeys::load(&[public]).unwrap();
        (key, trusted, dir)
    }

    #[test]
    fn signed_document_is_accepted_once() {
        let (key, trusted, _dir) = keys();
        let raw = serde_json::to_vec(&key.sign(&state("h1", 5))).unwrap();
        assert!(matches!(trusted.verify(&raw, "h1", 4), Ok(Verified::New(s)) if s.generation == 5));
        assert_eq!(trusted.verify(&raw, "h1", 5), Ok(Verified::Current));
    }

    #[test]
    fn every_forgery_is_refused_with_its_reason() {
        let (key, trusted, _dir) = keys();
        let env = key.sign(&state("h1", 5));

        let mut tampered = env.clone();
        tampered.doc = tampered.doc.replace("\"generation\":5", "\"generation\":6");
        let raw = serde_json::to_vec(&tampered).unwrap();
        assert!(matches!(
            trusted.verify(&raw, "h1", 0),
            Err(Refusal::BadSignature(_))
        ));

        let other = SigningKey::generate().unwrap();
        let raw = serde_json::to_vec(&other.sign(&state("h1", 5))).unwrap();
        assert!(matches!(
            trusted.verify(&raw, "h1", 0),
            Err(Refusal::UntrustedKey(_))
        ));

        let raw = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            trusted.verify(&raw, "h2", 0),
            Err(Refusal::WrongHost { .. })
        ));
        assert_eq!(
            trusted.verify(&raw, "h1", 9),
            Err(Refusal::Rollback {
                applied: 9,
                offered: 5
            })
        );

        let unsigned = serde_json::to_vec(&state("h1", 5)).unwrap();
        assert!(matches!(
            trusted.verify(&unsigned, "h1", 0),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(
            trusted.verify(b"garbage", "h1", 0),
            Err(Refusal::Malformed(_))
        ));
        let mut bad_sig = env.clone();
        bad_sig.sig = "zz".into();
        let raw = serde_json::to_vec(&bad_sig).unwrap();
        assert!(matches!(
            trusted.verify(&raw, "h1", 0),
            Err(Refusal::BadSignature(_))
        ));
    }

    #[test]
    fn key_files_round_trip_and_are_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let (secret, _) = key.save(dir.path()).unwrap();
        assert_eq!(
            SigningKey::load(&secret).unwrap().public_hex(),
            key.public_hex()
        );
        assert!(key.save(dir.path()).is_err());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(dir.path().join("bad.pub"), "nothex").unwrap();
        assert!(TrustedKeys::load(&[dir.path().join("bad.pub")]).is_err());
    }
}
