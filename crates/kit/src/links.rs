//! Signed, expiring links sent to people (double opt-in confirmation, one-click withdrawal).
//!
//! A token reads `base64url(JSON claims).base64url(HMAC-SHA256)`. The claims carry ids only
//! (tenant, contact, purpose key, the pending record), never an address. The tenant can be read
//! before verification so the public gateway knows where to route the token; only the owning
//! service, which holds the key, verifies it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// What a link does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    Confirm,
    Withdraw,
    /// Grants consent to the notice version it names (a consent-request mail's acceptance link).
    Accept,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    #[serde(rename = "t")]
    pub tenant_id: Uuid,
    #[serde(rename = "c")]
    pub contact_id: Uuid,
    #[serde(rename = "p")]
    pub purpose: String,
    #[serde(rename = "k")]
    pub kind: LinkKind,
    /// For a confirmation: the pending grant it confirms.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub record_id_opt: Option<Uuid>,
    /// For an acceptance: the notice version the person is shown and agrees to.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub notice_version_opt: Option<u32>,
    /// Unix seconds.
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is malformed")]
    Malformed,
    #[error("the link's signature is invalid")]
    BadSignature,
    #[error("the link has expired")]
    Expired,
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("hmac takes keys of any length")
}

/// Returns the token of `claims` signed with `key`.
pub fn sign(key: &[u8], claims: &LinkClaims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let mut m = mac(key);
    m.update(payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()))
}

/// Verifies a token's signature and expiry (`now` in unix seconds).
pub fn verify(key: &[u8], token: &str, now: i64) -> Result<LinkClaims, LinkError> {
    let (payload, sig) = token.split_once('.').ok_or(LinkError::Malformed)?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| LinkError::Malformed)?;
    let mut m = mac(key);
    m.update(payload.as_bytes());
    m.verify_slice(&sig).map_err(|_| LinkError::BadSignature)?;
    let claims: LinkClaims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).map_err(|_| LinkError::Malformed)?)
            .map_err(|_| LinkError::Malformed)?;
    if claims.exp < now {
        return Err(LinkError::Expired);
    }
    Ok(claims)
}

/// Reads the tenant of a token without verifying it (for routing only).
pub fn peek_tenant(token: &str) -> Option<Uuid> {
    let payload = token.split_once('.')?.0;
    let claims: LinkClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    Some(claims.tenant_id)
}

/// Returns the public id of a web form: it names the tenant, so public pages are routed and
/// scoped without a lookup across tenants.
pub fn form_public_id(tenant_id: Uuid, form_id: Uuid) -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(tenant_id.as_bytes());
    bytes[16..].copy_from_slice(form_id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads (tenant, form) from a public form id.
pub fn parse_form_public_id(public: &str) -> Option<(Uuid, Uuid)> {
    let bytes = URL_SAFE_NO_PAD.decode(public).ok()?;
    if bytes.len() != 32 {
        return None;
    }
    Some((Uuid::from_slice(&bytes[..16]).ok()?, Uuid::from_slice(&bytes[16..]).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> LinkClaims {
        LinkClaims {
            tenant_id: Uuid::now_v7(),
            contact_id: Uuid::now_v7(),
            purpose: "newsletter".into(),
            kind: LinkKind::Confirm,
            record_id_opt: Some(Uuid::now_v7()),
            notice_version_opt: None,
            exp,
        }
    }

    #[test]
    fn test_signed_link_verifies() {
        let c = claims(2_000);
        let token = sign(b"key", &c);
        assert_eq!(verify(b"key", &token, 1_000), Ok(c.clone()));
        assert_eq!(peek_tenant(&token), Some(c.tenant_id));
    }

    #[test]
    fn test_form_public_id_round_trips() {
        let (t, f) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(parse_form_public_id(&form_public_id(t, f)), Some((t, f)));
        assert_eq!(parse_form_public_id("short"), None);
    }

    #[test]
    fn test_expired_link_is_refused() {
        let token = sign(b"key", &claims(999));
        assert_eq!(verify(b"key", &token, 1_000), Err(LinkError::Expired));
    }

    #[test]
    fn test_tampered_link_is_refused() {
        let token = sign(b"key", &claims(2_000));
        let (_, sig) = token.split_once('.').unwrap();
        let mut other = claims(2_000);
        other.kind = LinkKind::Withdraw;
        let forged = format!("{}.{sig}", sign(b"key", &other).split_once('.').unwrap().0);
        assert_eq!(verify(b"key", &forged, 1_000), Err(LinkError::BadSignature));
        assert_eq!(verify(b"other key", &token, 1_000), Err(LinkError::BadSignature));
        assert_eq!(verify(b"key", "garbage", 1_000), Err(LinkError::Malformed));
    }
}
