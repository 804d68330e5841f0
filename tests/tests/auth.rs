//! JWT authentication and role guards, black-box (README, Authentication and roles).
//!
//! Rejection cases change one thing in claims (or a token) that a control in the same test,
//! or a neighbouring test, shows are accepted: a refusal is then about that one thing.
//! The key pairs in `fixtures/` are test-only and were generated with openssl.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};
use taskwire_tests::{GqlResponse, TestApp, now_secs};

const RSA_PRIVATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/rsa_private.pem");
const RSA_PUBLIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/rsa_public.pem");
const EC_PRIVATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ec_private.pem");
const EC_PUBLIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ec_public.pem");

const ISSUER: &str = "https://id.taskwire.test";
const AUDIENCE: &str = "frontends";

const ME: &str = "{ me { subject roles } }";
const TASKS: &str = "{ tasks(first: 5) { edges { node { id } } } }";
const TASK: &str = r#"{ task(id: "0190b1c2-0000-7000-8000-000000000000") { id } }"#;
const CREATE_TASK: &str = r#"mutation { createTask(input: { queue: "q", kind: "k" }) { task { id } created } }"#;
const CREATE_TASKS: &str = r#"mutation { createTasks(inputs: [{ queue: "q", kind: "k" }]) { created } }"#;
const CANCEL_TASK: &str = r#"mutation { cancelTask(id: "0190b1c2-0000-7000-8000-000000000000") { status } }"#;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The app these tests start: its refused-token budget is off, because they send many bad
/// tokens from one address on purpose (`hardening_http.rs` tests the budget).
async fn spawn_app(vars: &[(&str, &str)]) -> TestApp {
    let mut all = vec![("TASKWIRE_RATE_LIMIT_INVALID_TOKENS", "0")];
    all.extend_from_slice(vars);
    TestApp::spawn_with(&all).await
}

/// Claims the default app accepts: `sub`, `roles` and an `exp` one hour ahead.
fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({ "sub": sub, "roles": roles, "exp": now_secs() + 3600 })
}

/// `claims` with `key` removed.
fn without(mut claims: Value, key: &str) -> Value {
    let removed = claims.as_object_mut().and_then(|o| o.remove(key));
    assert!(removed.is_some(), "the claims had no {key:?} to remove");
    claims
}

/// `claims` with `key` set to `value`.
fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(algorithm), claims, key).expect("token encodes")
}

fn read_fixture(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_fixture(RSA_PRIVATE)).expect("RSA fixture is a private key")
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&read_fixture(EC_PRIVATE)).expect("EC fixture is a P-256 private key")
}

/// Unpadded base64url (RFC 4648 §5), enough to hand-build tokens.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[test]
fn the_hand_made_base64url_encoder_matches_rfc_4648() {
    for (input, expected) in [
        (&b""[..], ""),
        (b"f", "Zg"),
        (b"fo", "Zm8"),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg"),
        (b"fooba", "Zm9vYmE"),
        (b"foobar", "Zm9vYmFy"),
        (&[0xfb, 0xff], "-_8"),
    ] {
        assert_eq!(b64url(input), expected, "{input:?}");
    }
}

fn b64url_json(value: &Value) -> String {
    b64url(value.to_string().as_bytes())
}

/// The three dot-separated parts of a compact JWS.
fn parts(token: &str) -> [&str; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    [parts[0], parts[1], parts[2]]
}

async fn spawn_rs256() -> TestApp {
    spawn_app(&[("TASKWIRE_JWT_SECRET", ""), ("TASKWIRE_JWT_PUBLIC_KEY_FILE", RSA_PUBLIC)]).await
}

async fn spawn_es256() -> TestApp {
    spawn_app(&[("TASKWIRE_JWT_SECRET", ""), ("TASKWIRE_JWT_PUBLIC_KEY_FILE", EC_PUBLIC)]).await
}

/// POSTs `query` with exactly this `Authorization` header value.
async fn gql_with_authorization(app: &TestApp, authorization: HeaderValue, query: &str) -> GqlResponse {
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header(AUTHORIZATION, authorization)
        .json(&json!({ "query": query, "variables": {} }))
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    let body = response.json().await.expect("JSON body");
    GqlResponse { status, body }
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{value:?} is not a header value: {e}"))
}

/// The request was refused as unauthenticated: HTTP 200, exactly one error with code
/// `UNAUTHENTICATED` and a request id, and no data.
fn assert_unauthenticated(response: &GqlResponse, case: &str) {
    assert_eq!(response.status, 200, "{case}: HTTP status (body {})", response.body);
    assert_eq!(response.codes(), ["UNAUTHENTICATED"], "{case}: {}", response.body);
    assert!(
        response.body.get("data").is_none_or(Value::is_null),
        "{case}: a refused request must carry no data: {}",
        response.body
    );
    let request_id = response.errors()[0]["extensions"]["requestId"].as_str().map(str::to_owned);
    assert!(request_id.is_some_and(|id| !id.is_empty()), "{case}: the error carries a request id: {}", response.body);
}

/// The single error's code is `code`.
fn assert_code(response: &GqlResponse, code: &str, case: &str) {
    assert_eq!(response.codes(), [code], "{case}: {}", response.body);
}

/// `me`, asserting the token was accepted; returns `(subject, sorted roles)`.
async fn me_accepted(app: &TestApp, token: &str, case: &str) -> (String, Vec<String>) {
    let response = app.gql(Some(token), ME, json!({})).await;
    assert_eq!(response.status, 200, "{case}: HTTP status (body {})", response.body);
    assert!(response.errors().is_empty(), "{case}: token refused: {}", response.body);
    let me = &response.body["data"]["me"];
    let subject = me["subject"].as_str().unwrap_or_else(|| panic!("{case}: no subject: {}", response.body)).to_owned();
    let mut roles: Vec<String> = me["roles"]
        .as_array()
        .unwrap_or_else(|| panic!("{case}: no roles: {}", response.body))
        .iter()
        .map(|r| r.as_str().unwrap_or("<not a string>").to_owned())
        .collect();
    roles.sort();
    (subject, roles)
}

/// `me`, asserting the token was refused.
async fn me_refused(app: &TestApp, token: &str, case: &str) {
    let response = app.gql(Some(token), ME, json!({})).await;
    assert_unauthenticated(&response, case);
}

// ---------------------------------------------------------------------------------------
// No token
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn guarded_operations_without_a_token_are_unauthenticated() {
    let app = spawn_app(&[]).await;

    for (case, query, field) in [
        ("me", ME, "me"),
        ("tasks", TASKS, "tasks"),
        ("task", TASK, "task"),
        ("createTask", CREATE_TASK, "createTask"),
        ("createTasks", CREATE_TASKS, "createTasks"),
        ("cancelTask", CANCEL_TASK, "cancelTask"),
    ] {
        let response = app.gql(None, query, json!({})).await;

        assert_eq!(response.status, 200, "{case}: HTTP status (body {})", response.body);
        assert_code(&response, "UNAUTHENTICATED", case);
        let data = &response.body["data"];
        assert!(data.is_null() || data[field].is_null(), "{case}: nothing may be answered: {}", response.body);
    }
}

#[tokio::test]
async fn an_anonymous_request_may_still_ask_for_unguarded_fields() {
    let app = spawn_app(&[]).await;

    let response = app.gql(None, "{ __typename }", json!({})).await;

    assert_eq!(response.data()["__typename"], "Query", "{}", response.body);
}

#[tokio::test]
async fn a_refused_token_fails_the_whole_request_instead_of_falling_back_to_anonymous() {
    let app = spawn_app(&[]).await;
    let expired = app.token_with_claims(with(claims("alice", &["client"]), "exp", json!(now_secs() - 3600)));

    let response = app.gql(Some(&expired), "{ __typename }", json!({})).await;

    assert_unauthenticated(&response, "__typename with an expired token");
}

// ---------------------------------------------------------------------------------------
// Valid HS256 tokens (controls for everything below)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_hs256_token_identifies_the_caller() {
    let app = spawn_app(&[]).await;
    let token = app.token("alice", &["client"]);

    let (subject, roles) = me_accepted(&app, &token, "valid client token").await;

    assert_eq!(subject, "alice");
    assert_eq!(roles, ["CLIENT"]);
}

#[tokio::test]
async fn me_lists_exactly_the_roles_of_the_token() {
    let app = spawn_app(&[]).await;

    for (case, roles, expected) in [
        ("client", &["client"][..], &["CLIENT"][..]),
        ("worker", &["worker"], &["WORKER"]),
        ("operator", &["operator"], &["OPERATOR"]),
        ("admin", &["admin"], &["ADMIN"]),
        ("client and worker", &["worker", "client"], &["CLIENT", "WORKER"]),
        ("duplicates collapse", &["admin", "admin"], &["ADMIN"]),
        ("no roles", &[], &[]),
    ] {
        let token = app.token("someone", roles);

        let (_, listed) = me_accepted(&app, &token, case).await;

        assert_eq!(listed, expected, "{case}");
    }
}

#[tokio::test]
async fn a_token_without_a_roles_claim_is_authenticated_with_no_roles() {
    let app = spawn_app(&[]).await;
    let token = app.token_with_claims(without(claims("carol", &[]), "roles"));

    let (subject, roles) = me_accepted(&app, &token, "no roles claim").await;

    assert_eq!(subject, "carol");
    assert!(roles.is_empty(), "roles: {roles:?}");
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_case_insensitively() {
    let app = spawn_app(&[]).await;
    let token = app.token("alice", &["client"]);

    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = gql_with_authorization(&app, header(&format!("{scheme} {token}")), ME).await;

        assert_eq!(response.data()["me"]["subject"], "alice", "scheme {scheme:?}: {}", response.body);
    }
}

// ---------------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_expired_token_is_unauthenticated() {
    let app = spawn_app(&[]).await;
    me_accepted(&app, &app.token_with_claims(claims("alice", &["client"])), "control: unexpired").await;

    let expired = app.token_with_claims(with(claims("alice", &["client"]), "exp", json!(now_secs() - 3600)));

    me_refused(&app, &expired, "expired an hour ago").await;
}

#[tokio::test]
async fn a_token_expired_by_less_than_the_leeway_is_still_accepted() {
    let app = spawn_app(&[]).await;
    // The leeway is 30 s; 5 s leaves 25 s for the request to arrive.
    let token = app.token_with_claims(with(claims("alice", &["client"]), "exp", json!(now_secs() - 5)));

    let (subject, _) = me_accepted(&app, &token, "expired 5 s ago").await;

    assert_eq!(subject, "alice");
}

#[tokio::test]
async fn a_token_without_exp_is_unauthenticated() {
    let app = spawn_app(&[]).await;

    let token = app.token_with_claims(without(claims("alice", &["client"]), "exp"));

    me_refused(&app, &token, "no exp").await;
}

#[tokio::test]
async fn a_token_without_sub_is_unauthenticated() {
    let app = spawn_app(&[]).await;

    let token = app.token_with_claims(without(claims("alice", &["client"]), "sub"));

    me_refused(&app, &token, "no sub").await;
}

#[tokio::test]
async fn a_token_with_malformed_claims_is_unauthenticated() {
    let app = spawn_app(&[]).await;
    let valid = claims("alice", &["client"]);

    for (case, key, value) in [
        ("sub is a number", "sub", json!(42)),
        ("sub is null", "sub", Value::Null),
        ("sub is an array", "sub", json!(["alice"])),
        ("exp is a string", "exp", json!((now_secs() + 3600).to_string())),
        ("exp is null", "exp", Value::Null),
        ("roles is a string", "roles", json!("admin")),
        ("roles holds a number", "roles", json!([1])),
    ] {
        let token = app.token_with_claims(with(valid.clone(), key, value));

        me_refused(&app, &token, case).await;
    }
}

#[tokio::test]
async fn unknown_roles_are_ignored() {
    let app = spawn_app(&[]).await;

    for (case, roles) in [
        ("superuser", &["superuser"][..]),
        ("root and empty", &["root", ""]),
        ("enum spelling instead of claim spelling", &["CLIENT"]),
        ("capitalised", &["Client"]),
    ] {
        let token = app.token("mallory", roles);

        let (subject, listed) = me_accepted(&app, &token, case).await;
        let create = app.gql(Some(&token), CREATE_TASK, json!({})).await;

        assert_eq!(subject, "mallory", "{case}");
        assert!(listed.is_empty(), "{case}: unknown roles must not be listed: {listed:?}");
        assert_code(&create, "FORBIDDEN", case);
    }
}

#[tokio::test]
async fn known_roles_next_to_unknown_ones_still_count() {
    let app = spawn_app(&[]).await;
    let token = app.token("alice", &["superuser", "client"]);

    let (_, roles) = me_accepted(&app, &token, "client and superuser").await;
    let create = app.gql(Some(&token), CREATE_TASK, json!({})).await;

    assert_eq!(roles, ["CLIENT"]);
    assert_eq!(create.data()["createTask"]["created"], true, "{}", create.body);
}

// ---------------------------------------------------------------------------------------
// Signatures and algorithms
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_signed_with_another_secret_is_unauthenticated() {
    let app = spawn_app(&[]).await;
    let claims = claims("alice", &["client"]);
    me_accepted(&app, &app.token_with_claims(claims.clone()), "control: the app's secret").await;

    for (case, secret) in [
        ("another secret", format!("{}-other", app.secret)),
        ("a prefix of the secret", app.secret[..app.secret.len() - 1].to_owned()),
        ("an empty secret", String::new()),
    ] {
        let token = sign(Algorithm::HS256, &EncodingKey::from_secret(secret.as_bytes()), &claims);

        me_refused(&app, &token, case).await;
    }
}

#[tokio::test]
async fn a_token_whose_payload_was_altered_after_signing_is_unauthenticated() {
    let app = spawn_app(&[]).await;
    let genuine = app.token("alice", &["client"]);
    let [header, _, signature] = parts(&genuine);
    me_accepted(&app, &genuine, "control: untouched").await;

    let escalated = b64url_json(&claims("alice", &["admin"]));
    let tampered = format!("{header}.{escalated}.{signature}");

    me_refused(&app, &tampered, "roles raised to admin, signature kept").await;
}

#[tokio::test]
async fn a_token_signed_with_alg_none_is_unauthenticated() {
    let app = spawn_app(&[]).await;
    let genuine = app.token("alice", &["admin"]);
    let [genuine_header, genuine_payload, genuine_signature] = parts(&genuine);
    let payload = b64url_json(&claims("alice", &["admin"]));
    let none = |alg: &str| b64url_json(&json!({ "alg": alg, "typ": "JWT" }));
    // Control: the same hand-built header and payload, properly signed, are accepted, so
    // the refusals below are about the algorithm and not about the hand-made encoding.
    let hs256 = b64url_json(&json!({ "alg": "HS256", "typ": "JWT" }));
    let key = EncodingKey::from_secret(app.secret.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(format!("{hs256}.{payload}").as_bytes(), &key, Algorithm::HS256).expect("signs");
    me_accepted(&app, &format!("{hs256}.{payload}.{signature}"), "control: hand-built HS256").await;

    for (case, token) in [
        ("alg none, empty signature", format!("{}.{payload}.", none("none"))),
        ("alg None", format!("{}.{payload}.", none("None"))),
        ("alg NONE", format!("{}.{payload}.", none("NONE"))),
        ("alg nOnE", format!("{}.{payload}.", none("nOnE"))),
        ("alg none, no signature part", format!("{}.{payload}", none("none"))),
        ("alg none, genuine signature kept", format!("{}.{genuine_payload}.{genuine_signature}", none("none"))),
        ("genuine HS256 header, signature stripped", format!("{genuine_header}.{genuine_payload}.")),
        ("no alg at all", format!("{}.{payload}.", b64url_json(&json!({ "typ": "JWT" })))),
    ] {
        me_refused(&app, &token, case).await;
    }
}

#[tokio::test]
async fn garbage_tokens_are_unauthenticated() {
    let app = spawn_app(&[]).await;
    let genuine = app.token("alice", &["client"]);
    let [header_part, payload_part, signature_part] = parts(&genuine);

    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("a word", "garbage".into()),
        ("three dots' worth of nothing", "..".into()),
        ("three short parts", "a.b.c".into()),
        ("not base64", "!!!.???.***".into()),
        ("raw JSON", r#"{"sub":"alice","roles":["admin"]}"#.into()),
        ("header only", header_part.into()),
        ("header and payload only", format!("{header_part}.{payload_part}")),
        ("a fourth part appended", format!("{genuine}.{signature_part}")),
        ("five parts (JWE shape)", format!("{header_part}.{payload_part}.{signature_part}.x.y")),
        ("truncated signature", genuine[..genuine.len() - 1].to_owned()),
        ("payload not JSON", format!("{header_part}.{}.{signature_part}", b64url(b"not json"))),
        ("header not JSON", format!("{}.{payload_part}.{signature_part}", b64url(b"not json"))),
        ("a space inside", format!("{header_part}.{payload_part} .{signature_part}")),
        ("two tokens", format!("{genuine} {genuine}")),
        ("very long", "A".repeat(16 * 1024)),
    ];
    // Control: the genuine token the broken ones are cut from is accepted.
    me_accepted(&app, &genuine, "control: genuine").await;

    for (case, token) in cases {
        let response = gql_with_authorization(&app, header(&format!("Bearer {token}")), ME).await;

        assert_unauthenticated(&response, case);
    }

    let non_ascii = HeaderValue::from_bytes(b"Bearer \xe9t\xe9").expect("obs-text is a valid header value");
    let response = gql_with_authorization(&app, non_ascii, ME).await;
    assert_unauthenticated(&response, "non-ASCII bytes");
}

#[tokio::test]
async fn a_valid_token_under_another_authorization_scheme_is_unauthenticated() {
    let app = spawn_app(&[]).await;
    let token = app.token("alice", &["client"]);
    me_accepted(&app, &token, "control: Bearer").await;

    for (case, value) in [
        ("Basic", format!("Basic {token}")),
        ("Token", format!("Token {token}")),
        ("JWT", format!("JWT {token}")),
        ("Digest", format!("Digest {token}")),
        ("no scheme", token.clone()),
        ("Bearer without a space", format!("Bearer{token}")),
        ("Bearer with a colon", format!("Bearer:{token}")),
        ("Bearer twice", format!("Bearer Bearer {token}")),
        ("Bearer alone", "Bearer".to_owned()),
        ("empty header", String::new()),
    ] {
        let response = gql_with_authorization(&app, header(&value), ME).await;

        assert_unauthenticated(&response, case);
    }
}

#[tokio::test]
async fn rejection_messages_do_not_reveal_why_a_token_was_refused() {
    let app = spawn_app(&[]).await;
    let valid = claims("alice", &["client"]);
    let tokens = [
        ("expired", app.token_with_claims(with(valid.clone(), "exp", json!(now_secs() - 3600)))),
        ("no exp", app.token_with_claims(without(valid.clone(), "exp"))),
        ("no sub", app.token_with_claims(without(valid.clone(), "sub"))),
        ("other secret", sign(Algorithm::HS256, &EncodingKey::from_secret(b"other"), &valid)),
        ("garbage", "garbage".to_owned()),
    ];
    let mut messages = Vec::new();

    for (case, token) in &tokens {
        let response = app.gql(Some(token), ME, json!({})).await;
        assert_unauthenticated(&response, case);
        messages.push((*case, response.errors()[0]["message"].as_str().unwrap_or_default().to_owned()));
    }

    let (_, first) = &messages[0];
    for (case, message) in &messages {
        assert_eq!(message, first, "{case}: every refusal reads the same, whatever the reason: {messages:?}");
        // jsonwebtoken's own error texts stay in the log.
        for leak in ["expiredsignature", "invalidsignature", "missing required claim", "base64", "json error"] {
            assert!(!message.to_lowercase().contains(leak), "{case}: {message:?} reveals {leak:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// RS256 / ES256
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_rs256_token_is_accepted_by_an_rs256_app() {
    let app = spawn_rs256().await;
    let token = sign(Algorithm::RS256, &rsa_key(), &claims("alice", &["client", "operator"]));

    let (subject, roles) = me_accepted(&app, &token, "RS256").await;

    assert_eq!(subject, "alice");
    assert_eq!(roles, ["CLIENT", "OPERATOR"]);
}

#[tokio::test]
async fn a_valid_es256_token_is_accepted_by_an_es256_app() {
    let app = spawn_es256().await;
    let token = sign(Algorithm::ES256, &ec_key(), &claims("bob", &["worker"]));

    let (subject, roles) = me_accepted(&app, &token, "ES256").await;

    assert_eq!(subject, "bob");
    assert_eq!(roles, ["WORKER"]);
}

#[tokio::test]
async fn an_expired_rs256_token_is_unauthenticated() {
    let app = spawn_rs256().await;

    let token =
        sign(Algorithm::RS256, &rsa_key(), &with(claims("alice", &["client"]), "exp", json!(now_secs() - 3600)));

    me_refused(&app, &token, "expired RS256").await;
}

#[tokio::test]
async fn an_hs256_token_is_refused_by_an_rs256_app() {
    let app = spawn_rs256().await;

    // Signed with the secret TestApp generated, which the app was told to forget.
    let token = app.token("alice", &["client"]);

    me_refused(&app, &token, "HS256 with the test secret").await;
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_public_key_is_refused_by_an_rs256_app() {
    // The classic key-confusion attack: the public key is public, so if the server let the
    // token pick HS256 and fed its PEM to HMAC, anyone could mint tokens.
    let app = spawn_rs256().await;
    let pem = read_fixture(RSA_PUBLIC);
    let trimmed = String::from_utf8(pem.clone()).expect("PEM is text").trim().to_owned();
    let claims = claims("mallory", &["admin"]);

    for (case, secret) in
        [("PEM bytes as the HMAC secret", pem.clone()), ("trimmed PEM as the HMAC secret", trimmed.into_bytes())]
    {
        for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let token = sign(algorithm, &EncodingKey::from_secret(&secret), &claims);

            me_refused(&app, &token, &format!("{case}, {algorithm:?}")).await;
        }
    }
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_public_key_is_refused_by_an_es256_app() {
    let app = spawn_es256().await;

    let token =
        sign(Algorithm::HS256, &EncodingKey::from_secret(&read_fixture(EC_PUBLIC)), &claims("mallory", &["admin"]));

    me_refused(&app, &token, "EC PEM bytes as the HMAC secret").await;
}

#[tokio::test]
async fn an_rs256_app_refuses_other_algorithms_even_with_its_own_key() {
    let app = spawn_rs256().await;
    let claims = claims("alice", &["client"]);
    me_accepted(&app, &sign(Algorithm::RS256, &rsa_key(), &claims), "control: RS256").await;

    for (case, token) in [
        ("RS384 with the same RSA key", sign(Algorithm::RS384, &rsa_key(), &claims)),
        ("RS512 with the same RSA key", sign(Algorithm::RS512, &rsa_key(), &claims)),
        ("PS256 with the same RSA key", sign(Algorithm::PS256, &rsa_key(), &claims)),
        ("ES256 with the EC key", sign(Algorithm::ES256, &ec_key(), &claims)),
    ] {
        me_refused(&app, &token, case).await;
    }
}

#[tokio::test]
async fn an_es256_app_refuses_tokens_signed_for_other_algorithms() {
    let app = spawn_es256().await;
    let claims = claims("bob", &["worker"]);
    me_accepted(&app, &sign(Algorithm::ES256, &ec_key(), &claims), "control: ES256").await;

    for (case, token) in [
        ("RS256 with the RSA key", sign(Algorithm::RS256, &rsa_key(), &claims)),
        ("HS256 with the test secret", app.token("bob", &["worker"])),
    ] {
        me_refused(&app, &token, case).await;
    }
}

#[tokio::test]
async fn an_rs256_token_signed_by_a_stranger_is_refused_by_an_es256_app_and_vice_versa() {
    // Each app trusts exactly one public key; the other fixture's key is a stranger to it.
    let rs_app = spawn_rs256().await;
    let es_app = spawn_es256().await;
    let claims = claims("alice", &["client"]);

    me_refused(&es_app, &sign(Algorithm::RS256, &rsa_key(), &claims), "RS256 at the ES256 app").await;
    me_refused(&rs_app, &sign(Algorithm::ES256, &ec_key(), &claims), "ES256 at the RS256 app").await;
}

#[tokio::test]
async fn an_hs256_app_refuses_rs256_and_es256_tokens() {
    let app = spawn_app(&[]).await;
    let claims = claims("alice", &["client"]);

    me_refused(&app, &sign(Algorithm::RS256, &rsa_key(), &claims), "RS256 at the HS256 app").await;
    me_refused(&app, &sign(Algorithm::ES256, &ec_key(), &claims), "ES256 at the HS256 app").await;
}

// ---------------------------------------------------------------------------------------
// Issuer and audience
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_for_another_audience_is_unauthenticated_when_an_audience_is_configured() {
    let app = spawn_app(&[("TASKWIRE_JWT_AUDIENCE", AUDIENCE)]).await;
    let valid = with(claims("alice", &["client"]), "aud", json!(AUDIENCE));
    me_accepted(&app, &app.token_with_claims(valid.clone()), "control: the configured audience").await;

    for (case, aud) in [
        ("another audience", json!("backends")),
        ("audience differs in case", json!("Frontends")),
        ("empty audience", json!("")),
        ("an array of other audiences", json!(["backends"])),
    ] {
        let token = app.token_with_claims(with(valid.clone(), "aud", aud));

        me_refused(&app, &token, case).await;
    }
}

#[tokio::test]
async fn a_token_without_aud_is_unauthenticated_when_an_audience_is_configured() {
    let app = spawn_app(&[("TASKWIRE_JWT_AUDIENCE", AUDIENCE)]).await;
    let valid = with(claims("alice", &["client"]), "aud", json!(AUDIENCE));
    me_accepted(&app, &app.token_with_claims(valid.clone()), "control: the configured audience").await;

    let token = app.token_with_claims(without(valid, "aud"));

    me_refused(&app, &token, "no aud claim").await;
}

#[tokio::test]
async fn a_token_whose_audience_array_contains_the_configured_audience_is_accepted() {
    // RFC 7519 §4.1.3: `aud` is in general an array; a single string is the special case.
    let app = spawn_app(&[("TASKWIRE_JWT_AUDIENCE", AUDIENCE)]).await;

    for (case, aud) in [("only ours", json!([AUDIENCE])), ("ours among others", json!(["backends", AUDIENCE]))] {
        let token = app.token_with_claims(with(claims("alice", &["client"]), "aud", aud));

        me_accepted(&app, &token, case).await;
    }
}

#[tokio::test]
async fn a_token_from_another_issuer_is_unauthenticated_when_an_issuer_is_configured() {
    let app = spawn_app(&[("TASKWIRE_JWT_ISSUER", ISSUER)]).await;
    let valid = with(claims("alice", &["client"]), "iss", json!(ISSUER));
    me_accepted(&app, &app.token_with_claims(valid.clone()), "control: the configured issuer").await;

    for (case, iss) in [
        ("another issuer", json!("https://evil.test")),
        ("issuer with a trailing slash", json!(format!("{ISSUER}/"))),
        ("empty issuer", json!("")),
    ] {
        let token = app.token_with_claims(with(valid.clone(), "iss", iss));

        me_refused(&app, &token, case).await;
    }
}

#[tokio::test]
async fn a_token_without_iss_is_unauthenticated_when_an_issuer_is_configured() {
    let app = spawn_app(&[("TASKWIRE_JWT_ISSUER", ISSUER)]).await;
    let valid = with(claims("alice", &["client"]), "iss", json!(ISSUER));
    me_accepted(&app, &app.token_with_claims(valid.clone()), "control: the configured issuer").await;

    let token = app.token_with_claims(without(valid, "iss"));

    me_refused(&app, &token, "no iss claim").await;
}

#[tokio::test]
async fn a_token_with_the_configured_issuer_and_audience_is_accepted() {
    let app = spawn_app(&[("TASKWIRE_JWT_ISSUER", ISSUER), ("TASKWIRE_JWT_AUDIENCE", AUDIENCE)]).await;
    let valid = with(with(claims("alice", &["client"]), "iss", json!(ISSUER)), "aud", json!(AUDIENCE));

    let (subject, roles) = me_accepted(&app, &app.token_with_claims(valid.clone()), "iss and aud").await;

    assert_eq!(subject, "alice");
    assert_eq!(roles, ["CLIENT"]);
    for (case, key, value) in [
        ("right issuer, wrong audience", "aud", json!("backends")),
        ("wrong issuer, right audience", "iss", json!("https://evil.test")),
    ] {
        me_refused(&app, &app.token_with_claims(with(valid.clone(), key, value)), case).await;
    }
}

#[tokio::test]
async fn an_rs256_app_checks_issuer_and_audience_too() {
    let app = spawn_app(&[
        ("TASKWIRE_JWT_SECRET", ""),
        ("TASKWIRE_JWT_PUBLIC_KEY_FILE", RSA_PUBLIC),
        ("TASKWIRE_JWT_ISSUER", ISSUER),
        ("TASKWIRE_JWT_AUDIENCE", AUDIENCE),
    ])
    .await;
    let valid = with(with(claims("alice", &["client"]), "iss", json!(ISSUER)), "aud", json!(AUDIENCE));
    me_accepted(&app, &sign(Algorithm::RS256, &rsa_key(), &valid), "control: iss and aud").await;

    // Missing iss/aud are covered (with HS256) by the two `a_token_without_…` tests.
    for (case, key, value) in
        [("wrong issuer", "iss", json!("https://evil.test")), ("wrong audience", "aud", json!("backends"))]
    {
        me_refused(&app, &sign(Algorithm::RS256, &rsa_key(), &with(valid.clone(), key, value)), case).await;
    }
}

#[tokio::test]
async fn issuer_and_audience_claims_are_not_checked_when_not_configured() {
    let app = spawn_app(&[]).await;

    for (case, key, value) in
        [("any issuer", "iss", json!("https://anyone.test")), ("any audience", "aud", json!("anyone"))]
    {
        let token = app.token_with_claims(with(claims("alice", &["client"]), key, value));

        me_accepted(&app, &token, case).await;
    }
}

#[tokio::test]
async fn a_token_with_an_audience_array_is_accepted_when_no_audience_is_configured() {
    // RFC 7519 §4.1.3 again: an identity provider may always send `aud` as an array.
    let app = spawn_app(&[]).await;
    let token = app.token_with_claims(with(claims("alice", &["client"]), "aud", json!(["anyone", "else"])));

    me_accepted(&app, &token, "aud array, no audience configured").await;
}

// ---------------------------------------------------------------------------------------
// Role guards
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn only_clients_may_create_tasks() {
    let app = spawn_app(&[]).await;

    for (case, roles) in [
        ("worker", &["worker"][..]),
        ("operator", &["operator"]),
        ("admin", &["admin"]),
        ("operator and admin", &["operator", "admin"]),
        ("worker and operator", &["worker", "operator"]),
        ("no roles", &[]),
    ] {
        let token = app.token(&format!("not-a-client-{}", case.replace(' ', "-")), roles);

        let single = app.gql(Some(&token), CREATE_TASK, json!({})).await;
        let batch = app.gql(Some(&token), CREATE_TASKS, json!({})).await;

        assert_eq!(single.status, 200, "{case}: createTask HTTP status");
        assert_code(&single, "FORBIDDEN", &format!("{case}: createTask"));
        assert!(single.body["data"].is_null(), "{case}: createTask answered: {}", single.body);
        assert_code(&batch, "FORBIDDEN", &format!("{case}: createTasks"));
    }

    // Nothing slipped through: an operator sees every task, and there are none.
    let operator = app.token("olivia", &["operator"]);
    let listed = app.gql(Some(&operator), TASKS, json!({})).await;
    assert_eq!(listed.data()["tasks"]["edges"], json!([]), "forbidden calls created tasks");

    // Control: a client may, and the operator then sees it.
    let client = app.token("alice", &["client"]);
    let created = app.gql(Some(&client), CREATE_TASK, json!({})).await;
    let id = created.data()["createTask"]["task"]["id"].clone();
    assert_eq!(created.data()["createTask"]["created"], true);
    let listed = app.gql(Some(&operator), TASKS, json!({})).await;
    assert_eq!(listed.data()["tasks"]["edges"], json!([{ "node": { "id": id } }]));
}

#[tokio::test]
async fn an_admin_token_lists_admin_in_me() {
    let app = spawn_app(&[]).await;
    let token = app.token("root", &["admin"]);

    let (subject, roles) = me_accepted(&app, &token, "admin").await;

    assert_eq!(subject, "root");
    assert_eq!(roles, ["ADMIN"]);
}

#[tokio::test]
async fn a_token_that_is_not_valid_yet_is_unauthenticated() {
    let app = spawn_app(&[]).await;
    let token = app.token_with_claims(with(claims("alice", &["client"]), "nbf", json!(now_secs() + 86_400)));
    let response = app.gql(Some(&token), ME, json!({})).await;
    assert_eq!(response.code(), "UNAUTHENTICATED", "{}", response.body);
}

#[tokio::test]
async fn a_token_with_an_empty_subject_is_unauthenticated() {
    let app = spawn_app(&[]).await;
    for sub in ["", "   "] {
        let token = app.token_with_claims(claims(sub, &["client"]));
        let response = app.gql(Some(&token), ME, json!({})).await;
        assert_eq!(response.code(), "UNAUTHENTICATED", "sub {sub:?}: {}", response.body);
    }
}
