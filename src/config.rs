//! Configuration: a TOML file (optional) overlaid by `PORCH_<SECTION>__<KEY>`
//! environment variables, validated once at start-up.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

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
    pub guests: Guests,
    pub federation: Federation,
    pub outbound: Outbound,
    pub voip: Voip,
    pub email: Email,
    pub security_levels: Vec<SecurityLevel>,
    pub default_security_level: String,
}

/// Outgoing mail (email invitations).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Email {
    /// `smtp://[user:password@]host[:port]` (STARTTLS when the server offers
    /// it; `?tls=required` insists, `?tls=none` never), or `smtps://…` (TLS
    /// from the first byte, port 465). Empty: mails are written to the log
    /// and kept in the admin API's outbox instead of being sent.
    pub smtp_url: String,
    /// The sender, e.g. `Example Chat <chat@example.org>`.
    pub from: String,
    /// Language of the mails: `en` or `fr`.
    pub language: String,
    /// A PEM CA certificate to trust for the mail server besides the system's.
    pub trusted_ca: String,
    /// The longest wait between tries while the mail server cannot be reached.
    #[serde(with = "humantime_serde")]
    pub max_retry_interval: Duration,
}

impl Default for Email {
    fn default() -> Self {
        Self {
            smtp_url: String::new(),
            from: String::new(),
            language: "en".to_owned(),
            trusted_ca: String::new(),
            max_retry_interval: Duration::from_secs(600),
        }
    }
}

/// Guest rooms, links and guest accounts (see the guest-rooms contract).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Guests {
    pub enabled: bool,
    /// Base of guest-link URLs (`{public_base_url}/guest/{token}`); empty: the client base URL.
    pub public_base_url: String,
    /// Appended to every guest's display name.
    pub display_suffix: String,
    /// How long a temporary guest account lives at most.
    #[serde(with = "humantime_serde")]
    pub temporary_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub link_default_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub link_max_lifetime: Duration,
    /// How long an ended guest room's history is kept before it is purged.
    #[serde(with = "humantime_serde")]
    pub history_retention: Duration,
    /// Most external (email-invited) accounts at once, pending invitations
    /// included; 0: no limit.
    pub max_external_users: u64,
    /// Domains email invitations may go to (`example.org` also covers its
    /// subdomains); empty: any.
    pub allowed_email_domains: Vec<String>,
    /// How long an email invitation stays valid unless the admin says otherwise.
    #[serde(with = "humantime_serde")]
    pub invitation_default_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub invitation_max_lifetime: Duration,
    /// A room whose members may join every guest room without a link; empty: none.
    pub team_room: String,
    /// Redemption tries per client address: steady rate and burst.
    pub redeem_per_second: f64,
    pub redeem_burst: u32,
}

impl Default for Guests {
    fn default() -> Self {
        const DAY: u64 = 24 * 60 * 60;
        Self {
            enabled: true,
            public_base_url: String::new(),
            display_suffix: " (guest)".to_owned(),
            temporary_ttl: Duration::from_secs(30 * DAY),
            link_default_lifetime: Duration::from_secs(7 * DAY),
            link_max_lifetime: Duration::from_secs(90 * DAY),
            history_retention: Duration::from_secs(30 * DAY),
            max_external_users: 0,
            allowed_email_domains: Vec::new(),
            invitation_default_lifetime: Duration::from_secs(7 * DAY),
            invitation_max_lifetime: Duration::from_secs(90 * DAY),
            team_room: String::new(),
            redeem_per_second: 0.5,
            redeem_burst: 20,
        }
    }
}

/// How porch talks to other servers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Federation {
    /// Check other servers' TLS certificates (turn off only in labs).
    pub verify_certificates: bool,
    /// A PEM CA certificate to trust besides the system's (e.g. a lab CA).
    pub trusted_ca: String,
    /// The longest wait between retries to a server that does not answer.
    #[serde(with = "humantime_serde")]
    pub max_retry_interval: Duration,
    /// Name servers (`ip:port`) for discovering other servers; empty: the system's.
    pub dns_servers: Vec<String>,
    /// Key notaries asked for a server's keys when it cannot be reached.
    pub trusted_key_servers: Vec<String>,
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            verify_certificates: true,
            trusted_ca: String::new(),
            max_retry_interval: Duration::from_secs(600),
            dns_servers: Vec::new(),
            trusted_key_servers: Vec::new(),
        }
    }
}

/// What porch may connect to (every outbound connection is checked after
/// name resolution and on every redirect).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outbound {
    /// Address ranges porch never connects to (CIDR).
    pub ip_range_denylist: Vec<String>,
    /// Ranges allowed even if the denylist holds them (labs, tests: loopback).
    pub ip_range_allowlist: Vec<String>,
}

impl Default for Outbound {
    fn default() -> Self {
        Self {
            ip_range_denylist: crate::service::address_guard::DEFAULT_DENYLIST.iter().map(|r| r.to_string()).collect(),
            ip_range_allowlist: Vec::new(),
        }
    }
}

/// A security level rooms can carry; shown as a banner by every client.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityLevel {
    pub id: String,
    pub label: String,
    pub color: String,
    #[serde(default)]
    pub classified: bool,
    /// For classified levels: the other servers allowed into such rooms.
    #[serde(default)]
    pub cleared_servers: Vec<String>,
}

pub fn default_security_levels() -> Vec<SecurityLevel> {
    let level = |id: &str, label: &str, color: &str, classified: bool| SecurityLevel {
        id: id.to_owned(),
        label: label.to_owned(),
        color: color.to_owned(),
        classified,
        cleared_servers: Vec::new(),
    };
    vec![
        level("public", "Public", "#2e7d32", false),
        level("internal", "Internal", "#1565c0", false),
        level("confidential", "Confidential", "#c62828", true),
    ]
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// Plain-HTTP client-server API.
    pub client: String,
    /// TLS server-server API; empty disables federation.
    pub federation: String,
    /// Reverse proxies (address ranges) whose `X-Forwarded-For` names the
    /// client; from any other address the socket's address counts.
    pub trusted_proxies: Vec<String>,
    /// A request's headers must arrive within this long (slow clients are cut off).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request's body must arrive within this long.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
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
    /// Memory for the caches of events, room state and push rules (MiB).
    pub cache_mb: usize,
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
    /// A string, but `10` (as TOML or `PORCH_ROOMS__DEFAULT_VERSION=10` gives it) is taken too.
    #[serde(deserialize_with = "string_or_number")]
    pub default_version: String,
    /// Whether `/publicRooms` answers callers without an access token.
    pub public_directory_without_auth: bool,
}

/// TURN servers handed to clients for calls (`/voip/turnServer`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Voip {
    /// `turn:`/`turns:` URIs; empty: no TURN server is offered.
    pub turn_uris: Vec<String>,
    /// The TURN server's `static-auth-secret` (coturn's `use-auth-secret`):
    /// porch then makes short-lived credentials per user.
    pub turn_shared_secret: String,
    /// Fixed credentials, used when there is no shared secret.
    pub turn_username: String,
    pub turn_password: String,
    /// How long credentials made from the shared secret stay valid.
    #[serde(with = "humantime_serde")]
    pub turn_user_lifetime: Duration,
    /// Whether guests get TURN credentials too.
    pub turn_allow_guests: bool,
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
    /// `/send` transactions per other server.
    pub federation_transactions_per_second: f64,
    pub federation_transactions_burst: u32,
    /// Per client address: servers asked about through the key notary.
    pub key_queries_per_second: f64,
    pub key_queries_burst: u32,
    /// Per user: events sent (messages, state, redactions).
    pub events_per_second: f64,
    pub events_burst: u32,
    /// Per user: rooms created.
    pub room_creations_per_second: f64,
    pub room_creations_burst: u32,
    /// Per user: invites sent.
    pub invites_per_second: f64,
    pub invites_burst: u32,
    /// Per user: media uploads.
    pub uploads_per_second: f64,
    pub uploads_burst: u32,
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
            guests: Guests::default(),
            federation: Federation::default(),
            outbound: Outbound::default(),
            voip: Voip::default(),
            email: Email::default(),
            security_levels: default_security_levels(),
            default_security_level: "internal".to_owned(),
        }
    }
}

impl Default for Voip {
    fn default() -> Self {
        Self {
            turn_uris: Vec::new(),
            turn_shared_secret: String::new(),
            turn_username: String::new(),
            turn_password: String::new(),
            turn_user_lifetime: Duration::from_secs(3600),
            turn_allow_guests: false,
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            client: "127.0.0.1:8008".to_owned(),
            federation: String::new(),
            trusted_proxies: Vec::new(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for Database {
    fn default() -> Self {
        Self { path: PathBuf::from("porch-data"), sync_writes: true, cache_mb: 64 }
    }
}

impl Default for Registration {
    fn default() -> Self {
        Self { enabled: true, shared_secret: String::new(), tokens: Vec::new(), allow_guests: false }
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
        Self {
            login_per_second: 0.5,
            login_burst: 10,
            registration_per_second: 0.5,
            registration_burst: 10,
            federation_transactions_per_second: 20.0,
            federation_transactions_burst: 200,
            key_queries_per_second: 10.0,
            key_queries_burst: 100,
            events_per_second: 100.0,
            events_burst: 1000,
            room_creations_per_second: 2.0,
            room_creations_burst: 200,
            invites_per_second: 5.0,
            invites_burst: 100,
            uploads_per_second: 5.0,
            uploads_burst: 100,
        }
    }
}

/// Room versions porch creates and joins. In 1 and 2 events carry ids
/// their server chose; version 1's forks are resolved with version 2's
/// algorithm (ruma has only that one).
pub const SUPPORTED_ROOM_VERSIONS: [RoomVersionId; 12] = [
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

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
    /// `listen.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<crate::service::address_guard::IpRange>,
    /// The client listener's address once bound (its port when `listen.client`
    /// asks for port 0), for links made without a configured public address.
    pub bound_client_addr: Arc<std::sync::OnceLock<SocketAddr>>,
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
                    "config key `rooms.default_version` is `{}`, which porch cannot create; set it to a version from 1 to 12 (12 is the newest, 10 the most widely supported)",
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
            (
                "rate_limits.federation_transactions",
                self.rate_limits.federation_transactions_per_second,
                self.rate_limits.federation_transactions_burst,
            ),
            ("rate_limits.key_queries", self.rate_limits.key_queries_per_second, self.rate_limits.key_queries_burst),
            ("rate_limits.events", self.rate_limits.events_per_second, self.rate_limits.events_burst),
            (
                "rate_limits.room_creations",
                self.rate_limits.room_creations_per_second,
                self.rate_limits.room_creations_burst,
            ),
            ("rate_limits.invites", self.rate_limits.invites_per_second, self.rate_limits.invites_burst),
            ("rate_limits.uploads", self.rate_limits.uploads_per_second, self.rate_limits.uploads_burst),
        ] {
            if rate.is_nan() || rate <= 0.0 || burst == 0 {
                return Err(ConfigError(format!(
                    "config keys `{key}_per_second` and `{key}_burst` must both be above zero; raise them"
                )));
            }
        }
        if self.security_levels.is_empty() {
            return Err(ConfigError(
                "config key `security_levels` is empty; define at least one level (see config.example.toml)".to_owned(),
            ));
        }
        if !self.security_levels.iter().any(|l| l.id == self.default_security_level) {
            return Err(ConfigError(format!(
                "config key `default_security_level` is `{}`, which is not the id of any entry in `security_levels`; use one of them",
                self.default_security_level
            )));
        }
        if let Some(level) = self.security_levels.iter().find(|l| !valid_color(&l.color)) {
            return Err(ConfigError(format!(
                "config key `security_levels` gives level `{}` the color `{}`; use a #rrggbb color",
                level.id, level.color
            )));
        }
        if self.guests.link_default_lifetime > self.guests.link_max_lifetime || self.guests.link_max_lifetime.is_zero()
        {
            return Err(ConfigError(
                "config keys `guests.link_default_lifetime` and `guests.link_max_lifetime` must be above zero, the default no longer than the maximum; fix them".to_owned(),
            ));
        }
        if !self.guests.team_room.is_empty() && ruma::OwnedRoomId::try_from(self.guests.team_room.as_str()).is_err() {
            return Err(ConfigError(format!(
                "config key `guests.team_room` is `{}`, which is not a room id; set it to a room id like `!abc:example.org` or leave it empty",
                self.guests.team_room
            )));
        }
        if self.guests.redeem_per_second.is_nan()
            || self.guests.redeem_per_second <= 0.0
            || self.guests.redeem_burst == 0
        {
            return Err(ConfigError(
                "config keys `guests.redeem_per_second` and `guests.redeem_burst` must both be above zero; raise them"
                    .to_owned(),
            ));
        }
        for (key, list) in [
            ("outbound.ip_range_denylist", &self.outbound.ip_range_denylist),
            ("outbound.ip_range_allowlist", &self.outbound.ip_range_allowlist),
            ("listen.trusted_proxies", &self.listen.trusted_proxies),
        ] {
            for range in list {
                range.parse::<crate::service::address_guard::IpRange>().map_err(|why| {
                    ConfigError(format!(
                        "config key `{key}` holds {why}; write ranges like \"10.0.0.0/8\" or \"::1/128\""
                    ))
                })?;
            }
        }
        if self.guests.invitation_default_lifetime > self.guests.invitation_max_lifetime
            || self.guests.invitation_default_lifetime.is_zero()
        {
            return Err(ConfigError(
                "config keys `guests.invitation_default_lifetime` and `guests.invitation_max_lifetime` must be above zero, the default no longer than the maximum; fix them".to_owned(),
            ));
        }
        if let Some(domain) = self.guests.allowed_email_domains.iter().find(|d| !crate::service::mail::valid_domain(d))
        {
            return Err(ConfigError(format!(
                "config key `guests.allowed_email_domains` holds `{domain}`, which is not a domain name; write names like \"example.org\""
            )));
        }
        if !self.email.smtp_url.is_empty() {
            crate::service::mail::SmtpTarget::parse(&self.email.smtp_url).map_err(|why| {
                ConfigError(format!(
                    "config key `email.smtp_url` is not usable: {why}; write it like \"smtp://user:password@mail.example.org:587\" or \"smtps://mail.example.org\""
                ))
            })?;
        }
        if !self.email.from.is_empty() && self.email.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(ConfigError(format!(
                "config key `email.from` is `{}`, which is not a mail address; write it like \"Example Chat <chat@example.org>\"",
                self.email.from
            )));
        }
        if !matches!(self.email.language.as_str(), "en" | "fr") {
            return Err(ConfigError(format!(
                "config key `email.language` is `{}`; porch writes mails in `en` or `fr`",
                self.email.language
            )));
        }
        if self.registration.tokens.iter().any(|t| !valid_registration_token(t)) {
            return Err(ConfigError(
                "config key `registration.tokens` holds a token that is empty, longer than 64 characters or uses characters other than A-Z a-z 0-9 . _ ~ -; fix or remove it".to_owned(),
            ));
        }
        let trusted_proxies = self.listen.trusted_proxies.iter().filter_map(|r| r.parse().ok()).collect();
        Ok(Settings {
            trusted_proxies,
            sync_timeout_max: Duration::from_millis(self.limits.sync_timeout_max_ms),
            server_name,
            client_addr,
            federation_addr,
            default_room_version,
            bound_client_addr: Arc::default(),
            raw: self,
        })
    }
}

fn valid_color(color: &str) -> bool {
    color.len() == 7 && color.starts_with('#') && color[1..].bytes().all(|b| b.is_ascii_hexdigit())
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
    pub fn security_level(&self, id: &str) -> Option<&SecurityLevel> {
        self.raw.security_levels.iter().find(|l| l.id == id)
    }

    /// Where guest links point.
    pub fn guest_base_url(&self) -> String {
        if self.raw.guests.public_base_url.is_empty() {
            self.client_base_url()
        } else {
            self.raw.guests.public_base_url.trim_end_matches('/').to_owned()
        }
    }

    pub fn client_base_url(&self) -> String {
        if self.raw.well_known.client.is_empty() {
            format!("http://{}", self.bound_client_addr.get().unwrap_or(&self.client_addr))
        } else {
            self.raw.well_known.client.trim_end_matches('/').to_owned()
        }
    }
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrNumber {
        String(String),
        Number(u64),
    }
    Ok(match StringOrNumber::deserialize(deserializer)? {
        StringOrNumber::String(s) => s,
        StringOrNumber::Number(n) => n.to_string(),
    })
}
