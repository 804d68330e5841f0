//! Browser apps served by the binary: GraphiQL (`/graphiql`), the operator console
//! (`/console`), and their static assets.
//!
//! The assets are built at development time from pinned npm packages (`web/`, README,
//! Frontends) into `api/assets/` and embedded here, so a page never loads anything from
//! another origin. Each asset is served under a name carrying a hash of its content
//! (`/graphiql/assets/graphiql.<hash>.js`), so it can be cached for a year: a new build
//! changes the name the page refers to. Pages carry a strict `Content-Security-Policy`.

use std::{collections::HashMap, fmt::Write as _, sync::LazyLock};

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

/// One embedded file.
struct Asset {
    /// Its name in `api/assets/<app>/`, e.g. `graphiql.js`.
    file: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const GRAPHIQL_ASSETS: &[Asset] = &[
    Asset {
        file: "graphiql.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/graphiql/graphiql.js"),
    },
    Asset {
        file: "graphiql.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/graphiql/graphiql.css"),
    },
];

/// Stands for the per-response nonce in [`App::page`].
const NONCE: &str = "{nonce}";

/// An app's assets by their served (hashed) names, and its page.
struct App {
    by_name: HashMap<String, &'static Asset>,
    /// The HTML, with [`NONCE`] where each response puts its own.
    page: String,
}

impl App {
    fn new(prefix: &str, title: &str, assets: &'static [Asset]) -> App {
        let mut by_name = HashMap::new();
        let mut head = String::new();
        let mut body = String::new();
        for asset in assets {
            let name = hashed_name(asset);
            let url = format!("{prefix}/assets/{name}");
            if asset.file.ends_with(".css") {
                let _ = write!(head, "\n<link rel=\"stylesheet\" href=\"{url}\">");
            } else {
                let _ = write!(body, "\n<script src=\"{url}\" nonce=\"{NONCE}\"></script>");
            }
            by_name.insert(name, asset);
        }
        let page = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <link rel=\"icon\" href=\"data:,\">\n<title>{title}</title>{head}\n</head>\n<body>\n<div id=\"{id}\"></div>{body}\n</body>\n</html>\n",
            id = prefix.trim_start_matches('/'),
        );
        App { by_name, page }
    }

    fn asset(&self, name: &str) -> Response {
        match self.by_name.get(name) {
            Some(asset) => (
                [
                    (header::CONTENT_TYPE, asset.content_type),
                    (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                asset.bytes,
            )
                .into_response(),
            None => (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "no such asset\n")
                .into_response(),
        }
    }

    fn page(&self, headers: &HeaderMap) -> Response {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let mut response = (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                // Revalidated every time: the asset names it refers to change with each build.
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            self.page.replace(NONCE, &nonce),
        )
            .into_response();
        let csp = content_security_policy(&nonce, headers.get(header::HOST).and_then(|h| h.to_str().ok()));
        if let Ok(value) = HeaderValue::from_str(&csp) {
            response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, value);
        }
        response
    }
}

/// `graphiql.js` → `graphiql.<first 16 hex digits of its SHA-256>.js`.
fn hashed_name(asset: &Asset) -> String {
    let digest = Sha256::digest(asset.bytes);
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    match asset.file.rsplit_once('.') {
        Some((stem, extension)) => format!("{stem}.{hash}.{extension}"),
        None => format!("{}.{hash}", asset.file),
    }
}

/// The policy of the app pages: everything from this origin only, no inline script, no
/// `eval`, no frames, no plugins.
///
/// - `style-src 'nonce-…'`: GraphiQL's dialogs (Radix UI's scroll lock) add `<style>`
///   elements at run time. The page's script tag carries a fresh nonce per response, and
///   the bundle hands it to the code that adds them (`get-nonce`), so no `'unsafe-inline'`.
/// - `data:` fonts and images: GraphiQL's stylesheet carries its fonts and icons inline.
/// - `connect-src`: `/graphql` over HTTP, and WebSocket subscriptions to the same host.
///   `'self'` covers `ws:`/`wss:` of the same host only in CSP level 3 browsers, so the
///   host is named when the request's `Host` header is a plain host name or address.
fn content_security_policy(nonce: &str, host: Option<&str>) -> String {
    let mut connect = String::from("'self'");
    if let Some(host) = host.filter(|h| is_plain_host(h)) {
        let _ = write!(connect, " ws://{host} wss://{host}");
    }
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; img-src 'self' data:; \
         font-src 'self' data:; connect-src {connect}; object-src 'none'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
}

/// A host name, IPv4 or bracketed IPv6 address, with an optional port: nothing that could
/// end a CSP source expression or directive.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

const CONSOLE_ASSETS: &[Asset] = &[
    Asset {
        file: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/console/console.js"),
    },
    Asset {
        file: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/console/console.css"),
    },
];

static GRAPHIQL: LazyLock<App> = LazyLock::new(|| App::new("/graphiql", "Taskwire GraphiQL", GRAPHIQL_ASSETS));

/// `GET /graphiql`.
pub(crate) async fn graphiql_page(headers: HeaderMap) -> Response {
    GRAPHIQL.page(&headers)
}

/// `GET /graphiql/assets/{name}`.
pub(crate) async fn graphiql_asset(Path(name): Path<String>) -> Response {
    GRAPHIQL.asset(&name)
}

static CONSOLE: LazyLock<App> = LazyLock::new(|| App::new("/console", "Taskwire console", CONSOLE_ASSETS));

/// `GET /console`.
pub(crate) async fn console_page(headers: HeaderMap) -> Response {
    CONSOLE.page(&headers)
}

/// `GET /console/assets/{name}`.
pub(crate) async fn console_asset(Path(name): Path<String>) -> Response {
    CONSOLE.asset(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_page_refers_to_every_asset_by_its_hashed_name() {
        for (prefix, assets) in [("/graphiql", GRAPHIQL_ASSETS), ("/console", CONSOLE_ASSETS)] {
            let app = App::new(prefix, "t", assets);
            assert_eq!(app.by_name.len(), assets.len());
            for name in app.by_name.keys() {
                assert!(app.page.contains(&format!("{prefix}/assets/{name}")), "{name} in {}", app.page);
            }
            assert!(!app.page.contains("http"), "no absolute URL: {}", app.page);
        }
    }

    #[test]
    fn the_policy_names_only_plain_hosts() {
        let policy = content_security_policy("n", Some("127.0.0.1:8080"));
        assert!(policy.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"), "{policy}");
        let injected = content_security_policy("n", Some("evil; script-src *"));
        assert!(injected.contains("connect-src 'self';") && !injected.contains("evil"), "{injected}");
        let plain = content_security_policy("n", None);
        assert!(!plain.contains("unsafe-eval") && !plain.contains("unsafe-inline"), "{plain}");
    }
}
