//! Server-side key backup (`/room_keys`): versions, each with its
//! algorithm and opaque auth data, and the encrypted room keys clients
//! store in the newest one. The server never sees a key: it keeps the best
//! copy of each session by the spec's rule and an etag that moves whenever
//! the keys do.

mod data;

use std::sync::Mutex;

use ruma::{OwnedRoomId, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::Services,
};

/// Serialises writes, so counts and etags stay exact.
#[derive(Default)]
pub struct KeyBackup {
    writes: Mutex<()>,
}

pub struct Info {
    pub version: String,
    pub algorithm: Value,
    pub count: u64,
    pub etag: String,
}

fn no_version() -> Error {
    Error::not_found("No key backup with that version.")
}

fn parse_version(version: &str) -> Result<u64> {
    version.parse().map_err(|_| no_version())
}

fn check_algorithm(algorithm: &Value) -> Result<()> {
    let valid = algorithm.get("algorithm").is_some_and(Value::is_string) && algorithm.get("auth_data").is_some();
    if valid { Ok(()) } else { Err(Error::bad_json("A backup needs `algorithm` (a string) and `auth_data`.")) }
}

/// A key as the spec shapes it; the server reads only the fields it compares.
fn check_key(data: &Value) -> Result<()> {
    let valid = data.get("first_message_index").is_some_and(Value::is_u64)
        && data.get("forwarded_count").is_some_and(Value::is_u64)
        && data.get("is_verified").is_some_and(Value::is_boolean)
        && data.get("session_data").is_some();
    if valid {
        Ok(())
    } else {
        Err(Error::bad_json(
            "A backed-up key needs `first_message_index`, `forwarded_count`, `is_verified` and `session_data`.",
        ))
    }
}

/// The spec's rule: a verified key beats an unverified one, then the one
/// that decrypts from an earlier message, then the less forwarded one.
fn better(new: &Value, old: &Value) -> bool {
    let rank = |v: &Value| {
        (
            !v["is_verified"].as_bool().unwrap_or(false),
            v["first_message_index"].as_u64().unwrap_or(u64::MAX),
            v["forwarded_count"].as_u64().unwrap_or(u64::MAX),
        )
    };
    rank(new) < rank(old)
}

impl KeyBackup {
    pub fn create(&self, s: &Services, user_id: &UserId, algorithm: Value) -> Result<String> {
        check_algorithm(&algorithm)?;
        let _guard = self.writes.lock().expect("backup lock poisoned");
        let (highest, _) = data::versions(&s.db, user_id)?;
        let number = highest + 1;
        let mut batch = s.db.batch();
        data::put_version(
            &mut batch,
            user_id,
            number,
            &data::VersionRecord { algorithm, etag: 0, count: 0, deleted: false },
        );
        batch.commit()?;
        Ok(number.to_string())
    }

    /// A version's description (`None`: the newest).
    pub fn info(&self, s: &Services, user_id: &UserId, version: Option<&str>) -> Result<Info> {
        let (number, record) = match version {
            Some(v) => {
                let number = parse_version(v)?;
                (number, data::version(&s.db, user_id, number)?.ok_or_else(no_version)?)
            }
            None => data::versions(&s.db, user_id)?.1.ok_or_else(|| Error::not_found("No current backup version."))?,
        };
        Ok(Info {
            version: number.to_string(),
            algorithm: record.algorithm,
            count: record.count,
            etag: record.etag.to_string(),
        })
    }

    /// New auth data for a version; its algorithm cannot change.
    pub fn update(&self, s: &Services, user_id: &UserId, version: &str, algorithm: Value) -> Result<()> {
        check_algorithm(&algorithm)?;
        if let Some(named) = algorithm.get("version").and_then(Value::as_str)
            && named != version
        {
            return Err(Error::invalid_param("The body's `version` is not the one in the path."));
        }
        let number = parse_version(version)?;
        let _guard = self.writes.lock().expect("backup lock poisoned");
        let mut record = data::version(&s.db, user_id, number)?.ok_or_else(no_version)?;
        if record.algorithm["algorithm"] != algorithm["algorithm"] {
            return Err(Error::invalid_param("A backup's algorithm cannot change; make a new version."));
        }
        record.algorithm =
            serde_json::json!({ "algorithm": algorithm["algorithm"], "auth_data": algorithm["auth_data"] });
        let mut batch = s.db.batch();
        data::put_version(&mut batch, user_id, number, &record);
        batch.commit()?;
        Ok(())
    }

    /// Delete a version and its keys (its number is not given out again).
    pub fn delete(&self, s: &Services, user_id: &UserId, version: &str) -> Result<()> {
        let number = parse_version(version)?;
        let _guard = self.writes.lock().expect("backup lock poisoned");
        let mut record = data::version(&s.db, user_id, number)?.ok_or_else(no_version)?;
        let mut batch = s.db.batch();
        data::delete_sessions(&s.db, &mut batch, user_id, number, None, None)?;
        record.deleted = true;
        record.count = 0;
        data::put_version(&mut batch, user_id, number, &record);
        batch.commit()?;
        Ok(())
    }

    /// Store keys in the newest version (only there: a client still on an
    /// older one learns the current one). Returns the count and etag.
    pub fn put_keys(
        &self,
        s: &Services,
        user_id: &UserId,
        version: &str,
        keys: Vec<(OwnedRoomId, String, Value)>,
    ) -> Result<(u64, String)> {
        for (_, _, data) in &keys {
            check_key(data)?;
        }
        let number = parse_version(version)?;
        let _guard = self.writes.lock().expect("backup lock poisoned");
        let (_, latest) = data::versions(&s.db, user_id)?;
        let (current, mut record) = latest.ok_or_else(no_version)?;
        if current != number {
            let known = data::version(&s.db, user_id, number)?.is_some();
            if !known {
                return Err(no_version());
            }
            return Err(Error::new(
                http::StatusCode::FORBIDDEN,
                "M_WRONG_ROOM_KEYS_VERSION",
                "That backup version is not the current one.",
            )
            .with("current_version", Value::String(current.to_string())));
        }
        let mut batch = s.db.batch();
        let mut changed = false;
        for (room_id, session_id, new) in keys {
            match data::session(&s.db, user_id, number, room_id.as_str(), &session_id)? {
                Some(old) if !better(&new, &old) => continue,
                Some(_) => {}
                None => record.count += 1,
            }
            data::put_session(&mut batch, user_id, number, room_id.as_str(), &session_id, &new);
            changed = true;
        }
        if changed {
            record.etag += 1;
            data::put_version(&mut batch, user_id, number, &record);
            batch.commit()?;
        }
        Ok((record.count, record.etag.to_string()))
    }

    /// Keys of a version: all, a room's, or one session's (which must exist).
    pub fn keys(
        &self,
        s: &Services,
        user_id: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<(OwnedRoomId, String, Value)>> {
        let number = parse_version(version)?;
        data::version(&s.db, user_id, number)?.ok_or_else(no_version)?;
        if let (Some(room_id), Some(session_id)) = (room_id, session_id) {
            let found = data::session(&s.db, user_id, number, room_id, session_id)?
                .ok_or_else(|| Error::not_found("No such key in the backup."))?;
            let room = OwnedRoomId::try_from(room_id).map_err(|_| Error::not_found("No such key in the backup."))?;
            return Ok(vec![(room, session_id.to_owned(), found)]);
        }
        data::sessions(&s.db, user_id, number, room_id)
    }

    /// Delete keys of a version: all, a room's, or one session's.
    pub fn delete_keys(
        &self,
        s: &Services,
        user_id: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(u64, String)> {
        let number = parse_version(version)?;
        let _guard = self.writes.lock().expect("backup lock poisoned");
        let mut record = data::version(&s.db, user_id, number)?.ok_or_else(no_version)?;
        let mut batch = s.db.batch();
        let deleted = data::delete_sessions(&s.db, &mut batch, user_id, number, room_id, session_id)?;
        if deleted > 0 {
            record.count = record.count.saturating_sub(deleted);
            record.etag += 1;
            data::put_version(&mut batch, user_id, number, &record);
            batch.commit()?;
        }
        Ok((record.count, record.etag.to_string()))
    }

    /// A deactivated account's backups go with it.
    pub fn forget_user(&self, s: &Services, user_id: &UserId) -> Result<()> {
        let _guard = self.writes.lock().expect("backup lock poisoned");
        let mut batch = s.db.batch();
        data::delete_user(&s.db, &mut batch, user_id)?;
        batch.commit()?;
        Ok(())
    }
}
