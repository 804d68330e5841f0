//! GraphiQL and the operator console are served from the binary alone: each page refers
//! only to same-origin assets, each served with its content type and a long cache
//! lifetime, under a strict Content-Security-Policy. (The browser tests in `web/tests/`
//! run them offline.)

use taskwire_tests::TestApp;

/// The `src`/`href` values of the page's `<script>` and `<link>` tags, but for the empty
/// `data:` favicon (which keeps the browser from asking for `/favicon.ico`).
fn referenced_urls(page: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = page;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let end = rest.find('"').expect("a closing quote");
            if &rest[..end] != "data:," {
                urls.push(rest[..end].to_owned());
            }
            rest = &rest[end..];
        }
    }
    urls
}

#[tokio::test]
async fn graphiql_has_a_strict_policy_and_only_same_origin_assets() {
    let app = TestApp::spawn().await;
    check_page(&app, "/graphiql").await;
}

#[tokio::test]
async fn the_console_has_a_strict_policy_and_only_same_origin_assets() {
    let app = TestApp::spawn().await;
    check_page(&app, "/console").await;
}

#[tokio::test]
async fn the_console_can_be_switched_off() {
    let app = TestApp::spawn_with(&[("TASKWIRE_CONSOLE", "false")]).await;
    assert_eq!(app.get("/console").await.0, 404);
    assert_eq!(app.get("/graphiql").await.0, 200, "GraphiQL has a switch of its own");
}

/// A response header's value, which must be there.
fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    let value = headers.get(name).unwrap_or_else(|| panic!("no {name} header: {headers:?}"));
    value.to_str().expect("a visible ASCII header value").to_owned()
}

/// The page at `path`: its policy, and every asset it names.
async fn check_page(app: &TestApp, path: &str) {
    let response = app.client.get(format!("{}{path}", app.address)).send().await.expect("request sent");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let page = response.text().await.expect("body");
    assert!(header(&headers, "content-type").starts_with("text/html"), "{headers:?}");

    let policy = header(&headers, "content-security-policy");
    let directive = |name: &str| {
        policy
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix(name).filter(|rest| rest.starts_with(' ')).map(str::trim))
            .unwrap_or_else(|| panic!("no {name} in {policy}"))
            .to_owned()
    };
    assert_eq!(directive("default-src"), "'self'");
    assert_eq!(directive("script-src"), "'self'", "no inline script, no eval: {policy}");
    assert_eq!(directive("object-src"), "'none'");
    assert_eq!(directive("frame-ancestors"), "'none'");
    let host = app.address.trim_start_matches("http://");
    assert_eq!(directive("connect-src"), format!("'self' ws://{host} wss://{host}"));
    assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{policy}");
    // The style nonce is the one the script tag carries, and fresh per response.
    let nonce =
        directive("style-src").strip_prefix("'self' 'nonce-").and_then(|n| n.strip_suffix('\'')).map(str::to_owned);
    let nonce = nonce.unwrap_or_else(|| panic!("style-src is 'self' and a nonce: {policy}"));
    assert!(nonce.len() >= 32 && page.contains(&format!("nonce=\"{nonce}\"")), "{nonce} in {page}");
    let again = app.client.get(format!("{}{path}", app.address)).send().await.expect("request sent");
    let again = header(again.headers(), "content-security-policy");
    assert!(!again.contains(&nonce), "a nonce is used once: {again}");

    let urls = referenced_urls(&page);
    assert!(urls.iter().any(|u| u.ends_with(".js")) && urls.iter().any(|u| u.ends_with(".css")), "{page}");
    let mut script = String::new();
    for url in &urls {
        assert!(url.starts_with(&format!("{path}/assets/")), "same-origin asset paths only: {url}");
        let response = app.client.get(format!("{}{url}", app.address)).send().await.expect("request sent");
        assert_eq!(response.status(), 200, "{url}");
        let expected = if url.ends_with(".js") { "text/javascript" } else { "text/css" };
        let content_type = header(response.headers(), "content-type");
        assert!(content_type.starts_with(expected), "{url}: {content_type}");
        let cache = header(response.headers(), "cache-control");
        assert!(cache.contains("max-age=31536000") && cache.contains("immutable"), "{url}: {cache}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let body = response.text().await.expect("body");
        assert!(body.len() > 1_000, "{url} is the bundle, {} bytes", body.len());
        if url.ends_with(".js") {
            script = body;
        }
    }
    // The bundle talks to this server: /graphql over HTTP, and over WebSocket.
    assert!(script.contains("\"/graphql\""), "the script names the endpoint");
    assert!(!script.contains("unpkg.com") && !script.contains("jsdelivr"), "no CDN");

    let (status, _) = app.get(&format!("{path}/assets/unknown.0000000000000000.js")).await;
    assert_eq!(status, 404, "an asset name that no build made");
}
