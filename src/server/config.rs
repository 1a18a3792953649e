//! Configuration from the environment. Leptos reads its own `LEPTOS_*` variables (site address, site root);
//! these are Confab's.

use super::session::SessionConfig;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where events and sessions are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite in this file (the default: `$CONFAB_DATA_DIR/confab.db`).
    Sqlite(PathBuf),
    /// In memory only: everything is gone on restart (`CONFAB_STORE=memory`; tests use it).
    Memory,
    /// PostgreSQL at this URL (`DATABASE_URL=postgres://…`): shared history and fan-out between instances.
    Postgres(String),
}

/// Confab's own settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Events kept per room by the in-memory store (`CONFAB_HISTORY_CAPACITY`).
    pub history_capacity: usize,
    /// Frames a connection may fall behind live fan-out before it catches up from the store
    /// (`CONFAB_LIVE_BUFFER`).
    pub live_buffer: usize,
    /// How many of its newest frames a busy room keeps for connections that fell behind, so they catch
    /// up from memory instead of the store (`CONFAB_RECENT_FRAMES`). A storm of 10,000 joins fits; with
    /// 4,096, connections far behind read the same events from the store, each on its own, for minutes.
    pub recent_frames: usize,
    /// How long a room's writer task waits for a message before it stops (the next one starts it again).
    pub writer_idle: Duration,
    pub store: StoreConfig,
    pub session: SessionConfig,
    /// With PostgreSQL: how long after its last heartbeat an instance's users stop holding their names
    /// (`CONFAB_INSTANCE_TTL_MS`).
    pub instance_ttl: Duration,
    /// `CONFAB_ADMIN`: the member with this name is an administrator (also once they claim it).
    pub admin: Option<String>,
    /// `CONFAB_CLIENT_IP_HEADER`: the header a trusted proxy puts the client's address in
    /// (`Fly-Client-IP` on Fly.io). Unset, the TCP peer's address is the client's.
    pub client_ip_header: Option<axum::http::HeaderName>,
    /// `CONFAB_SIGNIN_ATTEMPTS`: sign-in attempts per name and per client address per 5 minutes.
    pub signin_attempts: u32,
    /// `CONFAB_METRICS_ADDR`: serve `/metrics` on this address instead of the main port (the image sets
    /// `0.0.0.0:9091`, which Fly scrapes privately; unset in development).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `CONFAB_JWT_SECRET`: HS256 tokens signed with this secret sign people in.
    pub jwt_secret: Option<String>,
    /// `CONFAB_JWT_PUBLIC_KEY`: RS256 or EdDSA tokens verified with this PEM key (text or a path).
    pub jwt_public_key: Option<String>,
    /// Bots and their webhooks (`CONFAB_WEBHOOK_ALLOW_PRIVATE`, `CONFAB_BOT_RATE_*`).
    pub bots: super::bots::BotConfig,
    /// `CONFAB_PUBLIC_URL`: the chat's address as bots reach it (for webhooks' `reply_url`); unset,
    /// `http://` and the listening address.
    pub public_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            history_capacity: 10_000,
            live_buffer: 1_024,
            recent_frames: 16_384,
            writer_idle: Duration::from_secs(30),
            store: StoreConfig::Sqlite(PathBuf::from("data").join("confab.db")),
            session: SessionConfig::default(),
            instance_ttl: Duration::from_secs(15),
            admin: None,
            client_ip_header: None,
            signin_attempts: super::identity::limits::ATTEMPTS,
            jwt_secret: None,
            jwt_public_key: None,
            metrics_addr: None,
            bots: super::bots::BotConfig::default(),
            public_url: None,
        }
    }
}

impl Config {
    /// Reads the `CONFAB_*` variables; unset ones keep their defaults, malformed ones are an error.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut config = Config::default();
        let parse = |key: &str, into: &mut usize| -> Result<(), String> {
            if let Some(raw) = get(key) {
                *into = parse_positive(key, &raw)?;
            }
            Ok(())
        };
        parse("CONFAB_HISTORY_CAPACITY", &mut config.history_capacity)?;
        parse("CONFAB_LIVE_BUFFER", &mut config.live_buffer)?;
        parse("CONFAB_RECENT_FRAMES", &mut config.recent_frames)?;
        let data_dir = get("CONFAB_DATA_DIR")
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| "data".into());
        config.store = match get("DATABASE_URL").as_deref().map(str::trim) {
            None | Some("") => match get("CONFAB_STORE").as_deref().map(str::trim) {
                None | Some("") | Some("sqlite") => {
                    StoreConfig::Sqlite(PathBuf::from(data_dir).join("confab.db"))
                }
                Some("memory") => StoreConfig::Memory,
                Some(other) => {
                    return Err(format!(
                        "CONFAB_STORE must be \"sqlite\" or \"memory\", not {other:?}"
                    ))
                }
            },
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StoreConfig::Postgres(url.to_owned())
            }
            Some(url) if url.starts_with("sqlite:") => {
                let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
                let path = path.split('?').next().unwrap_or_default();
                if path.is_empty() {
                    return Err(format!("DATABASE_URL names no SQLite file: {url:?}"));
                }
                StoreConfig::Sqlite(PathBuf::from(path))
            }
            Some(url) => {
                let scheme = url.split(':').next().unwrap_or_default();
                return Err(format!(
                    "DATABASE_URL must start with postgres://, postgresql:// or sqlite:, not {scheme:?}"
                ));
            }
        };
        if let Some(raw) = get("CONFAB_INSTANCE_TTL_MS") {
            let ms = parse_positive("CONFAB_INSTANCE_TTL_MS", &raw)?;
            config.instance_ttl = Duration::from_millis(ms as u64);
        }
        if let Some(raw) = get("CONFAB_LEAVE_GRACE_MS") {
            let ms = u64::from_str(raw.trim()).map_err(|_| {
                format!("CONFAB_LEAVE_GRACE_MS must be a whole number of milliseconds, not {raw:?}")
            })?;
            config.session.leave_grace = Duration::from_millis(ms);
        }
        if let Some(raw) = get("CONFAB_RATE_PER_SECOND") {
            config.session.messages_per_second = nonzero("CONFAB_RATE_PER_SECOND", &raw)?;
        }
        if let Some(raw) = get("CONFAB_RATE_BURST") {
            config.session.burst = nonzero("CONFAB_RATE_BURST", &raw)?;
        }
        if let Some(raw) = get("CONFAB_RATE_PER_ADDRESS") {
            config.session.address_per_second = nonzero("CONFAB_RATE_PER_ADDRESS", &raw)?;
        }
        if let Some(raw) = get("CONFAB_RATE_ADDRESS_BURST") {
            config.session.address_burst = nonzero("CONFAB_RATE_ADDRESS_BURST", &raw)?;
        }
        if let Some(raw) = get("CONFAB_ACCESS") {
            config.session.access = match raw.trim() {
                "" | "open" => crate::protocol::Access::Open,
                "members" => crate::protocol::Access::Members,
                "invite" => crate::protocol::Access::Invite,
                other => {
                    return Err(format!(
                        "CONFAB_ACCESS must be \"open\", \"members\" or \"invite\", not {other:?}"
                    ))
                }
            };
        }
        if let Some(raw) = get("CONFAB_SIGNIN_ATTEMPTS") {
            config.signin_attempts = nonzero("CONFAB_SIGNIN_ATTEMPTS", &raw)?.get();
        }
        if let Some(raw) = get("CONFAB_ADMIN").filter(|raw| !raw.trim().is_empty()) {
            let name = crate::protocol::validate_name(&raw)
                .map_err(|err| format!("CONFAB_ADMIN is not a valid name: {}", err.message()))?;
            config.admin = Some(name);
        }
        if let Some(raw) = get("CONFAB_METRICS_ADDR").filter(|raw| !raw.trim().is_empty()) {
            config.metrics_addr = Some(raw.trim().parse().map_err(|_| {
                format!("CONFAB_METRICS_ADDR must be an address and port such as 0.0.0.0:9091, not {raw:?}")
            })?);
        }
        config.jwt_secret = get("CONFAB_JWT_SECRET").filter(|v| !v.is_empty());
        config.jwt_public_key = get("CONFAB_JWT_PUBLIC_KEY").filter(|v| !v.trim().is_empty());
        // Checked now, so a bad key stops the start with its reason.
        super::identity::token::TokenVerifier::from_config(
            config.jwt_secret.as_deref(),
            config.jwt_public_key.as_deref(),
        )?;
        if let Some(raw) = get("CONFAB_WEBHOOK_ALLOW_PRIVATE") {
            config.bots.allow_private = match raw.trim() {
                "true" | "1" | "yes" => true,
                "" | "false" | "0" | "no" => false,
                other => {
                    return Err(format!(
                        "CONFAB_WEBHOOK_ALLOW_PRIVATE must be true or false, not {other:?}"
                    ))
                }
            };
        }
        if let Some(raw) = get("CONFAB_BOT_RATE_PER_SECOND") {
            config.bots.per_second = nonzero("CONFAB_BOT_RATE_PER_SECOND", &raw)?;
        }
        if let Some(raw) = get("CONFAB_BOT_RATE_BURST") {
            config.bots.burst = nonzero("CONFAB_BOT_RATE_BURST", &raw)?;
        }
        if let Some(raw) = get("CONFAB_PUBLIC_URL").filter(|raw| !raw.trim().is_empty()) {
            let url = raw.trim().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "CONFAB_PUBLIC_URL must start with http:// or https://, not {raw:?}"
                ));
            }
            config.public_url = Some(url.to_owned());
        }
        if let Some(raw) = get("CONFAB_CLIENT_IP_HEADER").filter(|raw| !raw.trim().is_empty()) {
            let header = axum::http::HeaderName::from_str(raw.trim()).map_err(|_| {
                format!("CONFAB_CLIENT_IP_HEADER must be a header name, not {raw:?}")
            })?;
            config.client_ip_header = Some(header);
        }
        Ok(config)
    }
}

fn parse_positive(key: &str, raw: &str) -> Result<usize, String> {
    match usize::from_str(raw.trim()) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{key} must be a whole number above zero, not {raw:?}"
        )),
    }
}

fn nonzero(key: &str, raw: &str) -> Result<NonZeroU32, String> {
    NonZeroU32::from_str(raw.trim())
        .map_err(|_| format!("{key} must be a whole number above zero, not {raw:?}"))
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `info`).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|key| env.get(key).cloned())
    }

    #[test]
    fn defaults_and_overrides() {
        let config = from(&[]).unwrap();
        assert_eq!(config.history_capacity, 10_000);
        assert_eq!(config.session.messages_per_second.get(), 10);
        let config = from(&[
            ("CONFAB_HISTORY_CAPACITY", "50"),
            ("CONFAB_RATE_BURST", "3"),
        ])
        .unwrap();
        assert_eq!(config.history_capacity, 50);
        assert_eq!(config.session.burst.get(), 3);
    }

    #[test]
    fn malformed_values_are_refused_with_the_variable_named() {
        let err = from(&[("CONFAB_LIVE_BUFFER", "lots")]).unwrap_err();
        assert!(err.contains("CONFAB_LIVE_BUFFER"), "{err}");
        assert!(from(&[("CONFAB_RATE_PER_SECOND", "0")]).is_err());
        assert!(from(&[("CONFAB_HISTORY_CAPACITY", "-1")]).is_err());
        assert!(from(&[("CONFAB_STORE", "mongo")])
            .unwrap_err()
            .contains("CONFAB_STORE"));
        assert!(from(&[("CONFAB_LEAVE_GRACE_MS", "soon")]).is_err());
        assert!(
            from(&[("DATABASE_URL", "mysql://u:secret@db/confab")])
                .unwrap_err()
                .contains("\"mysql\""),
            "names the scheme, never the password"
        );
        assert!(from(&[("CONFAB_INSTANCE_TTL_MS", "0")]).is_err());
        assert!(from(&[("CONFAB_ADMIN", "a\u{7}b")])
            .unwrap_err()
            .contains("CONFAB_ADMIN"));
        assert!(from(&[("CONFAB_CLIENT_IP_HEADER", "not a header")])
            .unwrap_err()
            .contains("CONFAB_CLIENT_IP_HEADER"));
        assert!(from(&[("CONFAB_SIGNIN_ATTEMPTS", "0")]).is_err());
        assert!(from(&[("CONFAB_METRICS_ADDR", "9091")])
            .unwrap_err()
            .contains("CONFAB_METRICS_ADDR"));
        assert_eq!(
            from(&[("CONFAB_METRICS_ADDR", "0.0.0.0:9091")])
                .unwrap()
                .metrics_addr,
            Some("0.0.0.0:9091".parse().unwrap())
        );
        assert!(from(&[("CONFAB_JWT_SECRET", "too short")])
            .unwrap_err()
            .contains("CONFAB_JWT_SECRET"));
    }

    #[test]
    fn accounts_settings() {
        let config = from(&[
            ("CONFAB_ADMIN", " Ann "),
            ("CONFAB_CLIENT_IP_HEADER", "Fly-Client-IP"),
            ("CONFAB_RATE_PER_ADDRESS", "7"),
        ])
        .unwrap();
        assert_eq!(config.admin.as_deref(), Some("Ann"));
        assert_eq!(config.client_ip_header.unwrap().as_str(), "fly-client-ip");
        assert_eq!(config.session.address_per_second.get(), 7);
        assert_eq!(from(&[]).unwrap().signin_attempts, 10);
        assert_eq!(
            from(&[("CONFAB_ACCESS", "invite")]).unwrap().session.access,
            crate::protocol::Access::Invite
        );
        assert!(from(&[("CONFAB_ACCESS", "closed")])
            .unwrap_err()
            .contains("CONFAB_ACCESS"));
    }

    #[test]
    fn database_url_selects_the_backend() {
        let store = |url: &str| from(&[("DATABASE_URL", url)]).unwrap().store;
        assert_eq!(
            store("postgres://confab@db:5432/chat"),
            StoreConfig::Postgres("postgres://confab@db:5432/chat".into())
        );
        assert_eq!(
            store("postgresql://db/chat"),
            StoreConfig::Postgres("postgresql://db/chat".into())
        );
        assert_eq!(
            store("sqlite:///data/chat.db?mode=rwc"),
            StoreConfig::Sqlite("/data/chat.db".into())
        );
        assert_eq!(
            store("sqlite:chat.db"),
            StoreConfig::Sqlite("chat.db".into())
        );
        assert_eq!(
            from(&[("DATABASE_URL", ""), ("CONFAB_DATA_DIR", "/d")])
                .unwrap()
                .store,
            StoreConfig::Sqlite("/d/confab.db".into()),
            "empty means unset: the embedded default"
        );
    }
}
