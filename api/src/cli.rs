//! The command line: `taskwire [serve] | migrate | schema | token`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use sea_orm_migration::MigratorTrait;
use taskwire_domain::Role;
use taskwire_migration::Migrator;

use crate::{auth::JwtKeys, config::Config, startup::Application, store::Store, telemetry};

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
    let embedded = !config.is_production();
    let graphiql = config.graphiql;
    let host = config.listen.ip();
    let app = Application::build(config).await.map_err(|e| e.to_string())?;
    let base = format!("http://{host}:{}", app.port());
    println!("Taskwire is listening on {base}");
    println!("  GraphQL:  {base}/graphql");
    if graphiql {
        println!("  GraphiQL: {base}/graphiql");
    }
    if embedded && let Some(token) = app.keys().mint("dev-admin", &[Role::Admin, Role::Client], DEV_TOKEN_TTL) {
        println!("  Admin token (sub dev-admin, roles admin+client, valid 24h; paste into GraphiQL's headers as");
        println!("  {{\"Authorization\": \"Bearer <token>\"}}):");
        println!("{token}");
    }
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; draining in-flight requests");
        shutdown.cancel();
    });
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

async fn migrate(mut config: Config, action: MigrateAction) -> Result<(), String> {
    config.migrate = false;
    let store = Store::connect(&config).await.map_err(|e| e.to_string())?;
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
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number.parse().map_err(|_| format!("bad ttl {text:?}: expected e.g. 30m, 1h, 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad ttl unit in {text:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(value.saturating_mul(seconds)))
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
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
