//! The `taskwire` binary, driven like an operator would.

use std::process::{Command, Output};

fn taskwire(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_taskwire"));
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TASKWIRE_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    command.output().expect("taskwire runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn help_documents_every_configuration_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = taskwire(&["--help"], &[], dir.path());
    assert!(output.status.success());
    let help = stdout(&output);
    for key in taskwire_api::config::KEYS {
        let listed = format!("TASKWIRE_{}", key.name);
        assert!(help.contains(&listed), "--help lists {listed}");
        assert!(help.contains(&format!("[default: {}]", key.default.text())), "--help shows the default of {listed}");
    }
    for command in ["serve", "migrate", "schema", "token"] {
        assert!(help.contains(command), "--help lists {command}");
    }
}

#[test]
fn token_mints_a_jwt_that_a_standard_library_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = taskwire(
        &["token", "--sub", "alice", "--role", "client", "--role", "operator", "--ttl", "10m"],
        &[("TASKWIRE_JWT_SECRET", "cli-secret")],
        dir.path(),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = stdout(&output).trim().to_owned();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(b"cli-secret"),
        &validation,
    )
    .expect("verifies with the configured secret");
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(data.claims["roles"], serde_json::json!(["client", "operator"]));
    let ttl = data.claims["exp"].as_u64().unwrap_or_default() - jsonwebtoken::get_current_timestamp();
    assert!((590..=600).contains(&ttl), "10 minutes, got {ttl}s");
}

#[test]
fn token_refuses_unknown_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = taskwire(&["token", "--sub", "a", "--role", "root"], &[("TASKWIRE_JWT_SECRET", "s")], dir.path());
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown role"));
}

#[test]
fn schema_prints_the_sdl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = taskwire(&["schema"], &[], dir.path());
    assert!(output.status.success());
    assert_eq!(stdout(&output), taskwire_api::graphql::sdl());
}

#[test]
fn migrate_applies_reports_reverts_and_refreshes_the_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/m.db?mode=rwc", dir.path().display());
    let env = [("TASKWIRE_DATABASE_URL", url.as_str())];
    let run = |action: &str| {
        let output = taskwire(&["migrate", action], &env, dir.path());
        assert!(output.status.success(), "migrate {action}: {}", String::from_utf8_lossy(&output.stderr));
        stdout(&output)
    };
    let all = <taskwire_migration::Migrator as taskwire_migration::MigratorTrait>::migrations().len();
    assert!(all >= 2, "a down leaves something applied");
    let applied = |n: usize| format!("done ({n} applied)");
    assert!(run("status").contains("Pending"), "nothing applied yet");
    assert!(run("up").contains(&applied(all)));
    assert!(run("status").contains("Applied  m20261121_000001_initial_schema"));
    assert!(run("down").contains(&applied(all - 1)), "down reverts only the latest");
    assert!(run("up").contains(&applied(all)));
    assert!(run("fresh").contains(&applied(all)));
}

#[test]
fn production_mode_refuses_to_mint_with_an_invented_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("TASKWIRE_DATABASE_URL", "mysql://root@127.0.0.1:1/x")];
    let output = taskwire(&["token", "--sub", "a", "--role", "client"], &env, dir.path());
    assert!(!output.status.success());
    assert!(!dir.path().join("data").exists(), "no dev secret was generated");
}

#[test]
fn production_mode_refuses_to_serve_without_a_jwt_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = taskwire(&["serve"], &[("TASKWIRE_DATABASE_URL", "mysql://root@127.0.0.1:1/x")], dir.path());
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("TASKWIRE_JWT_SECRET"));
}

/// The banner of `serve` on the embedded defaults in `dir`, with `env` added: every line
/// printed until none has come for a second after the GraphQL address (at most 60 s in
/// all); then the process is killed.
fn serve_banner(env: &[(&str, &str)], dir: &std::path::Path) -> String {
    use std::{
        io::{BufRead, BufReader},
        sync::mpsc,
        time::{Duration, Instant},
    };

    let mut command = Command::new(env!("CARGO_BIN_EXE_taskwire"));
    command.arg("serve").current_dir(dir).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TASKWIRE_")) {
        command.env_remove(key);
    }
    command.env("TASKWIRE_LISTEN", "127.0.0.1:0").envs(env.iter().copied());
    let mut child = command.spawn().expect("taskwire serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    // The reader ends when the process is killed (its stdout closes).
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = String::new();
    loop {
        let wait = if banner.contains("GraphQL:") {
            Duration::from_secs(1)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                banner.push_str(&line);
                banner.push('\n');
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    banner
}

#[test]
fn the_banner_prints_a_dev_token_only_for_the_generated_secret() {
    let generated = tempfile::tempdir().expect("tempdir");
    let configured = tempfile::tempdir().expect("tempdir");

    let with_generated = serve_banner(&[], generated.path());
    let with_configured =
        serve_banner(&[("TASKWIRE_JWT_SECRET", "a-configured-secret-long-enough-for-hs256")], configured.path());

    assert!(
        with_generated.contains("Admin token") && with_generated.lines().any(|l| l.starts_with("eyJ")),
        "embedded default: a dev token\n{with_generated}"
    );
    assert!(with_configured.contains("GraphQL:"), "the banner was read\n{with_configured}");
    assert!(
        !with_configured.contains("Admin token") && !with_configured.lines().any(|l| l.starts_with("eyJ")),
        "a configured secret: no token printed\n{with_configured}"
    );
}
