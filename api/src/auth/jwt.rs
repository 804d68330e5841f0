//! Token verification and (HS256 only) minting.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use taskwire_domain::{Principal, Role};

/// How JSON web tokens are verified (`TASKWIRE_JWT_*`).
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// HS256 secret. Default: embedded mode generates one into the data dir.
    pub secret: Option<SecretString>,
    /// PEM public key (RS256 or ES256); when set, HS256 tokens are refused.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Longest accepted token lifetime (`TASKWIRE_JWT_MAX_TTL`).
    pub max_ttl: Duration,
}

/// Why the verification keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("TASKWIRE_{key}: {reason}")]
pub struct KeyError {
    /// The configuration key at fault, without prefix.
    pub key: &'static str,
    /// What went wrong.
    pub reason: String,
}

/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECS: u64 = 30;
/// Tokens whose verification is remembered, at most (see [`JwtKeys::verify_with_expiry`]).
const VERIFIED_TOKENS: u64 = 10_000;
/// How long a remembered verification lasts without being used.
const VERIFIED_IDLE: Duration = Duration::from_secs(600);
/// File in the data dir holding the embedded-mode dev secret.
const DEV_SECRET_FILE: &str = "jwt-secret";

/// Why a token was rejected (logged; the client only learns `UNAUTHENTICATED`).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The `Authorization` value is not `Bearer <token>`.
    #[error("authorization is not a bearer token")]
    NotBearer,
    /// Signature, algorithm, expiry, issuer, audience or claims were rejected.
    #[error("token rejected: {0}")]
    Rejected(#[from] jsonwebtoken::errors::Error),
    /// The `sub` claim is empty.
    #[error("token has an empty subject")]
    EmptySubject,
    /// The token lives longer than `TASKWIRE_JWT_MAX_TTL` allows.
    #[error("token lifetime of {lifetime_secs} s is over the {max_secs} s allowed")]
    LifetimeTooLong {
        /// `exp - iat`, or `exp - now` without `iat`, in whole seconds.
        lifetime_secs: u64,
        /// The configured maximum, in seconds.
        max_secs: u64,
    },
}

/// The claims Taskwire reads. `exp`, `nbf`, `iss` and `aud` are checked by
/// jsonwebtoken from the raw claims (so `aud` may be a string or an array, and dates may
/// be fractional, as RFC 7519 allows); other claims are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    /// Seconds since the epoch (possibly fractional); validated by jsonwebtoken, read
    /// here only to close WebSockets when the token expires.
    #[serde(default)]
    exp: Option<f64>,
    /// Seconds since the epoch (possibly fractional), when the issuer sets it: the start
    /// of the token's lifetime (`TASKWIRE_JWT_MAX_TTL`).
    #[serde(default)]
    iat: Option<f64>,
}

/// The claims of a minted development token.
#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    roles: Vec<&'static str>,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// The keys and rules for verifying (and, with a secret, minting) tokens.
pub struct JwtKeys {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    max_ttl: Duration,
    /// Whether the key is the embedded development secret generated into the data dir
    /// (not one the operator configured).
    generated_dev_secret: bool,
    /// Tokens that passed verification, by their exact text (bounded, LRU-ish).
    verified: moka::sync::Cache<Box<str>, Verified>,
}

/// What a token's successful verification found: everything a later use of the same
/// token needs, and its `exp` to refuse it once it has expired.
#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    expires: Option<SystemTime>,
    /// `exp` in seconds since the epoch (required, so always present once verified).
    exp: f64,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Loads keys from configuration. Without a secret or key file (embedded mode only;
    /// production refuses earlier) the dev secret in `data_dir` is used, created on first
    /// start.
    pub fn load(config: &JwtSettings, data_dir: &Path) -> Result<JwtKeys, KeyError> {
        let mut generated_dev_secret = false;
        let (decoding, encoding, algorithm) = if let Some(path) = &config.public_key_file {
            let pem = std::fs::read(path)
                .map_err(|e| KeyError { key: "JWT_PUBLIC_KEY_FILE", reason: format!("{}: {e}", path.display()) })?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (key, None, Algorithm::RS256)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (key, None, Algorithm::ES256)
            } else {
                return Err(KeyError {
                    key: "JWT_PUBLIC_KEY_FILE",
                    reason: "not an RSA or EC (P-256) public key in PEM".into(),
                });
            }
        } else {
            let secret = match &config.secret {
                Some(secret) => secret.clone(),
                None => {
                    generated_dev_secret = true;
                    dev_secret(data_dir)?
                }
            };
            let bytes = secret.expose_secret().as_bytes();
            (DecodingKey::from_secret(bytes), Some(EncodingKey::from_secret(bytes)), Algorithm::HS256)
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not merely correct when present.
        let mut required = vec!["exp", "sub"];
        required.extend(config.issuer.as_ref().map(|_| "iss"));
        required.extend(config.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &config.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(JwtKeys {
            decoding,
            encoding,
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            max_ttl: config.max_ttl,
            generated_dev_secret,
            verified: moka::sync::Cache::builder().max_capacity(VERIFIED_TOKENS).time_to_idle(VERIFIED_IDLE).build(),
        })
    }

    /// Whether tokens are signed with the development secret generated into the data
    /// dir because nothing was configured: only then may a token be printed at start.
    pub fn is_generated_dev_secret(&self) -> bool {
        self.generated_dev_secret
    }

    /// The longest token lifetime accepted.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// Verifies `token` and returns its principal. Unknown role names are ignored.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_with_expiry(token).map(|(principal, _)| principal)
    }

    /// Like [`JwtKeys::verify`], also returning when the token expires.
    ///
    /// A client sends the same token with every request until it expires, and checking
    /// its signature and claims again each time was a large share of a cached read's CPU
    /// (docs/BENCHMARKS.md). So a token that passed is remembered by its exact text
    /// ([`VERIFIED_TOKENS`] at most) and, until its `exp` (plus the leeway) passes, is
    /// accepted again without decoding. Nothing else can change the verdict: the keys
    /// and rules are fixed for the process's life, `nbf` only moves from refused to
    /// accepted, and the lifetime check (`exp - iat`, or `exp - now`) only relaxes with
    /// time. Refused tokens are never remembered.
    pub fn verify_with_expiry(&self, token: &str) -> Result<(Principal, Option<SystemTime>), AuthError> {
        if let Some(known) = self.verified.get(token) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
            if now <= known.exp + LEEWAY_SECS as f64 {
                return Ok((known.principal, known.expires));
            }
            // Expired: forget it, and let the full check below say why it is refused.
            self.verified.invalidate(token);
        }
        let verified = self.verify_uncached(token)?;
        let answer = (verified.principal.clone(), verified.expires);
        self.verified.insert(token.into(), verified);
        Ok(answer)
    }

    fn verify_uncached(&self, token: &str) -> Result<Verified, AuthError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation)?;
        if data.claims.sub.trim().is_empty() {
            // `sub` becomes a creator or worker id: an empty one would be a shared identity.
            return Err(AuthError::EmptySubject);
        }
        self.check_lifetime(&data.claims)?;
        let roles = data.claims.roles.iter().filter_map(|r| r.parse::<Role>().ok());
        let expires = data
            .claims
            .exp
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| UNIX_EPOCH + Duration::from_secs_f64(e.min(1e12)));
        // `exp` is a required claim: a token without it was refused above.
        let exp = data.claims.exp.unwrap_or(f64::NEG_INFINITY);
        Ok(Verified { principal: Principal::new(data.claims.sub, roles), expires, exp })
    }

    /// Refuses a token whose lifetime, `exp - iat` (or `exp - now` when it has no `iat`),
    /// is over the maximum: a leaked long-lived token would otherwise stay usable for as
    /// long as its issuer chose. The clock-skew leeway applies here too.
    fn check_lifetime(&self, claims: &Claims) -> Result<(), AuthError> {
        let Some(exp) = claims.exp.filter(|e| e.is_finite()) else { return Ok(()) };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
        let start = claims.iat.filter(|iat| iat.is_finite()).unwrap_or(now);
        let lifetime = exp - start;
        let allowed = self.max_ttl.as_secs_f64() + LEEWAY_SECS as f64;
        if lifetime > allowed {
            // `as` saturates: a lifetime past u64 seconds is reported as u64::MAX.
            return Err(AuthError::LifetimeTooLong {
                lifetime_secs: lifetime as u64,
                max_secs: self.max_ttl.as_secs(),
            });
        }
        Ok(())
    }

    /// Mints a token for `subject` with `roles`, valid for `ttl`, carrying the configured
    /// issuer and audience. `None` when tokens are verified with a public key (the
    /// private key lives with the identity provider, not here).
    pub fn mint(&self, subject: &str, roles: &[Role], ttl: Duration) -> Option<String> {
        let key = self.encoding.as_ref()?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = MintedClaims {
            sub: subject,
            roles: roles.iter().map(|r| r.as_str()).collect(),
            exp: now + ttl.as_secs(),
            iat: now,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, key).ok()
    }
}

/// The token in an `Authorization: Bearer <token>` value (scheme case-insensitive).
pub fn bearer_token(value: &str) -> Result<&str, AuthError> {
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::NotBearer)?;
    if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
        Ok(token.trim())
    } else {
        Err(AuthError::NotBearer)
    }
}

/// Reads the embedded dev secret, creating it (owner-only permissions) on first use.
fn dev_secret(data_dir: &Path) -> Result<SecretString, KeyError> {
    let invalid = |reason: String| KeyError { key: "JWT_SECRET", reason };
    let path = data_dir.join(DEV_SECRET_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let trimmed = existing.trim();
        if !trimmed.is_empty() {
            return Ok(SecretString::from(trimmed.to_owned()));
        }
    }
    std::fs::create_dir_all(data_dir).map_err(|e| invalid(format!("creating {}: {e}", data_dir.display())))?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    write_private(&path, &secret).map_err(|e| invalid(format!("writing {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "generated a development JWT secret");
    Ok(SecretString::from(secret))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(issuer: Option<&str>, audience: Option<&str>) -> JwtKeys {
        let config = JwtSettings {
            secret: Some(SecretString::from("test-secret".to_owned())),
            public_key_file: None,
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            max_ttl: Duration::from_secs(24 * 3600),
        };
        JwtKeys::load(&config, Path::new("unused")).expect("keys load")
    }

    #[test]
    fn minted_tokens_verify_with_their_roles() {
        let keys = keys(Some("taskwire"), Some("frontends"));
        let token = keys.mint("alice", &[Role::Client, Role::Operator], Duration::from_secs(60)).expect("mint");
        let principal = keys.verify(&token).expect("verifies");
        assert_eq!(principal, Principal::new("alice", [Role::Client, Role::Operator]));
    }

    #[test]
    fn tokens_for_another_issuer_or_audience_are_rejected() {
        let other = keys(Some("someone-else"), None).mint("a", &[Role::Client], Duration::from_secs(60)).expect("mint");
        assert!(keys(Some("taskwire"), None).verify(&other).is_err());
        let other = keys(None, Some("other-app")).mint("a", &[Role::Client], Duration::from_secs(60)).expect("mint");
        assert!(keys(None, Some("frontends")).verify(&other).is_err());
    }

    #[test]
    fn bearer_values_are_parsed_strictly() {
        assert_eq!(bearer_token("Bearer abc").ok(), Some("abc"));
        assert_eq!(bearer_token("bearer  abc ").ok(), Some("abc"));
        assert!(bearer_token("Basic abc").is_err());
        assert!(bearer_token("Bearer").is_err());
        assert!(bearer_token("abc").is_err());
    }

    #[test]
    fn the_dev_secret_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = JwtSettings {
            secret: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            max_ttl: Duration::from_secs(24 * 3600),
        };
        let first = JwtKeys::load(&config, dir.path()).expect("first load");
        let token = first.mint("alice", &[Role::Admin], Duration::from_secs(60)).expect("mint");
        let second = JwtKeys::load(&config, dir.path()).expect("second load");
        assert!(second.verify(&token).is_ok(), "a restart keeps tokens valid");
        assert!(second.is_generated_dev_secret(), "the generated secret is known as such");
        assert!(!keys(None, None).is_generated_dev_secret(), "a configured secret is not a dev secret");
    }

    /// Signs `claims` with the secret of `keys(None, None)`.
    fn signed(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"test-secret")).expect("encodes")
    }

    #[test]
    fn tokens_living_longer_than_the_maximum_are_refused() {
        let keys = keys(None, None);
        let now = jsonwebtoken::get_current_timestamp();
        let day = 24 * 3600;
        let cases = [
            ("a day from iat", serde_json::json!({ "sub": "a", "iat": now, "exp": now + day }), true),
            ("a day from now without iat", serde_json::json!({ "sub": "a", "exp": now + day }), true),
            ("a year from iat", serde_json::json!({ "sub": "a", "iat": now, "exp": now + 365 * day }), false),
            ("a year from now without iat", serde_json::json!({ "sub": "a", "exp": now + 365 * day }), false),
            (
                "a two-day token issued yesterday: its lifetime counts, not what is left",
                serde_json::json!({ "sub": "a", "iat": now - day, "exp": now + day }),
                false,
            ),
        ];
        for (case, claims, accepted) in cases {
            let result = keys.verify(&signed(claims));
            assert_eq!(result.is_ok(), accepted, "{case}: {result:?}");
            if !accepted {
                assert!(matches!(result, Err(AuthError::LifetimeTooLong { max_secs: 86_400, .. })), "{case}");
            }
        }
        let minted = keys.mint("a", &[Role::Client], Duration::from_secs(day)).expect("mint");
        assert!(keys.verify(&minted).is_ok(), "a minted token of the maximum lifetime is accepted");
    }

    #[test]
    fn accepted_tokens_are_remembered_and_refused_ones_are_not() {
        let keys = keys(None, None);
        let now = jsonwebtoken::get_current_timestamp();
        let token = signed(serde_json::json!({ "sub": "a", "roles": ["client"], "iat": now, "exp": now + 60 }));
        let first = keys.verify_with_expiry(&token).expect("accepted");
        assert_eq!(keys.verified.get(token.as_str()).map(|v| v.principal), Some(first.0.clone()), "remembered");
        assert_eq!(keys.verify_with_expiry(&token).expect("accepted again"), first, "the same answer from memory");
        let expired = signed(serde_json::json!({ "sub": "a", "iat": now - 100, "exp": now - LEEWAY_SECS - 10 }));
        assert!(matches!(keys.verify(&expired), Err(AuthError::Rejected(_))), "an expired token is refused");
        let long = signed(serde_json::json!({ "sub": "a", "exp": now + 365 * 24 * 3600 }));
        assert!(keys.verify(&long).is_err(), "too long a lifetime is refused");
        assert!(keys.verified.get(expired.as_str()).is_none(), "refused tokens are not remembered");
        assert!(keys.verified.get(long.as_str()).is_none(), "refused tokens are not remembered");
    }

    #[test]
    fn a_remembered_token_past_its_exp_is_checked_again() {
        let keys = keys(None, None);
        let now = jsonwebtoken::get_current_timestamp();
        let token = signed(serde_json::json!({ "sub": "a", "iat": now - 200, "exp": now - LEEWAY_SECS - 5 }));
        assert!(keys.verify(&token).is_err(), "already expired");
        // Pretend it had been remembered while it was still valid.
        let principal = Principal::new("a", []);
        let stale = Verified { principal, expires: None, exp: (now - LEEWAY_SECS - 5) as f64 };
        keys.verified.insert(token.as_str().into(), stale);
        assert!(matches!(keys.verify(&token), Err(AuthError::Rejected(_))), "memory does not outlive exp");
        assert!(keys.verified.get(token.as_str()).is_none(), "and the entry is gone");
    }
}
