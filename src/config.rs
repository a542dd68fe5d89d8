//! Configuration: every environment variable of the contract, parsed and validated once at
//! start-up. A bad value stops start-up with exit code 2 and one line naming the variable.
//! (Long because the variables are many and each is documented where it is parsed; it does
//! one job.)
//!
//! [`Config::from_lookup`] takes a lookup function instead of reading the process
//! environment, so tests can build any configuration without touching global state.

use crate::domain::VisibilityPolicy;
use std::{fmt, net::IpAddr, path::PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

/// A start-up error: which variable, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Secrets published in this repository's deployment files (`k8s/overlays/development`, the
/// Helm chart's CI values): refused in production.
const EXAMPLE_SECRETS: [&str; 2] = [
    "development-only-secret-0123456789",
    "change-me-0123456789abcdef",
];

#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST`: address to listen on.
    pub host: IpAddr,
    /// `PORT`: port to listen on; 0 picks a free one (logged).
    pub port: u16,
    /// `METRICS_PORT`: when set, `/metrics` is served on this port only (same `HOST`), so that
    /// what is exposed to clients never carries it; unset, on `PORT` with everything else.
    pub metrics_port: Option<u16>,
    /// `NODE_ID`: this replica's id in health and metrics (default: the host name).
    pub node_id: String,
    /// `REDIS_URL`: unset runs the single-node memory engine.
    pub redis_url: Option<String>,
    /// `REDIS_KEY_PREFIX`: prefix of every Redis key and channel.
    pub redis_key_prefix: String,
    /// `DATABASE_URL`: PostgreSQL; unset turns persistence, search and analytics off.
    pub database_url: Option<String>,
    /// `DATABASE_SKIP_MIGRATIONS` (ours): do not migrate at start-up (run `migrate` instead,
    /// e.g. from a deployment hook).
    pub database_skip_migrations: bool,
    /// `DATABASE_POOL_SIZE` (ours): connections per replica.
    pub database_pool_size: u32,
    /// `APP_ENV` (falls back to `NODE_ENV`): development or production.
    pub app_env: AppEnv,
    /// `JWT_SECRET`: HS256 secret.
    pub jwt_secret: Option<String>,
    /// `DEV_SECRET_FILE` (ours): where a development start without a key keeps its HS256
    /// secret, created on first use (`presence-gateway token --dev` signs with it).
    pub dev_secret_file: PathBuf,
    /// `JWT_PUBLIC_KEY_FILE`: PEM public key for RS256 or ES256.
    pub jwt_public_key_file: Option<PathBuf>,
    /// `JWT_ISSUER`: required `iss` when set.
    pub jwt_issuer: Option<String>,
    /// `JWT_AUDIENCE`: required `aud` when set.
    pub jwt_audience: Option<String>,
    /// `SOCKET_ALLOW_INSECURE_USERID`: as asked; honoured only in development
    /// (see [`Config::insecure_userid_allowed`]).
    pub socket_allow_insecure_userid: bool,
    /// `PRESENCE_HEARTBEAT_TIMEOUT_MS`: a connection silent longer than this is swept.
    pub heartbeat_timeout_ms: u64,
    /// `PRESENCE_SWEEP_INTERVAL_MS`: how often stale connections are swept.
    pub sweep_interval_ms: u64,
    /// `PRESENCE_ENABLE_SERVER_HEARTBEAT`: emit `server:heartbeat` to each socket.
    pub enable_server_heartbeat: bool,
    /// `PRESENCE_SERVER_HEARTBEAT_INTERVAL_MS`: its period.
    pub server_heartbeat_interval_ms: u64,
    /// `PRESENCE_OFFLINE_GRACE_MS`: delay before a user whose last connection the client
    /// closed is announced offline.
    pub offline_grace_ms: u64,
    /// `PRESENCE_SHUTDOWN_GRACE_MS`: the same, for connections closed by a shutting-down replica.
    pub shutdown_grace_ms: u64,
    /// `PRESENCE_FLAP_LIMIT`, `PRESENCE_FLAP_HOLD_MS`: a user's online/offline transitions per
    /// 10 s, cluster-wide, before further offlines are held that long ([`crate::domain::flap`]).
    pub flap: crate::domain::FlapRule,
    /// `PRESENCE_DB_ONLINE_DEBOUNCE_MS`: online transitions reach the database at most this late.
    pub db_online_debounce_ms: u64,
    /// `PRESENCE_DB_OFFLINE_DEBOUNCE_MS`: offline transitions reach the database at most this late.
    pub db_offline_debounce_ms: u64,
    /// `VISIBILITY_POLICY`: gender or all.
    pub visibility_policy: VisibilityPolicy,
    /// `STATS_SESSION_GAP_MS`: a visitor's messages further apart start a new session.
    pub stats_session_gap_ms: u64,
    /// `STATS_RETENTION_DAYS`: statistics events older than this are deleted (rollups kept).
    pub stats_retention_days: u64,
    /// `WEBHOOK_*` (§12): where and how the app's backend is told; `None` without `WEBHOOK_URL`.
    pub webhook: Option<crate::domain::webhook::WebhookSettings>,
    /// `ADMIN_TOKEN`: static bearer token with the admin role.
    pub admin_token: Option<String>,
    /// `RATE_LIMIT_PER_SEC`: per-socket requests per second (0 disables limiting).
    pub rate_limit_per_sec: u32,
    /// `RATE_LIMIT_BURST`: per-socket burst above the rate.
    pub rate_limit_burst: u32,
    /// `SHUTDOWN_DELAY_MS`: on SIGTERM, how long to keep serving with `/readyz` at 503.
    pub shutdown_delay_ms: u64,
    /// `SOCKET_QUEUE_PACKETS` (ours, not the contract's): packets queued per socket before
    /// presence updates wait in its conflated backlog.
    pub socket_queue_packets: usize,
    /// `PRESENCE_EVENT_BUFFER` (ours): committed changes this replica holds for its fan-out;
    /// a fan-out further behind loses changes, and its sockets get `presence:resync`.
    pub event_buffer: usize,
    /// `MAX_CONNECTIONS_PER_USER`: `/` connections one user may hold at once, cluster-wide;
    /// 0: no limit.
    pub max_connections_per_user: u32,
    /// `WIDGET_JOIN_RATE_PER_IP`, `WIDGET_JOIN_BURST_PER_IP` (ours): `/widget` joins per
    /// second (and at once) from one client address, per replica; each join stores a
    /// `widget_opened` row. Rate 0: no limit.
    pub widget_join_rate_per_ip: u32,
    pub widget_join_burst_per_ip: u32,
    /// `HANDSHAKE_RATE_PER_IP`, `HANDSHAKE_BURST_PER_IP`: new Socket.IO sessions per second
    /// (and at once) from one client address, per replica; rate 0: no limit.
    pub handshake_rate_per_ip: u32,
    pub handshake_burst_per_ip: u32,
    /// `HTTP_RATE_LIMIT_PER_SEC`, `HTTP_RATE_LIMIT_BURST`: authenticated `/api/*` requests per
    /// second (and at once) per caller identity, per replica; rate 0: no limit.
    pub http_rate_limit_per_sec: u32,
    pub http_rate_limit_burst: u32,
    /// `TRUSTED_PROXIES`: CIDRs whose connections may name the client in `X-Forwarded-For`.
    pub trusted_proxies: Vec<crate::limits::Cidr>,
    /// `SOCKET_BACKLOG_TOTAL` (ours): presence updates all sockets' backlogs of this replica may
    /// hold together; past it the sockets furthest behind are disconnected.
    pub socket_backlog_total: usize,
    /// `STATS_DASHBOARD_BACKLOG` (ours): statistics updates a dashboard socket may have
    /// waiting for room before it is told to resync instead.
    pub stats_dashboard_backlog: usize,
    /// `PRESENCE_BROADCAST`: false makes every `/` socket a subscription socket.
    pub presence_broadcast: bool,
    /// `PRESENCE_MAX_SUBSCRIPTIONS`: user ids one socket may be subscribed to at once.
    pub max_subscriptions: usize,
    /// `PRESENCE_BATCH_MS`: the longest a batching socket's change waits for its batch.
    pub batch_ms: u64,
    /// `LAST_SEEN_RECIPROCAL`: a user who hides their last seen sees no one's (section 11).
    pub last_seen_reciprocal: bool,
    /// `PRESENCE_MAX_BLOCKS`: blocks one user may hold (section 11).
    pub max_blocks: usize,
}

/// Defaults of the per-socket rate limit: a well-behaved client heartbeats every 5 s and
/// asks for a page or a status change now and then; 20/s sustained with bursts of 40 leaves
/// it far from the limit while a flood is cut to that rate.
pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 20;
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 40;

/// Where the development secret is kept unless `DEV_SECRET_FILE` says otherwise: beside the
/// working directory, ignored by git.
pub const DEV_SECRET_FILE: &str = ".presence-gateway-dev-secret";

/// The shortest HS256 secret production accepts.
pub const MIN_SECRET_BYTES: usize = 32;

impl Config {
    /// Read the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The configuration of a gateway: everything validated, and in production a JWT key
    /// (an HS256 secret of at least [`MIN_SECRET_BYTES`]).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let c = Self::from_lookup_keyless(get)?;
        if c.app_env == AppEnv::Production
            && c.jwt_secret.is_none()
            && c.jwt_public_key_file.is_none()
        {
            return Err(err(
                "JWT_SECRET",
                "production needs a JWT key: set JWT_SECRET (HS256) or JWT_PUBLIC_KEY_FILE (RS256/ES256), \
                 or start in development with APP_ENV=development (or --dev)",
            ));
        }
        // A short HS256 secret can be brute-forced offline from any one token.
        if c.app_env == AppEnv::Production
            && c.jwt_secret
                .as_ref()
                .is_some_and(|s| s.len() < MIN_SECRET_BYTES)
        {
            return Err(err(
                "JWT_SECRET",
                format!(
                    "must be at least {MIN_SECRET_BYTES} bytes in production (e.g. openssl rand -hex 32)"
                ),
            ));
        }
        // The deployment examples' secrets are public: a production that copied one would
        // accept anyone's tokens.
        if c.app_env == AppEnv::Production
            && c.jwt_secret
                .as_deref()
                .is_some_and(|s| EXAMPLE_SECRETS.contains(&s))
        {
            return Err(err(
                "JWT_SECRET",
                "is an example secret published with the deployment files; production needs \
                 its own (e.g. openssl rand -hex 32)",
            ));
        }
        Ok(c)
    }

    /// The same validation without requiring a JWT key: for `migrate`, which neither signs
    /// nor verifies tokens (a deployment's migration job need not hold the key).
    pub fn from_lookup_keyless(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        // An empty variable is treated as unset: that is what `FOO= cmd` usually means.
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let ms = |var: &'static str, default: u64, min: u64| -> Result<u64, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n >= min => Ok(n),
                    Ok(_) => Err(err(var, format!("must be at least {min}, got {v:?}"))),
                    Err(_) => Err(err(
                        var,
                        format!("expected a whole number of milliseconds, got {v:?}"),
                    )),
                },
            }
        };
        let flag = |var: &'static str| -> Result<bool, ConfigError> {
            match get(var).as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("false" | "0" | "no" | "off") => Ok(false),
                Some("true" | "1" | "yes" | "on") => Ok(true),
                Some(v) => Err(err(var, format!("expected true or false, got {v:?}"))),
            }
        };
        let flag_or_true = |var: &'static str| -> Result<bool, ConfigError> {
            match get(var) {
                None => Ok(true),
                Some(_) => flag(var),
            }
        };
        let count = |var: &'static str, default: u32| -> Result<u32, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| err(var, format!("expected a whole number, got {v:?}"))),
            }
        };

        let app_env = match get("APP_ENV") {
            Some(v) => match v.as_str() {
                "development" => AppEnv::Development,
                "production" => AppEnv::Production,
                _ => {
                    return Err(err(
                        "APP_ENV",
                        format!("expected development or production, got {v:?}"),
                    ));
                }
            },
            // NODE_ENV is looser by tradition: anything but development is production.
            None => match get("NODE_ENV").as_deref() {
                Some("development") => AppEnv::Development,
                _ => AppEnv::Production,
            },
        };

        let host = match get("HOST") {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(v) => v
                .parse()
                .map_err(|_| err("HOST", format!("expected an IP address, got {v:?}")))?,
        };
        let port = match get("PORT") {
            None => 3000,
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| err("PORT", format!("expected a port number 0-65535, got {v:?}")))?,
        };

        let metrics_port = match get("METRICS_PORT") {
            None => None,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p != 0 && p != port => Some(p),
                _ => {
                    return Err(err(
                        "METRICS_PORT",
                        format!("expected a port number 1-65535 other than PORT, got {v:?}"),
                    ));
                }
            },
        };

        let node_id = get("NODE_ID").unwrap_or_else(default_node_id);
        if node_id.len() > 128 || node_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err(
                "NODE_ID",
                "must be at most 128 characters, without spaces",
            ));
        }

        let redis_url = get("REDIS_URL");
        if let Some(u) = &redis_url {
            let ok = [
                "redis://",
                "rediss://",
                "redis-sentinel://",
                "redis-cluster://",
            ]
            .iter()
            .any(|s| u.starts_with(s));
            if !ok {
                return Err(err(
                    "REDIS_URL",
                    "expected a redis://, rediss://, redis-sentinel:// or redis-cluster:// URL",
                ));
            }
        }
        let redis_key_prefix = get("REDIS_KEY_PREFIX").unwrap_or_else(|| "pg".into());
        if redis_key_prefix.len() > 64
            || !redis_key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-:.".contains(c))
        {
            return Err(err(
                "REDIS_KEY_PREFIX",
                "must be at most 64 characters of A-Z a-z 0-9 _ - : .",
            ));
        }
        let database_url = get("DATABASE_URL");
        if let Some(u) = &database_url
            && !(u.starts_with("postgres://") || u.starts_with("postgresql://"))
        {
            return Err(err(
                "DATABASE_URL",
                "expected a postgres:// or postgresql:// URL",
            ));
        }

        let webhook = crate::domain::webhook::WebhookSettings::from_lookup(
            &get,
            app_env == AppEnv::Production,
        )
        .map_err(|(var, m)| err(var, m))?;
        if webhook
            .as_ref()
            .is_some_and(|w| w.kinds.contains(crate::domain::webhook::Kind::Stats))
            && database_url.is_none()
        {
            return Err(err(
                "WEBHOOK_EVENTS",
                "stats.event needs DATABASE_URL (the statistics events are stored there)",
            ));
        }

        let jwt_secret = get("JWT_SECRET");
        let jwt_public_key_file = get("JWT_PUBLIC_KEY_FILE").map(PathBuf::from);
        if jwt_secret.is_some() && jwt_public_key_file.is_some() {
            return Err(err(
                "JWT_SECRET",
                "set either JWT_SECRET or JWT_PUBLIC_KEY_FILE, not both",
            ));
        }
        if let Some(p) = &jwt_public_key_file
            && !p.is_file()
        {
            return Err(err(
                "JWT_PUBLIC_KEY_FILE",
                format!("no readable file at {}", p.display()),
            ));
        }
        let visibility_policy = match get("VISIBILITY_POLICY").as_deref() {
            None | Some("gender") => VisibilityPolicy::Gender,
            Some("all") => VisibilityPolicy::All,
            Some(v) => {
                return Err(err(
                    "VISIBILITY_POLICY",
                    format!("expected gender or all, got {v:?}"),
                ));
            }
        };

        let admin_token = get("ADMIN_TOKEN");
        if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(err("ADMIN_TOKEN", "must be at least 16 characters"));
        }

        let cfg = Config {
            host,
            port,
            metrics_port,
            node_id,
            redis_url,
            redis_key_prefix,
            database_url,
            database_skip_migrations: flag("DATABASE_SKIP_MIGRATIONS")?,
            database_pool_size: match count("DATABASE_POOL_SIZE", 10)? {
                n @ 1..=1000 => n,
                _ => return Err(err("DATABASE_POOL_SIZE", "must be 1 to 1000")),
            },
            app_env,
            jwt_secret,
            dev_secret_file: get("DEV_SECRET_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEV_SECRET_FILE)),
            jwt_public_key_file,
            jwt_issuer: get("JWT_ISSUER"),
            jwt_audience: get("JWT_AUDIENCE"),
            socket_allow_insecure_userid: flag("SOCKET_ALLOW_INSECURE_USERID")?,
            heartbeat_timeout_ms: ms("PRESENCE_HEARTBEAT_TIMEOUT_MS", 15_000, 100)?,
            sweep_interval_ms: ms("PRESENCE_SWEEP_INTERVAL_MS", 3_000, 50)?,
            enable_server_heartbeat: flag("PRESENCE_ENABLE_SERVER_HEARTBEAT")?,
            server_heartbeat_interval_ms: ms("PRESENCE_SERVER_HEARTBEAT_INTERVAL_MS", 10_000, 100)?,
            offline_grace_ms: ms("PRESENCE_OFFLINE_GRACE_MS", 0, 0)?,
            shutdown_grace_ms: ms("PRESENCE_SHUTDOWN_GRACE_MS", 10_000, 0)?,
            flap: crate::domain::FlapRule {
                limit: count("PRESENCE_FLAP_LIMIT", 10)?,
                hold_ms: ms("PRESENCE_FLAP_HOLD_MS", 5_000, 0)?,
            },
            db_online_debounce_ms: ms("PRESENCE_DB_ONLINE_DEBOUNCE_MS", 2_000, 0)?,
            db_offline_debounce_ms: ms("PRESENCE_DB_OFFLINE_DEBOUNCE_MS", 0, 0)?,
            visibility_policy,
            stats_session_gap_ms: ms("STATS_SESSION_GAP_MS", 1_800_000, 1)?,
            webhook,
            stats_retention_days: match ms("STATS_RETENTION_DAYS", 400, 1)? {
                n if n <= 100_000 => n,
                _ => return Err(err("STATS_RETENTION_DAYS", "must be at most 100000")),
            },
            admin_token,
            rate_limit_per_sec: count("RATE_LIMIT_PER_SEC", DEFAULT_RATE_LIMIT_PER_SEC)?,
            rate_limit_burst: count("RATE_LIMIT_BURST", DEFAULT_RATE_LIMIT_BURST)?,
            shutdown_delay_ms: ms("SHUTDOWN_DELAY_MS", 0, 0)?,
            socket_queue_packets: match ms("SOCKET_QUEUE_PACKETS", 256, 2)? {
                n if n <= 65_536 => n as usize,
                _ => return Err(err("SOCKET_QUEUE_PACKETS", "must be at most 65536")),
            },
            event_buffer: match ms(
                "PRESENCE_EVENT_BUFFER",
                crate::engine::EVENT_BUFFER as u64,
                1,
            )? {
                n if n <= 1_048_576 => n as usize,
                _ => return Err(err("PRESENCE_EVENT_BUFFER", "must be at most 1048576")),
            },
            max_connections_per_user: count("MAX_CONNECTIONS_PER_USER", 10)?,
            widget_join_rate_per_ip: count("WIDGET_JOIN_RATE_PER_IP", 2)?,
            widget_join_burst_per_ip: count("WIDGET_JOIN_BURST_PER_IP", 60)?,
            handshake_rate_per_ip: count("HANDSHAKE_RATE_PER_IP", 0)?,
            handshake_burst_per_ip: count("HANDSHAKE_BURST_PER_IP", 100)?,
            http_rate_limit_per_sec: count("HTTP_RATE_LIMIT_PER_SEC", 20)?,
            http_rate_limit_burst: count("HTTP_RATE_LIMIT_BURST", 40)?,
            trusted_proxies: match get("TRUSTED_PROXIES") {
                None => Vec::new(),
                Some(v) => v
                    .split(',')
                    .filter(|c| !c.trim().is_empty())
                    .map(|c| {
                        crate::limits::Cidr::parse(c.trim()).ok_or_else(|| {
                            err("TRUSTED_PROXIES", format!("not an address or CIDR: {c:?}"))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            socket_backlog_total: match count("SOCKET_BACKLOG_TOTAL", 1_000_000)? {
                n @ 1.. => n as usize,
                _ => return Err(err("SOCKET_BACKLOG_TOTAL", "must be at least 1")),
            },
            stats_dashboard_backlog: match count("STATS_DASHBOARD_BACKLOG", 10_000)? {
                n @ 1..=1_000_000 => n as usize,
                _ => return Err(err("STATS_DASHBOARD_BACKLOG", "must be 1 to 1000000")),
            },
            presence_broadcast: flag_or_true("PRESENCE_BROADCAST")?,
            last_seen_reciprocal: flag_or_true("LAST_SEEN_RECIPROCAL")?,
            max_blocks: match count("PRESENCE_MAX_BLOCKS", 10_000)? {
                n @ 1..=1_000_000 => n as usize,
                _ => return Err(err("PRESENCE_MAX_BLOCKS", "must be 1 to 1000000")),
            },
            max_subscriptions: match count("PRESENCE_MAX_SUBSCRIPTIONS", 1000)? {
                n @ 1..=1_000_000 => n as usize,
                _ => return Err(err("PRESENCE_MAX_SUBSCRIPTIONS", "must be 1 to 1000000")),
            },
            batch_ms: match ms("PRESENCE_BATCH_MS", 100, 1)? {
                n @ 1..=60_000 => n,
                _ => return Err(err("PRESENCE_BATCH_MS", "must be 1 to 60000")),
            },
        };
        Ok(cfg)
    }

    /// A development configuration with defaults, for `--dev` and for tests.
    pub fn development() -> Self {
        Self::from_lookup(|k| (k == "APP_ENV").then(|| "development".to_string()))
            .expect("the development defaults are valid")
    }

    pub fn is_development(&self) -> bool {
        self.app_env == AppEnv::Development
    }

    /// The insecure `{userId, gender}` handshake: only when asked for *and* in development,
    /// so a forgotten switch cannot open production.
    pub fn insecure_userid_allowed(&self) -> bool {
        self.socket_allow_insecure_userid && self.is_development()
    }
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "presence-gateway".into())
}
