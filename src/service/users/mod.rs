//! Accounts, devices and access tokens.

mod data;

use std::sync::{Arc, Mutex};

use ruma::{OwnedDeviceId, OwnedMxcUri, OwnedServerName, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use self::data::TokenRecord;
use crate::{
    error::{Error, Result},
    storage::Db,
    util,
};

/// What an account is, stored and never inferred (see the guest-rooms contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    Member,
    External,
    Temporary,
}

impl AccountKind {
    /// External and temporary accounts are guests.
    pub fn is_guest(self) -> bool {
        !matches!(self, AccountKind::Member)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Member => "member",
            AccountKind::External => "external",
            AccountKind::Temporary => "temporary",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserRecord {
    pub kind: AccountKind,
    #[serde(default)]
    pub is_admin: bool,
    pub password_hash: Option<String>,
    #[serde(default)]
    pub deactivated: bool,
    pub displayname: Option<String>,
    pub avatar_url: Option<OwnedMxcUri>,
    pub created_at: u64,
    /// Set by an admin; `None`: the server's default level.
    #[serde(default)]
    pub security_level: Option<String>,
    /// The address an email invitation reached them at (external accounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub display_name: Option<String>,
    pub access_token: String,
    pub last_seen_ts: u64,
    pub last_seen_ip: Option<String>,
}

/// The account behind an access token.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub user: UserRecord,
}

impl Session {
    pub fn is_guest(&self) -> bool {
        self.user.kind.is_guest()
    }
}

pub struct Users {
    db: Arc<Db>,
    server_name: OwnedServerName,
    /// Serialises "is this id free? then take it".
    create_lock: Mutex<()>,
}

impl Users {
    pub fn new(db: Arc<Db>, server_name: OwnedServerName) -> Self {
        Self { db, server_name, create_lock: Mutex::new(()) }
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// Parse a localpart (or full id) into a user id of this server, applying
    /// the grammar for new registrations.
    pub fn local_user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        let localpart = localpart.strip_prefix('@').map(|s| s.split(':').next().unwrap_or(s)).unwrap_or(localpart);
        if localpart.is_empty()
            || !localpart
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'))
        {
            return Err(Error::invalid_username("User names may only contain a-z, 0-9, and . _ = - / +"));
        }
        let user_id = UserId::parse_with_server_name(localpart, &self.server_name)
            .map_err(|_| Error::invalid_username("That user name is not valid."))?;
        if user_id.as_str().len() > 255 {
            return Err(Error::invalid_username("That user name is too long."));
        }
        Ok(user_id)
    }

    pub fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name
    }

    pub fn get(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        data::get_user(&self.db, user_id)
    }

    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        data::user_exists(&self.db, user_id)
    }

    /// Make an account; fails with `M_USER_IN_USE` if the id was ever taken
    /// (deactivated ids are never reused).
    pub fn create(
        &self,
        user_id: &UserId,
        password: Option<&str>,
        kind: AccountKind,
        is_admin: bool,
        displayname: Option<String>,
    ) -> Result<UserRecord> {
        let password_hash = password.map(crate::password::hash).transpose().map_err(Error::internal)?;
        self.create_hashed(user_id, password_hash, kind, is_admin, displayname)
    }

    /// [`Self::create`] with the password already hashed.
    pub fn create_hashed(
        &self,
        user_id: &UserId,
        password_hash: Option<String>,
        kind: AccountKind,
        is_admin: bool,
        displayname: Option<String>,
    ) -> Result<UserRecord> {
        let record = UserRecord {
            kind,
            is_admin,
            password_hash,
            deactivated: false,
            displayname: displayname.or_else(|| Some(user_id.localpart().to_owned())),
            avatar_url: None,
            created_at: util::now_ms(),
            security_level: None,
            email: None,
        };
        let _guard = self.create_lock.lock().expect("create lock poisoned");
        if self.exists(user_id)? {
            return Err(Error::user_in_use());
        }
        let mut batch = self.db.batch();
        data::put_user(&mut batch, user_id, &record);
        batch.commit_durable()?;
        Ok(record)
    }

    /// Remove an account that was made moments ago and never used (a guest
    /// redemption that failed after the account was made).
    pub fn remove_unused(&self, user_id: &UserId) -> Result<()> {
        self.remove_devices(user_id, None, None)?;
        data::delete_user(&self.db, user_id)
    }

    pub fn save(&self, user_id: &UserId, record: &UserRecord) -> Result<()> {
        data::save_user(&self.db, user_id, record)
    }

    pub fn check_password(&self, user_id: &UserId, password: &str) -> Result<bool> {
        Ok(match self.get(user_id)? {
            Some(UserRecord { password_hash: Some(hash), deactivated: false, .. }) => {
                crate::password::verify(password, &hash)
            }
            _ => false,
        })
    }

    /// Make (or replace) a device and give it a fresh access token.
    pub fn create_device(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        ip: Option<String>,
    ) -> Result<(OwnedDeviceId, String)> {
        let device_id = device_id.unwrap_or_else(|| util::random_string(10).to_uppercase().into());
        let token = format!("porch_{}", util::random_string(40));
        let mut batch = self.db.batch();
        if let Some(old) = data::device(&self.db, user_id, device_id.as_str())? {
            data::delete_token(&mut batch, &old.access_token);
        }
        let record =
            DeviceRecord { display_name, access_token: token.clone(), last_seen_ts: util::now_ms(), last_seen_ip: ip };
        data::put_device(&mut batch, user_id, device_id.as_str(), &record);
        // A new device is a device-list change for the user's room peers.
        crate::service::keys::Keys::mark_changed(&mut batch, user_id);
        data::put_token(&mut batch, &token, &TokenRecord { user_id: user_id.to_owned(), device_id: device_id.clone() });
        batch.commit_durable()?;
        Ok((device_id, token))
    }

    /// Resolve an access token to its session.
    pub fn authenticate(&self, token: &str) -> Result<Session> {
        let record = data::token(&self.db, token)?.ok_or_else(Error::unknown_token)?;
        let user = self.get(&record.user_id)?.ok_or_else(Error::unknown_token)?;
        if user.deactivated {
            return Err(Error::unknown_token());
        }
        Ok(Session { user_id: record.user_id, device_id: record.device_id, user })
    }

    pub fn device(&self, user_id: &UserId, device_id: &str) -> Result<Option<DeviceRecord>> {
        data::device(&self.db, user_id, device_id)
    }

    pub fn devices(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, DeviceRecord)>> {
        data::devices(&self.db, user_id)
    }

    pub fn update_device(&self, user_id: &UserId, device_id: &str, display_name: Option<String>) -> Result<bool> {
        let Some(mut record) = data::device(&self.db, user_id, device_id)? else {
            return Ok(false);
        };
        record.display_name = display_name;
        let mut batch = self.db.batch();
        data::put_device(&mut batch, user_id, device_id, &record);
        // Its name is part of what peers' device lists show.
        crate::service::keys::Keys::mark_changed(&mut batch, user_id);
        batch.commit()?;
        Ok(true)
    }

    /// Remove devices and their tokens; `keep` is spared.
    /// Remove devices (all, those listed, all but `keep`); returns the ids removed.
    pub fn remove_devices(
        &self,
        user_id: &UserId,
        which: Option<&[OwnedDeviceId]>,
        keep: Option<&str>,
    ) -> Result<Vec<OwnedDeviceId>> {
        let mut batch = self.db.batch();
        let mut removed = Vec::new();
        for (device_id, record) in self.devices(user_id)? {
            let selected = which.is_none_or(|list| list.contains(&device_id));
            if selected && keep != Some(device_id.as_str()) {
                removed.push(device_id.clone());
                data::delete_token(&mut batch, &record.access_token);
                data::delete_device(&mut batch, user_id, device_id.as_str());
                crate::service::keys::forget_device(&self.db, &mut batch, user_id, device_id.as_str())?;
                crate::service::push::forget_device(&self.db, &mut batch, user_id, device_id.as_str())?;
            }
        }
        batch.commit_durable()?;
        Ok(removed)
    }

    pub fn set_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let mut record = self.get(user_id)?.ok_or_else(|| Error::not_found("No such user."))?;
        record.password_hash = Some(crate::password::hash(password).map_err(Error::internal)?);
        self.save(user_id, &record)
    }

    /// Record a to-device transaction id; `false` if it was used before.
    pub fn claim_to_device_txn(&self, user_id: &UserId, device_id: &str, txn_id: &str) -> Result<bool> {
        crate::service::rooms::data::claim_to_device_txn(&self.db, user_id, device_id, txn_id)
    }

    /// Every local account, for directory search and admin listings.
    pub fn all(&self) -> Result<Vec<(OwnedUserId, UserRecord)>> {
        data::users(&self.db)
    }
}

/// The rule for passwords an admin or an invitation sets for a new account
/// here: at least 8 characters.
pub fn check_new_password(password: &str) -> Result<()> {
    if password.chars().count() < 8 {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_WEAK_PASSWORD",
            "Passwords need at least 8 characters.",
        ));
    }
    Ok(())
}
