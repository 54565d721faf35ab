//! The cryptographic pieces of the key store: AES-256-GCM sealing, the KMS interface with its
//! local implementation, subject keys and blind indexes. No IO here.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::KeyError;

/// Bytes of an AES-256-GCM nonce.
const NONCE_LEN: usize = 12;
/// First byte of a stored value: the value itself, unencrypted (`keys.encrypt = false`).
pub const FORMAT_PLAIN: u8 = 0;
/// First byte of a stored value: `nonce ‖ AES-256-GCM ciphertext ‖ tag` under a subject key.
pub const FORMAT_AES256GCM: u8 = 1;

/// Encrypts `plaintext` bound to `aad`; returns `nonce ‖ ciphertext ‖ tag`.
pub(crate) fn seal_raw(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Decrypts what [`seal_raw`] produced with the same `aad`; `None` when the key, the data or
/// the associated data do not match.
pub(crate) fn open_raw(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad }).ok()
}

pub(crate) fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new_from_slice(key).expect("a 32-byte key is an AES-256 key")
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes keys of any length")
}

/// The key-wrapping service: wraps and unwraps tenant keys. [`LocalKms`] holds its master key
/// in memory (from `keys.master_key`); an external KMS (Vault transit, AWS KMS, GCP KMS)
/// implements the same two calls, `context` being its encryption context / additional data.
#[async_trait::async_trait]
pub trait Kms: Send + Sync {
    /// The id of the key that wraps now, stored with every wrapped key so that an unwrap can
    /// name the key it needs (and a wrong master key is told apart from corrupt data).
    fn key_id(&self) -> &str;

    /// Encrypts a key bound to `context`.
    async fn wrap(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// Decrypts a key wrapped under `key_id` with the same `context`.
    async fn unwrap(&self, key_id: &str, context: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, KeyError>;
}

/// The built-in KMS: AES-256-GCM under a key derived from the configured master key.
pub struct LocalKms {
    cipher: Aes256Gcm,
    id: String,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalKms({})", self.id)
    }
}

impl LocalKms {
    /// The shortest master key accepted, in bytes.
    pub const MIN_LEN: usize = 32;

    /// Parses a master key: hex (64+ digits) or any text of at least 32 bytes.
    pub fn from_text(text: &str) -> Result<LocalKms, String> {
        let text = text.trim();
        let bytes = match hex::decode(text) {
            Ok(bytes) if bytes.len() >= Self::MIN_LEN => bytes,
            _ => text.as_bytes().to_vec(),
        };
        if bytes.len() < Self::MIN_LEN {
            return Err(format!("the master key must be at least {} bytes (or 64 hex digits)", Self::MIN_LEN));
        }
        Ok(LocalKms::from_bytes(&bytes))
    }

    /// Returns a KMS over a fresh random master key, and that key as hex.
    pub fn generate() -> (LocalKms, String) {
        let bytes: [u8; 32] = rand::random();
        (LocalKms::from_bytes(&bytes), hex::encode(bytes))
    }

    fn from_bytes(master: &[u8]) -> LocalKms {
        let derive = |label: &[u8]| {
            let mut m = hmac(master);
            m.update(b"carnet-kms-local:");
            m.update(label);
            let out: [u8; 32] = m.finalize().into_bytes().into();
            out
        };
        let fingerprint = derive(b"id");
        LocalKms { cipher: cipher(&derive(b"wrap")), id: format!("local:{}", hex::encode(&fingerprint[..8])) }
    }
}

#[async_trait::async_trait]
impl Kms for LocalKms {
    fn key_id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        Ok(seal_raw(&self.cipher, context, plaintext))
    }

    async fn unwrap(&self, key_id: &str, context: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, KeyError> {
        if key_id != self.id {
            return Err(KeyError::Kms(format!(
                "a tenant key is wrapped by {key_id}, but this node's master key is {}: keys.master_key is not the one the key store was created with",
                self.id
            )));
        }
        open_raw(&self.cipher, context, wrapped)
            .ok_or_else(|| KeyError::Kms("a wrapped tenant key does not unwrap".into()))
    }
}

/// One person's data key (random, 256 bits), ready to seal and open that person's values.
#[derive(Clone)]
pub struct SubjectKey(Arc<Aes256Gcm>);

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey([redacted])")
    }
}

impl SubjectKey {
    pub(crate) fn from_bytes(key: &[u8; 32]) -> SubjectKey {
        SubjectKey(Arc::new(cipher(key)))
    }

    /// A fresh random key, stored nowhere (for tests and tools).
    pub fn generate() -> SubjectKey {
        SubjectKey::from_bytes(&rand::random())
    }

    /// Encrypts `plaintext` bound to `aad` (say, the table and the record id, so a value moved
    /// to another record does not open): `FORMAT_AES256GCM ‖ nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
        out.push(FORMAT_AES256GCM);
        out.extend_from_slice(&seal_raw(&self.0, aad, plaintext));
        out
    }

    /// Decrypts a value [`SubjectKey::seal`] produced; fails when it is another key's or its
    /// associated data differs.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        match sealed.split_first() {
            Some((&FORMAT_AES256GCM, rest)) => open_raw(&self.0, aad, rest).ok_or(KeyError::Undecryptable),
            _ => Err(KeyError::Undecryptable),
        }
    }
}

/// A stored value, as [`open_value`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    Value(Vec<u8>),
    /// Encrypted under a key that no longer exists: the person was erased.
    Shredded,
}

/// Wraps a value stored without encryption (`keys.encrypt = false`).
pub fn plain_value(plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + plaintext.len());
    out.push(FORMAT_PLAIN);
    out.extend_from_slice(plaintext);
    out
}

/// Returns whether a stored value is encrypted (as opposed to stored plain).
pub fn is_encrypted(stored: &[u8]) -> bool {
    stored.first() == Some(&FORMAT_AES256GCM)
}

/// Reads a stored value: a plain one as it is, an encrypted one with its subject's key
/// (`key_opt` `None`: the key is destroyed, the value reads as [`Opened::Shredded`]).
pub fn open_value(key_opt: Option<&SubjectKey>, aad: &[u8], stored: &[u8]) -> Result<Opened, KeyError> {
    match stored.split_first() {
        Some((&FORMAT_PLAIN, rest)) => Ok(Opened::Value(rest.to_vec())),
        Some((&FORMAT_AES256GCM, _)) => match key_opt {
            Some(key) => key.open(aad, stored).map(Opened::Value),
            None => Ok(Opened::Shredded),
        },
        _ => Err(KeyError::Undecryptable),
    }
}

/// A tenant's blind-index key: keyed hashes of normalised values (e-mails, phones, name
/// tokens) for unique indexes and exact lookups, without the values.
#[derive(Clone)]
pub struct BlindIndex(Arc<[u8; 32]>);

impl std::fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindIndex([redacted])")
    }
}

impl BlindIndex {
    pub(crate) fn from_bytes(key: [u8; 32]) -> BlindIndex {
        BlindIndex(Arc::new(key))
    }

    /// Returns `HMAC-SHA256(tenant index key, field ‖ 0 ‖ value)` as hex; `value` must already
    /// be normalised.
    pub fn hash(&self, field: &str, value: &str) -> String {
        let mut m = hmac(self.0.as_slice());
        m.update(field.as_bytes());
        m.update(&[0]);
        m.update(value.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }
}

/// The associated data binding a wrapped subject key to its tenant, subject and tenant-key
/// version.
pub(crate) fn subject_context(tenant_id: Uuid, subject_id: Uuid, version: i32) -> Vec<u8> {
    let mut aad = b"carnet-subject-key:".to_vec();
    aad.extend_from_slice(tenant_id.as_bytes());
    aad.extend_from_slice(subject_id.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// The KMS context of a tenant key (`kind`: `data` for the versioned wrapping keys, `index`
/// for the blind-index key).
pub(crate) fn tenant_context(kind: &str, tenant_id: Uuid, version: i32) -> Vec<u8> {
    let mut aad = format!("carnet-tenant-key:{kind}:").into_bytes();
    aad.extend_from_slice(tenant_id.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sealed_values_open_only_with_their_key_and_associated_data() {
        let (a, b) = (SubjectKey::from_bytes(&rand::random()), SubjectKey::from_bytes(&rand::random()));
        let sealed = a.seal(b"contact:1", b"ada@example.org");
        assert!(is_encrypted(&sealed));
        assert!(!sealed.windows(3).any(|w| w == b"ada"));
        assert_eq!(a.open(b"contact:1", &sealed).unwrap(), b"ada@example.org");
        assert!(a.open(b"contact:2", &sealed).is_err(), "bound to its record");
        assert!(b.open(b"contact:1", &sealed).is_err(), "another person's key");
        assert_ne!(a.seal(b"contact:1", b"x"), a.seal(b"contact:1", b"x"), "fresh nonce every time");
    }

    #[test]
    fn test_open_value_reads_plain_values_and_reports_shredded_ones() {
        let key = SubjectKey::from_bytes(&rand::random());
        assert_eq!(open_value(None, b"", &plain_value(b"v")).unwrap(), Opened::Value(b"v".to_vec()));
        let sealed = key.seal(b"aad", b"v");
        assert_eq!(open_value(Some(&key), b"aad", &sealed).unwrap(), Opened::Value(b"v".to_vec()));
        assert_eq!(open_value(None, b"aad", &sealed).unwrap(), Opened::Shredded);
        assert!(open_value(Some(&key), b"aad", &[9, 9]).is_err());
    }

    #[tokio::test]
    async fn test_local_kms_unwraps_its_own_keys_only() {
        let kms = LocalKms::from_text(&"ab".repeat(32)).unwrap();
        let wrapped = kms.wrap(b"ctx", b"secret").await.unwrap();
        assert_eq!(kms.unwrap(kms.key_id(), b"ctx", &wrapped).await.unwrap(), b"secret");
        assert!(kms.unwrap(kms.key_id(), b"other", &wrapped).await.is_err());
        let other = LocalKms::from_text(&"cd".repeat(32)).unwrap();
        let err = other.unwrap(kms.key_id(), b"ctx", &wrapped).await.unwrap_err();
        assert!(err.to_string().contains("master key"), "{err}");
        assert!(LocalKms::from_text("short").is_err());
        assert_eq!(LocalKms::from_text(&"ab".repeat(32)).unwrap().key_id(), kms.key_id(), "stable id");
    }

    #[test]
    fn test_blind_index_is_keyed_and_per_field() {
        let (a, b) = (BlindIndex::from_bytes(rand::random()), BlindIndex::from_bytes(rand::random()));
        assert_eq!(a.hash("email", "ada@example.org"), a.hash("email", "ada@example.org"));
        assert_ne!(a.hash("email", "ada@example.org"), b.hash("email", "ada@example.org"));
        assert_ne!(a.hash("email", "x"), a.hash("phone", "x"));
        assert_eq!(a.hash("email", "x").len(), 64);
    }
}
