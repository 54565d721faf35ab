//! Who is calling: an API key or an OIDC bearer JWT, turned into the [`Caller`] that is signed
//! into every call to the services. Also the per-caller rate limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use carnet_kit::{Caller, ErrorCode, Permission, ServiceError};

use crate::AppState;
use crate::error::ApiError;
use crate::keys::looks_like_key;
use crate::roles::Role;

/// The id of the current request, set by the router's middleware.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Auth(pub Caller);

impl Auth {
    /// Fails with `permission_denied` naming the permission unless the caller holds it.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        self.0.require(permission).map_err(ApiError::from)
    }

    /// Fails with `permission_denied` unless the caller holds one of `permissions`.
    pub fn require_any(&self, permissions: &[Permission]) -> Result<(), ApiError> {
        self.0.require_any(permissions).map_err(ApiError::from)
    }
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, message)
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated("missing Authorization: Bearer credentials"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthenticated("authorization must be `Bearer <api key or token>`"))?;
        let mut caller = if looks_like_key(token) {
            let key = state.keys.verify(token).await?;
            Caller::new(key.tenant_id, format!("key:{}", key.key_id.simple()), Role::union(&[key.role]))
        } else {
            let Some(jwt) = &state.jwt_opt else {
                return Err(unauthenticated("invalid api key"));
            };
            let identity =
                jwt.verify_with_refresh(token).await.map_err(|e| unauthenticated(&format!("invalid token: {e}")))?;
            let roles: Vec<Role> = identity.roles.iter().filter_map(|r| r.parse().ok()).collect();
            if roles.is_empty() {
                return Err(ApiError::new(ErrorCode::PermissionDenied, "the token carries no carnet role"));
            }
            // The subject may be an address at some providers: keep a stable pseudonym instead.
            let digest = Sha256::digest(format!("{}\n{}", state.config.oidc.issuer, identity.subject).as_bytes());
            Caller::new(identity.tenant_id, format!("oidc:{}", &hex::encode(digest)[..24]), Role::union(&roles))
        };
        if let Some(retry_after) = state.limiter.check(&caller.principal) {
            return Err(ApiError {
                error: ServiceError::new(ErrorCode::ResourceExhausted, "rate limit exceeded for this credential"),
                retry_after_secs_opt: Some(retry_after),
            });
        }
        if let Some(rid) = parts.extensions.get::<RequestId>() {
            caller.request_id = rid.0.clone();
        }
        Ok(Auth(caller))
    }
}

/// A token bucket per principal: `per_second` sustained, `burst` at once.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `principal`; returns the seconds to wait when none is left.
    pub fn check(&self, principal: &str) -> Option<u64> {
        if self.per_second <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Forget callers whose bucket has been full for a while.
            let full_after = std::time::Duration::from_secs_f64(self.burst / self.per_second + 60.0);
            buckets.retain(|_, (_, at)| now.duration_since(*at) < full_after);
        }
        let (tokens, at) = buckets.entry(principal.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            None
        } else {
            Some(((1.0 - *tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rate_limiter_refuses_past_the_burst_and_names_a_wait() {
        let limiter = RateLimiter::new(1, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check("key:a"), None);
        }
        assert_eq!(limiter.check("key:a"), Some(1));
        assert_eq!(limiter.check("key:b"), None, "buckets are per principal");
    }

    #[test]
    fn test_rate_limit_zero_means_off() {
        let limiter = RateLimiter::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(limiter.check("key:a"), None);
        }
    }
}
