//! `guildhall serve` (default) runs the services; `guildhall migrate` applies migrations.
//! Configuration comes from the environment only: see README.md.

use platform::config::Config;

/// mimalloc instead of glibc's allocator: the request paths allocate many small short-lived
/// buffers across threads, where glibc's arenas showed as ~15% of the server's CPU in profiles
/// of the leaderboard benchmark. Built without its transparent-huge-page advice (the `no_thp`
/// feature): with it, each touched part of the heap took a whole 2 MiB page, which an idle
/// process kept (loadtest/idle.sh; figures in loadtest/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: guildhall [serve|worker|migrate|restore-check|after-restore|events|keys|healthcheck|openapi|version]\n\
  serve    run the services (SERVICES picks a subset; default all)\n\
  worker   deliver events only: the outbox relay and the queue consumers of SERVICES\n\
  migrate  apply database migrations and exit\n\
  restore-check  compare the database's history with what Redis saw (exit 1 when it was restored)\n\
  after-restore  after restoring the database: end older sessions, forget the rank index\n\
  events dead [--limit N]  list dead events (parked outbox rows, dead-letter queues) as JSON\n\
  events redrive (--all | EVENT_ID...)  make dead events due again\n\
  keys generate  print a new token signing key (PEM; its kid on stderr)\n\
  keys public    print the public key of the private key on stdin\n\
  keys show      print the token key set this configuration uses (kids, JWKS, public PEM bundle)\n\
  keys rotate | keys retire KID  embedded defaults: a new key in DATA_DIR signs, the old verifies; then retire it\n\
  healthcheck  exit 0 if the server on LISTEN_ADDR answers /health/live (container health check)\n\
  openapi  print the OpenAPI document and exit\n\
  version  print the version";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let command = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("guildhall: configuration error: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let telemetry = platform::telemetry::init(config.log_format, config.traces.as_ref());
    let result = match command.as_str() {
        "serve" => guildhall::run(config).await,
        "worker" => guildhall::run_worker(config).await,
        "migrate" => guildhall::migrate(&config).await,
        "restore-check" => guildhall::restore_check(&config).await,
        "after-restore" => guildhall::after_restore(&config).await,
        "events" => guildhall::events(&config, &std::env::args().skip(2).collect::<Vec<_>>()).await,
        "keys" => guildhall::keys(&config, &std::env::args().skip(2).collect::<Vec<_>>()),
        "healthcheck" => guildhall::healthcheck(&config).await,
        "openapi" => serde_json::to_string_pretty(&guildhall::openapi()).map(|doc| println!("{doc}")).map_err(anyhow::Error::from),
        "version" | "--version" | "-V" => {
            println!("guildhall {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("guildhall: unknown command {other:?}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    // The blocking flush runs off the async workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "guildhall failed");
            eprintln!("guildhall: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
