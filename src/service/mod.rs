//! Services own porch's logic; HTTP handlers call them and nothing else
//! touches storage. `Services` is built once at start-up and shared.

pub mod account_data;
pub mod accounts;
pub mod acl;
pub mod address_guard;
pub mod backfill;
pub mod create_room;
pub mod directory;
pub mod discovery;
pub mod ephemeral;
pub mod events;
pub mod federation;
pub mod federation_v1;
pub mod guests;
pub mod history;
pub mod housekeeping;
pub mod inbound;
pub mod invitations;
pub mod key_backup;
pub mod keys;
pub mod legacy_sync;
pub mod mail;
pub mod media;
pub mod membership;
pub mod outbound;
pub mod profiles;
pub mod push;
pub mod ratelimit;
pub mod registration;
pub mod relations;
pub mod remote_invite;
pub mod remote_join;
pub mod remote_knock;
pub mod reports;
pub mod room_upgrade;
pub mod rooms;
pub mod schema;
pub mod search;
pub mod sliding_sync;
pub mod spaces;
pub mod sync;
pub mod tokens;
pub mod uiaa;
pub mod users;

use std::sync::Arc;

use crate::{config::Settings, signing::SigningKey, storage::Db};

pub struct Services {
    pub settings: Settings,
    pub db: Arc<Db>,
    pub signing: Arc<SigningKey>,
    pub users: users::Users,
    pub rooms: rooms::Rooms,
    pub account_data: account_data::AccountData,
    pub media: media::Media,
    pub keys: keys::Keys,
    pub key_backup: key_backup::KeyBackup,
    pub spaces: spaces::Spaces,
    pub lazy_members: sync::LazyMembers,
    pub sliding_sync: sliding_sync::connections::Connections,
    pub guests: guests::Guests,
    pub mail: mail::Mailer,
    pub federation: federation::Federation,
    pub outbox: Arc<outbound::OutboxSignal>,
    pub inbound: inbound::Inbound,
    pub backfills: backfill::Backfills,
    pub push_rules: push::RulesetCache,
    pub pushes: push::PushSignal,
    pub redeem_limiter: ratelimit::RateLimiter,
    pub ephemeral: ephemeral::Ephemeral,
    pub registration: registration::Registration,
    pub shared_secret_nonces: registration::Nonces,
    pub uiaa: uiaa::Uiaa,
    pub login_limiter: ratelimit::RateLimiter,
    pub register_limiter: ratelimit::RateLimiter,
    pub federation_limiter: ratelimit::RateLimiter<ruma::OwnedServerName>,
    /// Per client address: servers asked about through the key notary.
    pub key_query_limiter: ratelimit::RateLimiter,
    /// Per user: events, room creations, invites, uploads.
    pub user_limits: ratelimit::UserLimits,
}

impl Services {
    pub fn open(settings: Settings) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&settings.raw.database.path).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the database folder {} ({e}); set `database.path` to a folder porch may write",
                settings.raw.database.path.display()
            )
        })?;
        let db = Arc::new(Db::open(&settings.raw.database.path, settings.raw.database.sync_writes).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the database at {} ({e}); is another porch running on it?",
                settings.raw.database.path.display()
            )
        })?);
        schema::migrate(&db)?;
        let signing = Arc::new(SigningKey::load_or_create(&db)?);
        let server_name = settings.server_name.clone();
        let limits = &settings.raw.rate_limits;
        let outbox = Arc::new(outbound::OutboxSignal::default());
        let cache_bytes = settings.raw.database.cache_mb.saturating_mul(1 << 20);
        Ok(Arc::new(Self {
            users: users::Users::new(db.clone(), server_name.clone()),
            rooms: rooms::Rooms::new(db.clone(), server_name, signing.clone(), outbox.clone(), cache_bytes)
                .map_err(|e| anyhow::anyhow!("cannot read the state ids: {}", e.message))?,
            outbox,
            inbound: inbound::Inbound::default(),
            backfills: backfill::Backfills::default(),
            account_data: account_data::AccountData::new(db.clone()),
            keys: keys::Keys::new(db.clone()),
            key_backup: key_backup::KeyBackup::default(),
            spaces: spaces::Spaces::default(),
            lazy_members: sync::LazyMembers::default(),
            sliding_sync: sliding_sync::connections::Connections::default(),
            guests: guests::Guests::default(),
            mail: mail::Mailer::new(&settings)?,
            federation: federation::Federation::new(db.clone(), signing.clone(), &settings)?,
            push_rules: push::RulesetCache::new(cache_bytes / 20),
            pushes: push::PushSignal::default(),
            redeem_limiter: ratelimit::RateLimiter::new(
                settings.raw.guests.redeem_per_second,
                settings.raw.guests.redeem_burst,
            ),
            media: media::Media::new(
                db.clone(),
                settings.raw.database.path.join("media"),
                settings.server_name.clone(),
            )
            .map_err(|e| anyhow::anyhow!("cannot create the media folder under `database.path` ({e})"))?,
            ephemeral: ephemeral::Ephemeral::new(db.clone()),
            registration: registration::Registration::new(db.clone(), &settings.raw.registration.tokens)?,
            shared_secret_nonces: registration::Nonces::default(),
            uiaa: uiaa::Uiaa::new(db.clone()),
            login_limiter: ratelimit::RateLimiter::new(limits.login_per_second, limits.login_burst),
            register_limiter: ratelimit::RateLimiter::new(limits.registration_per_second, limits.registration_burst),
            federation_limiter: ratelimit::RateLimiter::new(
                limits.federation_transactions_per_second,
                limits.federation_transactions_burst,
            ),
            key_query_limiter: ratelimit::RateLimiter::new(limits.key_queries_per_second, limits.key_queries_burst),
            user_limits: ratelimit::UserLimits::new(limits),
            settings,
            db,
            signing,
        }))
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.settings.server_name
    }
}

/// Services on a fresh database under `dir`, without fsyncs: for unit tests.
#[cfg(test)]
pub(crate) fn open_for_test(dir: &std::path::Path) -> Arc<Services> {
    let mut config = crate::config::Config::default();
    config.database.path = dir.join("db");
    config.database.sync_writes = false;
    Services::open(config.validate().expect("the default config is valid")).expect("services open")
}

/// Run storage work off the async executor.
pub async fn blocking<F, T>(services: &Arc<Services>, f: F) -> crate::error::Result<T>
where
    F: FnOnce(&Services) -> crate::error::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let services = services.clone();
    tokio::task::spawn_blocking(move || f(&services)).await.map_err(crate::error::Error::internal)?
}
