//! Command line: `serve` (the default), `migrate`, `token`. Flags mirror a few environment
//! variables; configuration errors exit with code 2 and one line naming the variable.

use crate::auth::{Authenticator, Role};
use crate::config::{AppEnv, Config, ConfigError};
use crate::domain::Gender;
use crate::server::{Gateway, run};
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "presence-gateway",
    version,
    about = "Presence and live statistics over Socket.IO"
)]
pub struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The flags of `serve` (also accepted before any subcommand: `presence-gateway --dev`).
#[derive(clap::Args, Debug, Clone, Default)]
struct ServeArgs {
    /// Start in development (same as APP_ENV=development): without JWT_SECRET, a secret kept
    /// in DEV_SECRET_FILE, and ready tokens printed.
    #[arg(long)]
    dev: bool,
    /// Listen address (overrides HOST).
    #[arg(long)]
    host: Option<String>,
    /// Listen port (overrides PORT; 0 picks a free one).
    #[arg(long)]
    port: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Apply the SQL migrations (DATABASE_URL) and exit.
    Migrate,
    /// Print a signed JWT for local testing: with JWT_SECRET, or with --dev the development
    /// gateway's secret.
    Token {
        /// Sign with the development secret (DEV_SECRET_FILE) that `presence-gateway --dev`
        /// uses, for tokens a running development gateway accepts.
        #[arg(long)]
        dev: bool,
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// male, female or other; omitted: no gender claim.
        #[arg(long)]
        gender: Option<String>,
        /// A role (user, dashboard, publisher, admin); repeat for several. Default: user.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

fn config_from(cli: &Cli) -> Result<Config, ConfigError> {
    let serve = match &cli.command {
        Some(Command::Serve(args)) => ServeArgs {
            dev: args.dev || cli.serve.dev,
            host: args.host.clone().or(cli.serve.host.clone()),
            port: args.port.clone().or(cli.serve.port.clone()),
        },
        Some(Command::Token { dev, .. }) => ServeArgs {
            dev: *dev || cli.serve.dev,
            ..Default::default()
        },
        _ => cli.serve.clone(),
    };
    let ServeArgs { dev, host, port } = serve;
    let lookup = |k: &str| match k {
        "APP_ENV" if dev => Some("development".into()),
        "HOST" if host.is_some() => host.clone(),
        "PORT" if port.is_some() => port.clone(),
        _ => std::env::var(k).ok(),
    };
    match cli.command {
        Some(Command::Migrate) => Config::from_lookup_keyless(lookup),
        _ => Config::from_lookup(lookup),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config_from(&cli) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match cli.command {
        None | Some(Command::Serve(_)) => serve(config),
        Some(Command::Migrate) => migrate(&config),
        Some(Command::Token {
            dev: _,
            sub,
            gender,
            roles,
            name,
            ttl,
        }) => token(&config, &sub, gender, roles, name, ttl),
    }
}

fn token(
    config: &Config,
    sub: &str,
    gender: Option<String>,
    roles: Vec<String>,
    name: Option<String>,
    ttl: u64,
) -> ExitCode {
    if config.jwt_secret.is_none() && !config.is_development() {
        return fail(
            "JWT_SECRET: token signs with the HS256 secret the gateway verifies with; set it, \
             or pass --dev for the development gateway's secret",
        );
    }
    if config.jwt_public_key_file.is_some() {
        return fail(
            "JWT_PUBLIC_KEY_FILE: tokens for RS256/ES256 come from your identity provider",
        );
    }
    let gender = match gender.as_deref().map(str::parse::<Gender>) {
        None => None,
        Some(Ok(g)) => Some(g),
        Some(Err(())) => return fail("--gender: expected male, female or other"),
    };
    let roles: Vec<Role> = if roles.is_empty() {
        vec![Role::User]
    } else {
        match roles
            .iter()
            .map(|r| Role::parse(r).ok_or(r))
            .collect::<Result<_, _>>()
        {
            Ok(r) => r,
            Err(r) => return fail(format!("--role: unknown role {r:?}")),
        }
    };
    let auth = match Authenticator::from_config(config) {
        Ok(k) => k.authenticator,
        Err(e) => return fail(e),
    };
    match auth.issue(sub, gender, name.as_deref(), &roles, ttl) {
        Some(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        None => fail("JWT_SECRET: cannot sign"),
    }
}

/// `migrate`: apply the embedded migrations and exit. Waits up to a minute for the
/// database (a deployment hook may start before it), then fails with exit 1.
fn migrate(config: &Config) -> ExitCode {
    let Some(url) = &config.database_url else {
        return fail("DATABASE_URL: migrate needs a database URL");
    };
    crate::telemetry::init();
    let Some(rt) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async {
        let db = match crate::db::Database::new(crate::db::DbSettings {
            url,
            max_connections: 1,
            online_debounce: std::time::Duration::ZERO,
            offline_debounce: std::time::Duration::ZERO,
            node: &config.node_id,
        }) {
            Ok(db) => db,
            Err(e) => return fail(format!("DATABASE_URL: {e}")),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match db.migrate().await {
                Ok(()) => {
                    eprintln!("migrations applied");
                    // A migration may have built the statistics rollups inside its
                    // transaction; vacuum them here, where it is allowed (skips clean pages).
                    if let Err(e) = db.vacuum_rollups().await {
                        eprintln!("warning: statistics rollups not vacuumed: {e}");
                    }
                    return match db.ensure_rollup_gap(config.stats_session_gap_ms).await {
                        Ok(rebuilt) => {
                            if rebuilt {
                                eprintln!("statistics rollups rebuilt for STATS_SESSION_GAP_MS");
                            }
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("error: {e}");
                            ExitCode::FAILURE
                        }
                    };
                }
                Err(e) if std::time::Instant::now() < deadline && !db.is_up() => {
                    tracing::warn!(error = %e, "database not reachable yet; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    })
}

/// Build a runtime, saying why if it cannot be.
fn runtime(mut b: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    b.enable_all()
        .build()
        .map_err(|e| eprintln!("error: cannot start the runtime: {e}"))
        .ok()
}

fn serve(config: Config) -> ExitCode {
    crate::telemetry::init();
    let Some(rt) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        if config.socket_allow_insecure_userid && config.app_env == AppEnv::Production {
            tracing::warn!("SOCKET_ALLOW_INSECURE_USERID is ignored in production");
        }
        let addr = std::net::SocketAddr::new(config.host, config.port);
        let gw = match Gateway::build(config).await {
            Ok(g) => g,
            Err(e) => return fail(e),
        };
        let listener = match bind(addr) {
            Ok(l) => l,
            Err(e) => return fail(format!("PORT: cannot listen on {addr}: {e}")),
        };
        let shutdown = CancellationToken::new();
        if let Some(port) = gw.state.config.metrics_port {
            let at = std::net::SocketAddr::new(addr.ip(), port);
            match bind(at) {
                Ok(l) => {
                    tracing::info!("metrics on {at}");
                    // The same server as the main port's (header timeout, head cap), stopped
                    // with it.
                    tokio::spawn(crate::http::serve::serve(
                        l,
                        crate::http::metrics_router(gw.state.clone()),
                        gw.state.upgrades.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => return fail(format!("METRICS_PORT: cannot listen on {at}: {e}")),
            }
        }
        let bound = listener.local_addr().unwrap_or(addr);
        // The how-to-connect banner comes first: once `listening on` shows, all is printed.
        if gw.state.config.is_development() {
            announce_development(&gw, bound.port());
        }
        tracing::info!(node = %gw.state.config.node_id, engine = gw.state.engine.kind(), "listening on {bound}");
        tokio::spawn(on_signal(shutdown.clone()));
        match run(gw, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Listen with a deep accept queue: after a deploy or an outage, thousands of clients
/// reconnect at once, and tokio's default backlog (1024) overflows, which costs each dropped
/// client a one-second SYN retransmission. The kernel caps it at `net.core.somaxconn`.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

/// Tell a newcomer how to connect, with tokens that work against this very process.
fn announce_development(gw: &Gateway, port: u16) {
    let auth = &gw.state.auth;
    let mint = |sub: &str, g: Option<Gender>, roles: &[Role]| {
        auth.issue(sub, g, Some(sub), roles, 24 * 3600)
    };
    if !gw.generated_secret {
        // A configured key may be a real deployment's: tokens signed with it are not printed.
        tracing::warn!("development mode");
        println!(
            "\n  Development mode with a configured key: mint tokens with\n    \
             presence-gateway token --sub u1 --gender female\n  \
             Console: http://localhost:{port}/ui/   (sign in with a token with the admin or dashboard role)\n  \
             Health: curl http://localhost:{port}/api/health\n"
        );
        return;
    }
    tracing::warn!(
        secret_file = %gw.state.config.dev_secret_file.display(),
        "development mode: JWT secret kept in DEV_SECRET_FILE (never use it in production)"
    );
    let url = format!("http://localhost:{port}");
    let alice = mint("alice", Some(Gender::Female), &[Role::User]);
    let bob = mint("bob", Some(Gender::Male), &[Role::User]);
    let admin = mint("ops", None, &[Role::Admin, Role::Dashboard]);
    if let (Some(alice), Some(bob), Some(admin)) = (alice, bob, admin) {
        let mut text = format!(
            "\n  Connect with socket.io-client (tokens valid 24 h):\n    \
             io(\"{url}\", {{ auth: {{ token: \"{alice}\" }} }})   // alice, female\n    \
             io(\"{url}\", {{ auth: {{ token: \"{bob}\" }} }})   // bob, male\n  \
             Console: {url}/ui/   sign in with the admin token: {admin}\n  \
             Health:  curl {url}/api/health\n  \
             Admin:   curl -H \"Authorization: Bearer {admin}\" {url}/api/debug/presence\n  \
             More tokens: cargo run -- token --dev --sub u1 --gender female   (or presence-gateway token --dev ...)\n  \
             For e2e/examples/two-users.mjs:\n    export ALICE={alice} BOB={bob}\n"
        );
        if gw.state.config.insecure_userid_allowed() {
            text.push_str(&format!("  Insecure login is on: io(\"{url}\", {{ auth: {{ userId: \"u1\", gender: \"female\" }} }})\n"));
        }
        println!("{text}");
    }
}

async fn on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
