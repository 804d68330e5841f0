//! The command line: `taskwire [serve] | migrate | schema | token`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use sea_orm_migration::MigratorTrait;
use taskwire_domain::Role;
use taskwire_migration::Migrator;

use crate::{auth::JwtKeys, config::Config, startup::Application, telemetry};
use taskwire_store::Store;

/// Lifetime of the admin token printed on an embedded start.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Parser)]
#[command(
    name = "taskwire",
    version,
    about = "Taskwire: instant task dispatch behind a GraphQL BFF",
    after_help = Config::help()
)]
struct Cli {
    /// TOML file with configuration keys (lower-case names without the TASKWIRE_ prefix)
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default command)
    Serve {
        /// Do not apply pending migrations at start
        #[arg(long)]
        no_migrate: bool,
    },
    /// Manage the database schema
    Migrate {
        #[arg(value_enum, default_value_t = MigrateAction::Up)]
        action: MigrateAction,
    },
    /// Print the GraphQL SDL
    Schema,
    /// Mint a development token signed with the configured HS256 secret
    Token {
        /// Subject (`sub` claim): a client name or a worker id
        #[arg(long)]
        sub: String,
        /// Role: client, worker, operator or admin (repeatable)
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime, e.g. 90s, 30m, 1h, 7d
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MigrateAction {
    /// Apply pending migrations
    Up,
    /// Revert the latest migration
    Down,
    /// List migrations and whether they are applied
    Status,
    /// Drop everything and re-apply all migrations
    Fresh,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("taskwire: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("taskwire: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut config = Config::load(cli.config.as_deref()).map_err(|e| e.to_string())?;
    match cli.command.unwrap_or(Command::Serve { no_migrate: false }) {
        Command::Serve { no_migrate } => {
            config.migrate &= !no_migrate;
            serve(config).await
        }
        Command::Migrate { action } => migrate(config, action).await,
        Command::Schema => {
            print!("{}", crate::graphql::sdl());
            Ok(())
        }
        Command::Token { sub, roles, ttl } => {
            let roles = roles
                .iter()
                .map(|r| r.parse::<Role>().map_err(|_| format!("unknown role {r:?} (client, worker, operator, admin)")))
                .collect::<Result<Vec<_>, _>>()?;
            let ttl = parse_ttl(&ttl)?;
            // Production never invents a secret, for serving or for minting.
            config.check_serving().map_err(|e| e.to_string())?;
            let keys = JwtKeys::load(&config.jwt, &config.data_dir).map_err(|e| e.to_string())?;
            if ttl > keys.max_ttl() {
                return Err(format!(
                    "--ttl {}s is longer than the server accepts (TASKWIRE_JWT_MAX_TTL, {}s)",
                    ttl.as_secs(),
                    keys.max_ttl().as_secs()
                ));
            }
            let token = keys.mint(&sub, &roles, ttl).ok_or(
                "tokens can only be minted with an HS256 secret (TASKWIRE_JWT_SECRET or the embedded dev secret)",
            )?;
            println!("{token}");
            Ok(())
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let guard = telemetry::init(config.log_format, config.otlp_endpoint.as_deref());
    let served = serve_with(config).await;
    // The last spans leave before the process does; flushing waits for the collector.
    let _ = tokio::task::spawn_blocking(move || guard.shutdown()).await;
    served
}

async fn serve_with(config: Config) -> Result<(), String> {
    let (graphiql, console) = (config.graphiql, config.console);
    let host = config.listen.ip();
    let app = Application::build(config).await.map_err(|e| e.to_string())?;
    let base = format!("http://{host}:{}", app.port());
    print!("{}", banner(&base, graphiql, console, &app.keys()));
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; draining in-flight requests");
        shutdown.cancel();
    });
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

/// What `serve` prints at start. An admin token only when tokens are signed with the
/// development secret generated into the data dir: a token signed with a configured
/// secret would be a real credential, printed to whatever collects the output.
fn banner(base: &str, graphiql: bool, console: bool, keys: &JwtKeys) -> String {
    let mut out = format!("Taskwire is listening on {base}\n  GraphQL:  {base}/graphql\n");
    if graphiql {
        out.push_str(&format!("  GraphiQL: {base}/graphiql\n"));
    }
    if console {
        out.push_str(&format!("  Console:  {base}/console (sign in with an operator or admin token)\n"));
    }
    let ttl = DEV_TOKEN_TTL.min(keys.max_ttl());
    if keys.is_generated_dev_secret()
        && let Some(token) = keys.mint("dev-admin", &[Role::Admin, Role::Client], ttl)
    {
        out.push_str(&format!(
            "  Admin token (sub dev-admin, roles admin+client, valid {}h; paste it into the console, or into\n  GraphiQL's headers as\n",
            ttl.as_secs() / 3600
        ));
        out.push_str("  {\"Authorization\": \"Bearer <token>\"}):\n");
        out.push_str(&format!("{token}\n"));
    }
    out
}

async fn migrate(mut config: Config, action: MigrateAction) -> Result<(), String> {
    config.migrate = false;
    // One connection: `fresh` drops every table on one pooled connection and creates them
    // again on another, and a second SQLite connection could still plan with the schema it
    // read before the drop ("index … already exists").
    config.database.max_connections = 1;
    let topics = taskwire_store::Topics::new(&config.kafka.topic_prefix);
    let store = Store::connect(&config.database, topics).await.map_err(|e| e.to_string())?;
    let db = store.connection();
    let result = match action {
        MigrateAction::Up => Migrator::up(db, None).await,
        MigrateAction::Down => Migrator::down(db, Some(1)).await,
        MigrateAction::Fresh => Migrator::fresh(db).await,
        MigrateAction::Status => {
            let migrations = Migrator::get_migration_with_status(db).await.map_err(|e| e.to_string())?;
            for migration in migrations {
                println!("{:<8} {}", migration.status().to_string(), migration.name());
            }
            return Ok(());
        }
    };
    result.map_err(|e| e.to_string())?;
    let applied = Migrator::get_applied_migrations(db).await.map_err(|e| e.to_string())?.len();
    println!("migrate {}: done ({applied} applied)", format!("{action:?}").to_lowercase());
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Parses `90s`, `30m`, `1h`, `7d` (a bare number is seconds).
fn parse_ttl(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_ttl("15"), Ok(Duration::from_secs(15)));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn the_banner_prints_a_token_only_for_the_generated_dev_secret() {
        let day = Duration::from_secs(24 * 3600);
        let dir = tempfile::tempdir().expect("tempdir");
        let generated = crate::auth::JwtSettings {
            secret: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            max_ttl: day,
        };
        let configured = crate::auth::JwtSettings {
            secret: Some(secrecy::SecretString::from("an-operator-secret".to_owned())),
            ..generated.clone()
        };
        let dev = JwtKeys::load(&generated, dir.path()).expect("dev keys");
        let real = JwtKeys::load(&configured, dir.path()).expect("configured keys");

        let with_dev = banner("http://127.0.0.1:8080", true, true, &dev);
        let with_real = banner("http://127.0.0.1:8080", true, true, &real);

        assert!(with_dev.contains("Admin token"), "{with_dev}");
        let token = with_dev.lines().last().expect("a token line");
        assert!(dev.verify(token).is_ok(), "the printed token works: {with_dev}");
        assert!(!with_real.contains("Admin token") && !with_real.contains("eyJ"), "{with_real}");
        assert!(with_real.contains("/graphiql"), "the rest of the banner stays: {with_real}");
        assert!(with_real.contains("http://127.0.0.1:8080/console"), "the console is linked: {with_real}");
        assert!(!banner("http://127.0.0.1:8080", false, false, &real).contains("/console"));
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
