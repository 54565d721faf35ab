//! Console sessions: the signed-in credential sealed into a cookie (AES-256-GCM under a key
//! derived from the mesh signing key), with an expiry and a per-session CSRF token.
//!
//! The cookie is the only place the credential lives between requests: nothing is stored on the
//! server, so every gateway replica sharing the mesh key reads it, and rotating the mesh key
//! signs everybody out. A cookie that was tampered with, sealed under another key or is past its
//! expiry opens to nothing.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use carnet_kit::MeshKey;

/// The cookie's name.
pub const COOKIE: &str = "carnet_console";
/// How long a sign-in lasts, in seconds (a working day).
pub const SESSION_SECS: i64 = 8 * 3600;
/// How long the sign-in form's token is accepted, in seconds.
const LOGIN_TOKEN_SECS: i64 = 3600;
/// Binds a sealed value to its use: a ciphertext made for something else never opens here.
const AAD: &[u8] = b"carnet-console-session-v1";

/// What a session cookie holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The credential the user signed in with (an API key or a bearer token).
    #[serde(rename = "c")]
    pub credential: String,
    /// The token every form of this session carries back.
    #[serde(rename = "x")]
    pub csrf: String,
    /// Unix seconds after which the session is refused.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

impl Session {
    /// A new session for `credential`, valid [`SESSION_SECS`] from `now`.
    pub fn new(credential: String, now: i64) -> Session {
        let csrf: [u8; 24] = rand::random();
        Session { credential, csrf: URL_SAFE_NO_PAD.encode(csrf), expires_at: now + SESSION_SECS }
    }

    /// Whether `token` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        constant_time_eq(self.csrf.as_bytes(), token.as_bytes())
    }
}

/// Seals and opens session cookies and signs the sign-in form's token.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    login_key: Vec<u8>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// Keys derived from the mesh signing key (the gateway's one configured secret), one per use.
    pub fn new(mesh_key: &MeshKey) -> Sealer {
        let key = mesh_key.derive("gateway-console-session");
        Sealer {
            cipher: Aes256Gcm::new_from_slice(&key).expect("a derived key is 32 bytes"),
            login_key: mesh_key.derive("gateway-console-login"),
        }
    }

    /// Returns the cookie value holding `session`.
    pub fn seal(&self, session: &Session) -> String {
        self.seal_json(AAD, session)
    }

    /// Opens a cookie value; `None` when it was not sealed here, was altered or has expired.
    pub fn open(&self, value: &str, now: i64) -> Option<Session> {
        let session: Session = self.open_json(AAD, value)?;
        (session.expires_at > now).then_some(session)
    }

    /// Seals any value for one use, named by `aad`: a value sealed for one use never opens for
    /// another (a sign-in flow cookie is not a session).
    pub fn seal_json<T: Serialize>(&self, aad: &[u8], value: &T) -> String {
        let nonce: [u8; 12] = rand::random();
        let plaintext = serde_json::to_vec(value).expect("a sealed value serialises");
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plaintext, aad })
            .expect("sealing cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens what [`Sealer::seal_json`] sealed for `aad`.
    pub fn open_json<T: DeserializeOwned>(&self, aad: &[u8], value: &str) -> Option<T> {
        let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
        if bytes.len() < 12 + 16 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plaintext = self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad }).ok()?;
        serde_json::from_slice(&plaintext).ok()
    }

    /// A token for the sign-in form, so a page elsewhere cannot sign a browser in with its own key.
    pub fn login_token(&self, now: i64) -> String {
        format!("{now}.{}", URL_SAFE_NO_PAD.encode(self.login_mac(now)))
    }

    /// Whether `token` was made by [`Sealer::login_token`] within the last hour.
    pub fn login_token_valid(&self, token: &str, now: i64) -> bool {
        let Some((at, mac)) = token.split_once('.') else { return false };
        let (Ok(at), Ok(mac)) = (at.parse::<i64>(), URL_SAFE_NO_PAD.decode(mac)) else { return false };
        (0..=LOGIN_TOKEN_SECS).contains(&(now - at)) && constant_time_eq(&self.login_mac(at), &mac)
    }

    /// The tag of a sign-in page message (no session yet: the sign-in key).
    pub fn login_tag(&self, text: &str) -> String {
        tag(&self.login_key, text)
    }

    /// The key [`Sealer::login_tag`] uses.
    pub fn login_key(&self) -> &[u8] {
        &self.login_key
    }

    fn login_mac(&self, at: i64) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.login_key).expect("hmac takes keys of any length");
        mac.update(b"console-login:");
        mac.update(at.to_string().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// A short MAC of `text` under `key` (hex), so a message put in a URL by the console can be told
/// from one written by someone else.
pub fn tag(key: &[u8], text: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes keys of any length");
    mac.update(b"console-flash:");
    mac.update(text.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// Compares two secrets without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Set-Cookie` value carrying `sealed` (HttpOnly, SameSite=Strict, scoped to `/console`;
/// `Secure` when the request came over HTTPS).
pub fn set_cookie(sealed: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={sealed}; Path=/console; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn cookie_value<'a>(headers: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    headers.flat_map(|h| h.split(';')).map(str::trim).find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == COOKIE && !value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn sealer() -> Sealer {
        Sealer::new(&MeshKey::new(vec![7; 32]).unwrap())
    }

    #[test]
    fn test_session_seal_round_trips_and_hides_the_credential() {
        let s = sealer();
        let session = Session::new("carnet_abc_secret".into(), NOW);
        let sealed = s.seal(&session);
        assert!(!sealed.contains("carnet_abc"), "the credential is encrypted, not just signed");
        assert_eq!(s.open(&sealed, NOW + 10), Some(session.clone()));
        assert_ne!(s.seal(&session), sealed, "a fresh nonce per seal");
    }

    #[test]
    fn test_session_tampered_cookie_is_refused() {
        let s = sealer();
        let sealed = s.seal(&Session::new("carnet_abc_secret".into(), NOW));
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in [0, 12, bytes.len() / 2, bytes.len() - 1] {
            bytes[i] ^= 1;
            assert_eq!(s.open(&URL_SAFE_NO_PAD.encode(&bytes), NOW), None, "byte {i} flipped");
            bytes[i] ^= 1;
        }
        assert!(s.open(&URL_SAFE_NO_PAD.encode(&bytes), NOW).is_some(), "the untouched cookie still opens");
        assert_eq!(s.open(&sealed[..sealed.len() - 2], NOW), None, "truncated");
        assert_eq!(s.open("not base64 !", NOW), None);
        assert_eq!(s.open("", NOW), None);
    }

    #[test]
    fn test_session_sealed_under_another_key_is_refused() {
        let other = Sealer::new(&MeshKey::new(vec![8; 32]).unwrap());
        let sealed = other.seal(&Session::new("carnet_abc_secret".into(), NOW));
        assert_eq!(sealer().open(&sealed, NOW), None);
    }

    #[test]
    fn test_value_sealed_for_another_use_does_not_open_as_a_session() {
        let s = sealer();
        let session = Session::new("carnet_abc_secret".into(), NOW);
        let other_use = s.seal_json(b"carnet-console-oidc-v1", &session);
        assert_eq!(s.open(&other_use, NOW), None);
        assert_eq!(s.open_json::<Session>(b"carnet-console-oidc-v1", &other_use), Some(session));
    }

    #[test]
    fn test_session_expired_cookie_is_refused() {
        let s = sealer();
        let sealed = s.seal(&Session::new("carnet_abc_secret".into(), NOW));
        assert!(s.open(&sealed, NOW + SESSION_SECS - 1).is_some());
        assert_eq!(s.open(&sealed, NOW + SESSION_SECS), None);
        assert_eq!(s.open(&sealed, NOW + SESSION_SECS * 2), None);
    }

    #[test]
    fn test_session_csrf_token_is_random_and_checked() {
        let a = Session::new("k".into(), NOW);
        let b = Session::new("k".into(), NOW);
        assert_ne!(a.csrf, b.csrf);
        assert!(a.csrf_matches(&a.csrf.clone()));
        assert!(!a.csrf_matches(&b.csrf));
        assert!(!a.csrf_matches(""));
    }

    #[test]
    fn test_flash_tag_depends_on_key_and_text() {
        assert_eq!(tag(b"k1", "Saved"), tag(b"k1", "Saved"));
        assert_ne!(tag(b"k1", "Saved"), tag(b"k2", "Saved"));
        assert_ne!(tag(b"k1", "Saved"), tag(b"k1", "Saved!"));
        assert_eq!(tag(b"k1", "Saved").len(), 32);
    }

    #[test]
    fn test_login_token_expires_and_cannot_be_forged() {
        let s = sealer();
        let token = s.login_token(NOW);
        assert!(s.login_token_valid(&token, NOW + 60));
        assert!(!s.login_token_valid(&token, NOW + LOGIN_TOKEN_SECS + 1));
        let forged = format!("{}.{}", NOW + 5, token.split_once('.').unwrap().1);
        assert!(!s.login_token_valid(&forged, NOW + 60));
        assert!(!Sealer::new(&MeshKey::new(vec![8; 32]).unwrap()).login_token_valid(&token, NOW));
    }

    #[test]
    fn test_cookie_is_http_only_strict_and_found_among_others() {
        let c = set_cookie("abc", false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/console"));
        assert!(!c.contains("Secure"));
        assert!(set_cookie("abc", true).contains("; Secure"));
        let headers = ["theme=dark; carnet_console=abc.def", "other=1"];
        assert_eq!(cookie_value(headers.into_iter()), Some("abc.def"));
        assert_eq!(cookie_value(["carnet_console="].into_iter()), None);
    }
}
