//! Authentication: JSON web tokens in, `taskwire_domain::Principal`s out.
//!
//! Algorithms are pinned by configuration (HS256 with a secret, or RS256/ES256 with a
//! public key, never both, never `none`); `exp` is required; `iss`/`aud` are checked when
//! configured. What a principal may do is decided by `taskwire_domain::auth`.

mod jwt;

pub use jwt::{JwtKeys, JwtSettings, KeyError, bearer_token};
