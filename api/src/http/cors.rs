//! Cross-origin requests from browser frontends (`TASKWIRE_CORS_ORIGINS`, README,
//! Configuration).
//!
//! A page served from another origin may call `/graphql` only when the preflight answers
//! with `Access-Control-Allow-*`. The allow-list is explicit: a token travels in the
//! `Authorization` header, so any origin it names can act for a user whose page holds a
//! token. The embedded default (a developer's machine) allows pages on `localhost` and
//! `127.0.0.1` at any port, where a frontend's dev server runs; production mode allows
//! none until origins are listed. Cookies are never used, so credentials are not allowed.
//!
//! WebSocket upgrades are not subject to CORS; `TASKWIRE_WS_ALLOWED_ORIGINS` guards them.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header, request::Parts};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Which origins may call the API from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No cross-origin calls (production mode's default).
    Off,
    /// `http://localhost:<any port>` and `http://127.0.0.1:<any port>` (the embedded default).
    Localhost,
    /// Exactly these origins (`scheme://host[:port]`).
    List(Vec<HeaderValue>),
    /// Any origin (`*`): for public, token-only APIs.
    Any,
}

impl CorsOrigins {
    /// Parses `TASKWIRE_CORS_ORIGINS`: `*`, `off`, `localhost`, or comma-separated origins.
    pub(crate) fn parse(value: &str) -> Result<CorsOrigins, String> {
        match value.trim() {
            "*" => return Ok(CorsOrigins::Any),
            "off" | "none" => return Ok(CorsOrigins::Off),
            "localhost" => return Ok(CorsOrigins::Localhost),
            _ => {}
        }
        let mut origins = Vec::new();
        for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let well_formed = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && origin.splitn(4, '/').count() == 3;
            if !well_formed {
                return Err(format!("{origin:?} is not an origin (scheme://host[:port], no path)"));
            }
            origins.push(HeaderValue::from_str(origin).map_err(|_| format!("{origin:?} is not a header value"))?);
        }
        if origins.is_empty() {
            return Err("no origin given (use off to turn CORS off)".into());
        }
        Ok(CorsOrigins::List(origins))
    }

    /// The layer answering preflights and decorating responses, `None` when off.
    pub(crate) fn layer(&self) -> Option<CorsLayer> {
        let allow = match self {
            CorsOrigins::Off => return None,
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(origins) => AllowOrigin::list(origins.clone()),
            CorsOrigins::Localhost => {
                AllowOrigin::predicate(|origin: &HeaderValue, _: &Parts| origin.to_str().is_ok_and(is_local_origin))
            }
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::ACCEPT,
                    HeaderName::from_static("traceparent"),
                    HeaderName::from_static("tracestate"),
                    HeaderName::from_static("x-request-id"),
                    // Apollo Client's client awareness and CSRF-prevention headers.
                    HeaderName::from_static("apollographql-client-name"),
                    HeaderName::from_static("apollographql-client-version"),
                    HeaderName::from_static("apollo-require-preflight"),
                ])
                .expose_headers([header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
                .max_age(PREFLIGHT_MAX_AGE),
        )
    }
}

/// `http://localhost[:port]` or `http://127.0.0.1[:port]` (also `[::1]`).
fn is_local_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("http://") else { return false };
    let host = match rest.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => rest,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_or_say_what_is_wrong() {
        assert_eq!(CorsOrigins::parse("*"), Ok(CorsOrigins::Any));
        assert_eq!(CorsOrigins::parse("off"), Ok(CorsOrigins::Off));
        assert_eq!(CorsOrigins::parse("localhost"), Ok(CorsOrigins::Localhost));
        assert_eq!(
            CorsOrigins::parse("https://app.example.com, http://localhost:5173"),
            Ok(CorsOrigins::List(vec![
                HeaderValue::from_static("https://app.example.com"),
                HeaderValue::from_static("http://localhost:5173"),
            ]))
        );
        for bad in ["app.example.com", "https://app.example.com/", "https://a.example/path", "ftp://a", " , "] {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn only_loopback_http_origins_are_local() {
        for local in ["http://localhost", "http://localhost:5173", "http://127.0.0.1:3000", "http://[::1]:8080"] {
            assert!(is_local_origin(local), "{local}");
        }
        for other in [
            "https://localhost:5173",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example:80",
            "http://evil.example",
            "http://localhost:80x",
        ] {
            assert!(!is_local_origin(other), "{other}");
        }
    }
}
