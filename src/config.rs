//! Configuration: a TOML file (optional) overlaid by `PORCH_<SECTION>__<KEY>`
//! environment variables, validated once at start-up.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use ruma::{OwnedServerName, RoomVersionId};
use serde::{Deserialize, Serialize};

/// The whole server configuration. Every field has a default so porch runs
/// with no config file at all.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server_name: String,
    pub listen: Listen,
    pub tls: Tls,
    pub database: Database,
    pub registration: Registration,
    pub rooms: Rooms,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    pub well_known: WellKnown,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// Plain-HTTP client-server API.
    pub client: String,
    /// TLS server-server API; empty disables federation.
    pub federation: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub cert: String,
    pub key: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    pub path: PathBuf,
    /// fsync the write-ahead log on every event append.
    pub sync_writes: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Registration {
    pub enabled: bool,
    pub shared_secret: String,
    pub tokens: Vec<String>,
    pub allow_guests: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rooms {
    pub default_version: String,
    /// Whether `/publicRooms` answers callers without an access token.
    pub public_directory_without_auth: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_request_bytes: usize,
    /// Largest media upload, in bytes.
    pub max_upload_bytes: usize,
    pub sync_timeout_max_ms: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub login_per_second: f64,
    pub login_burst: u32,
    pub registration_per_second: f64,
    pub registration_burst: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WellKnown {
    /// Base URL clients should use; derived from `listen.client` when empty.
    pub client: String,
    /// `host:port` other servers should use; derived when empty.
    pub server: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost:8008".to_owned(),
            listen: Listen::default(),
            tls: Tls::default(),
            database: Database::default(),
            registration: Registration::default(),
            rooms: Rooms::default(),
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            well_known: WellKnown::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Self { client: "127.0.0.1:8008".to_owned(), federation: String::new() }
    }
}

impl Default for Database {
    fn default() -> Self {
        Self { path: PathBuf::from("porch-data"), sync_writes: true }
    }
}

impl Default for Registration {
    fn default() -> Self {
        Self { enabled: true, shared_secret: String::new(), tokens: Vec::new(), allow_guests: true }
    }
}

impl Default for Rooms {
    fn default() -> Self {
        Self { default_version: "12".to_owned(), public_directory_without_auth: false }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_request_bytes: 1024 * 1024, max_upload_bytes: 50 * 1024 * 1024, sync_timeout_max_ms: 60_000 }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self { login_per_second: 0.5, login_burst: 10, registration_per_second: 0.5, registration_burst: 10 }
    }
}

/// Room versions porch can create.
pub const SUPPORTED_ROOM_VERSIONS: [RoomVersionId; 3] = [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

/// A configuration problem, phrased as one sentence naming the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Values derived from the raw config once it has been validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub raw: Config,
    pub server_name: OwnedServerName,
    pub client_addr: SocketAddr,
    pub federation_addr: Option<SocketAddr>,
    pub default_room_version: RoomVersionId,
    pub sync_timeout_max: Duration,
}

impl Config {
    /// Load from an optional TOML file, then `PORCH_*` environment variables.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist; pass an existing file to --config or omit it to use the defaults",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("PORCH_").split("__"));
        figment.extract().map_err(|e| {
            let key = e.path.join(".");
            let key = if key.is_empty() { "(top level)".to_owned() } else { key };
            ConfigError(format!(
                "config key `{key}` is invalid ({}); fix it in the config file or the matching PORCH_ environment variable (see config.example.toml)",
                e.kind
            ))
        })
    }

    /// Check every value and derive the typed settings.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let server_name = OwnedServerName::try_from(self.server_name.as_str()).map_err(|_| {
            ConfigError(format!(
                "config key `server_name` is `{}`, which is not a valid Matrix server name; set it to a host name such as `example.org` or `localhost:8008`",
                self.server_name
            ))
        })?;
        let client_addr = parse_addr("listen.client", &self.listen.client)?;
        let federation_addr = if self.listen.federation.is_empty() {
            None
        } else {
            Some(parse_addr("listen.federation", &self.listen.federation)?)
        };
        if federation_addr.is_some() && self.tls.cert.is_empty() != self.tls.key.is_empty() {
            return Err(ConfigError(
                "config keys `tls.cert` and `tls.key` must be set together; give both paths or neither (a self-signed certificate is then made)".to_owned(),
            ));
        }
        let default_room_version = RoomVersionId::try_from(self.rooms.default_version.as_str())
            .ok()
            .filter(|v| SUPPORTED_ROOM_VERSIONS.contains(v))
            .ok_or_else(|| {
                ConfigError(format!(
                    "config key `rooms.default_version` is `{}`, which porch cannot create; set it to 10, 11 or 12",
                    self.rooms.default_version
                ))
            })?;
        if self.database.path.as_os_str().is_empty() {
            return Err(ConfigError(
                "config key `database.path` is empty; set it to a folder where porch may keep its RocksDB database"
                    .to_owned(),
            ));
        }
        if self.limits.max_request_bytes < 65_536 {
            return Err(ConfigError(format!(
                "config key `limits.max_request_bytes` is {}, below the 65536 bytes a single Matrix event may take; raise it",
                self.limits.max_request_bytes
            )));
        }
        for (key, rate, burst) in [
            ("rate_limits.login", self.rate_limits.login_per_second, self.rate_limits.login_burst),
            ("rate_limits.registration", self.rate_limits.registration_per_second, self.rate_limits.registration_burst),
        ] {
            if rate.is_nan() || rate <= 0.0 || burst == 0 {
                return Err(ConfigError(format!(
                    "config keys `{key}_per_second` and `{key}_burst` must both be above zero; raise them"
                )));
            }
        }
        if self.registration.tokens.iter().any(|t| !valid_registration_token(t)) {
            return Err(ConfigError(
                "config key `registration.tokens` holds a token that is empty, longer than 64 characters or uses characters other than A-Z a-z 0-9 . _ ~ -; fix or remove it".to_owned(),
            ));
        }
        Ok(Settings {
            sync_timeout_max: Duration::from_millis(self.limits.sync_timeout_max_ms),
            server_name,
            client_addr,
            federation_addr,
            default_room_version,
            raw: self,
        })
    }
}

/// The spec's grammar for registration tokens.
pub fn valid_registration_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 64 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError(format!(
            "config key `{key}` is `{value}`, which is not an IP address with a port; set it like `127.0.0.1:8008`"
        ))
    })
}

impl Settings {
    pub fn client_base_url(&self) -> String {
        if self.raw.well_known.client.is_empty() {
            format!("http://{}", self.client_addr)
        } else {
            self.raw.well_known.client.trim_end_matches('/').to_owned()
        }
    }
}
