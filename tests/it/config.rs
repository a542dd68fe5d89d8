//! Configuration parsing and validation.

use presence_gateway::config::{AppEnv, Config};
use presence_gateway::domain::VisibilityPolicy;
use std::collections::HashMap;

/// Long enough for production.
const SECRET: &str = "config-test-secret-0123456789abcdef";

fn parse(pairs: &[(&str, &str)]) -> Result<Config, presence_gateway::config::ConfigError> {
    let env: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| env.get(k).cloned())
}

#[test]
fn defaults_match_the_contract() {
    let c = parse(&[("JWT_SECRET", SECRET)]).unwrap();
    assert_eq!(c.app_env, AppEnv::Production);
    assert_eq!((c.host.to_string().as_str(), c.port), ("0.0.0.0", 3000));
    assert_eq!(c.redis_key_prefix, "pg");
    assert_eq!(
        (c.heartbeat_timeout_ms, c.sweep_interval_ms),
        (15_000, 3_000)
    );
    assert_eq!(
        (c.enable_server_heartbeat, c.server_heartbeat_interval_ms),
        (false, 10_000)
    );
    assert_eq!((c.offline_grace_ms, c.shutdown_grace_ms), (0, 10_000));
    assert_eq!(
        (c.db_online_debounce_ms, c.db_offline_debounce_ms),
        (2_000, 0)
    );
    assert_eq!(c.visibility_policy, VisibilityPolicy::Gender);
    assert_eq!(c.stats_session_gap_ms, 1_800_000);
    assert_eq!(c.shutdown_delay_ms, 0);
    assert!(!c.socket_allow_insecure_userid);
    assert!(!c.node_id.is_empty());
}

#[test]
fn every_bad_value_names_its_variable() {
    for (var, value) in [
        ("PORT", "x"),
        ("HOST", "nowhere"),
        ("APP_ENV", "test"),
        ("PRESENCE_HEARTBEAT_TIMEOUT_MS", "1.5s"),
        ("PRESENCE_SWEEP_INTERVAL_MS", "0"),
        ("PRESENCE_ENABLE_SERVER_HEARTBEAT", "sometimes"),
        ("PRESENCE_SERVER_HEARTBEAT_INTERVAL_MS", "-5"),
        ("PRESENCE_OFFLINE_GRACE_MS", "x"),
        ("PRESENCE_SHUTDOWN_GRACE_MS", "x"),
        ("PRESENCE_DB_ONLINE_DEBOUNCE_MS", "x"),
        ("PRESENCE_DB_OFFLINE_DEBOUNCE_MS", "x"),
        ("VISIBILITY_POLICY", "none"),
        ("STATS_SESSION_GAP_MS", "0"),
        ("STATS_RETENTION_DAYS", "0"),
        ("STATS_RETENTION_DAYS", "100001"),
        ("RATE_LIMIT_PER_SEC", "fast"),
        ("RATE_LIMIT_BURST", "-1"),
        ("SHUTDOWN_DELAY_MS", "x"),
        ("REDIS_URL", "localhost:6379"),
        ("REDIS_KEY_PREFIX", "has space"),
        ("DATABASE_URL", "mysql://x"),
        ("ADMIN_TOKEN", "short"),
        ("SOCKET_ALLOW_INSECURE_USERID", "2"),
        ("NODE_ID", "a b"),
        ("PRESENCE_BROADCAST", "maybe"),
        ("PRESENCE_MAX_SUBSCRIPTIONS", "0"),
        ("PRESENCE_BATCH_MS", "0"),
        ("PRESENCE_BATCH_MS", "100000"),
    ] {
        let e = parse(&[("JWT_SECRET", SECRET), (var, value)]).expect_err(var);
        assert_eq!(e.var, var, "{var}={value}: {e}");
        assert!(e.to_string().starts_with(&format!("{var}: ")));
    }
}

#[test]
fn production_needs_a_key_and_development_does_not() {
    assert_eq!(parse(&[]).unwrap_err().var, "JWT_SECRET");
    assert_eq!(
        parse(&[("NODE_ENV", "staging")]).unwrap_err().var,
        "JWT_SECRET",
        "anything but development is production"
    );
    assert!(parse(&[("NODE_ENV", "development")]).is_ok());
    let short = "x".repeat(31);
    let e = parse(&[("JWT_SECRET", short.as_str())]).unwrap_err();
    assert_eq!(
        e.var, "JWT_SECRET",
        "a secret under 32 bytes in production: {e}"
    );
    assert!(
        parse(&[("JWT_SECRET", short.as_str()), ("APP_ENV", "development")]).is_ok(),
        "development accepts any secret"
    );
    assert!(
        parse(&[("APP_ENV", "development"), ("NODE_ENV", "production")]).is_ok(),
        "APP_ENV wins"
    );
    assert_eq!(
        parse(&[
            ("JWT_SECRET", "a"),
            ("JWT_PUBLIC_KEY_FILE", "/etc/hostname")
        ])
        .unwrap_err()
        .var,
        "JWT_SECRET"
    );
}

#[test]
fn the_insecure_login_needs_development() {
    let prod = parse(&[
        ("JWT_SECRET", SECRET),
        ("SOCKET_ALLOW_INSECURE_USERID", "true"),
    ])
    .unwrap();
    assert!(!prod.insecure_userid_allowed());
    let dev = parse(&[
        ("APP_ENV", "development"),
        ("SOCKET_ALLOW_INSECURE_USERID", "true"),
    ])
    .unwrap();
    assert!(dev.insecure_userid_allowed());
}

#[test]
fn empty_means_unset() {
    let c = parse(&[("JWT_SECRET", SECRET), ("PORT", ""), ("REDIS_URL", "")]).unwrap();
    assert_eq!(c.port, 3000);
    assert!(c.redis_url.is_none());
}

#[test]
fn production_refuses_the_deployment_examples_secret() {
    // k8s/overlays/development's secret: fine there (APP_ENV=development), never in production.
    let example = "development-only-secret-0123456789";
    let e = parse(&[("JWT_SECRET", example)]).unwrap_err();
    assert_eq!(e.var, "JWT_SECRET", "{e}");
    assert!(e.to_string().contains("example"), "{e}");
    assert!(parse(&[("JWT_SECRET", example), ("APP_ENV", "development")]).is_ok());
}

#[test]
fn metrics_port_moves_metrics_off_the_main_port() {
    let c = parse(&[("JWT_SECRET", SECRET), ("METRICS_PORT", "9100")]).unwrap();
    assert_eq!(c.metrics_port, Some(9100));
    assert_eq!(parse(&[("JWT_SECRET", SECRET)]).unwrap().metrics_port, None);
    for bad in ["0", "3000", "x", "70000"] {
        let e = parse(&[("JWT_SECRET", SECRET), ("METRICS_PORT", bad)]).unwrap_err();
        assert_eq!(e.var, "METRICS_PORT", "{bad}: {e}");
    }
}
