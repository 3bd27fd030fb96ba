//! Server-side key backup (`/room_keys`), over `service::key_backup`.

use std::collections::BTreeMap;

use ruma::{
    OwnedRoomId, UInt,
    api::client::backup::{
        RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
        delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
        get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
        get_latest_backup_info, update_backup_version,
    },
    serde::Raw,
};
use serde_json::Value;

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    service::key_backup::Info,
};

fn raw<T>(value: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(value)?))
}

fn value<T>(raw: &Raw<T>) -> Result<Value> {
    serde_json::from_str(raw.json().get()).map_err(|_| Error::bad_json("Not valid JSON."))
}

fn count(n: u64) -> UInt {
    UInt::new_saturating(n)
}

/// Group `(room, session, data)` by room, as the responses carry them.
fn by_room(keys: Vec<(OwnedRoomId, String, Value)>) -> Result<BTreeMap<OwnedRoomId, RoomKeyBackup>> {
    let mut rooms: BTreeMap<OwnedRoomId, RoomKeyBackup> = BTreeMap::new();
    for (room_id, session_id, data) in keys {
        rooms
            .entry(room_id)
            .or_insert_with(|| RoomKeyBackup::new(BTreeMap::new()))
            .sessions
            .insert(session_id, raw(&data)?);
    }
    Ok(rooms)
}

fn flatten(rooms: &BTreeMap<OwnedRoomId, RoomKeyBackup>) -> Result<Vec<(OwnedRoomId, String, Value)>> {
    let mut out = Vec::new();
    for (room_id, room) in rooms {
        for (session_id, data) in &room.sessions {
            out.push((room_id.clone(), session_id.clone(), value(data)?));
        }
    }
    Ok(out)
}

pub async fn create_version(
    state: AppState,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    blocking(&state, move |s| {
        let algorithm = value(&req.body.algorithm)?;
        let version = s.key_backup.create(s, &req.session().user_id, algorithm)?;
        Ok(create_backup_version::v3::Response::new(version))
    })
    .await
}

fn info(
    s: &crate::service::Services,
    user: &ruma::UserId,
    version: Option<&str>,
) -> Result<(Info, Raw<ruma::api::client::backup::BackupAlgorithm>)> {
    let info = s.key_backup.info(s, user, version)?;
    let algorithm = raw(&info.algorithm)?;
    Ok((info, algorithm))
}

pub async fn latest_version(
    state: AppState,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    blocking(&state, move |s| {
        let (info, algorithm) = info(s, &req.session().user_id, None)?;
        Ok(get_latest_backup_info::v3::Response::new(algorithm, count(info.count), info.etag, info.version))
    })
    .await
}

pub async fn get_version(
    state: AppState,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response> {
    blocking(&state, move |s| {
        let (info, algorithm) = info(s, &req.session().user_id, Some(&req.body.version))?;
        Ok(get_backup_info::v3::Response::new(algorithm, count(info.count), info.etag, info.version))
    })
    .await
}

pub async fn update_version(
    state: AppState,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    blocking(&state, move |s| {
        let algorithm = value(&req.body.algorithm)?;
        s.key_backup.update(s, &req.session().user_id, &req.body.version, algorithm)?;
        Ok(update_backup_version::v3::Response::new())
    })
    .await
}

pub async fn delete_version(
    state: AppState,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    blocking(&state, move |s| {
        s.key_backup.delete(s, &req.session().user_id, &req.body.version)?;
        Ok(delete_backup_version::v3::Response::new())
    })
    .await
}

pub async fn put_keys(
    state: AppState,
    req: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response> {
    blocking(&state, move |s| {
        let keys = flatten(&req.body.rooms)?;
        let (n, etag) = s.key_backup.put_keys(s, &req.session().user_id, &req.body.version, keys)?;
        Ok(add_backup_keys::v3::Response::new(etag, count(n)))
    })
    .await
}

pub async fn put_room_keys(
    state: AppState,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let mut keys = Vec::new();
        for (session_id, data) in &body.sessions {
            keys.push((body.room_id.clone(), session_id.clone(), value(data)?));
        }
        let (n, etag) = s.key_backup.put_keys(s, &req.session().user_id, &body.version, keys)?;
        Ok(add_backup_keys_for_room::v3::Response::new(etag, count(n)))
    })
    .await
}

pub async fn put_session_key(
    state: AppState,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let keys = vec![(body.room_id.clone(), body.session_id.clone(), value(&body.session_data)?)];
        let (n, etag) = s.key_backup.put_keys(s, &req.session().user_id, &body.version, keys)?;
        Ok(add_backup_keys_for_session::v3::Response::new(etag, count(n)))
    })
    .await
}

pub async fn get_keys(
    state: AppState,
    req: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response> {
    blocking(&state, move |s| {
        let keys = s.key_backup.keys(s, &req.session().user_id, &req.body.version, None, None)?;
        Ok(get_backup_keys::v3::Response::new(by_room(keys)?))
    })
    .await
}

pub async fn get_room_keys(
    state: AppState,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let keys = s.key_backup.keys(s, &req.session().user_id, &body.version, Some(body.room_id.as_str()), None)?;
        let mut sessions = BTreeMap::new();
        for (_, session_id, data) in keys {
            sessions.insert(session_id, raw(&data)?);
        }
        Ok(get_backup_keys_for_room::v3::Response::new(sessions))
    })
    .await
}

pub async fn get_session_key(
    state: AppState,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let keys = s.key_backup.keys(
            s,
            &req.session().user_id,
            &body.version,
            Some(body.room_id.as_str()),
            Some(&body.session_id),
        )?;
        let (_, _, data) = keys.into_iter().next().ok_or_else(|| Error::not_found("No such key in the backup."))?;
        Ok(get_backup_keys_for_session::v3::Response::new(raw(&data)?))
    })
    .await
}

pub async fn delete_keys(
    state: AppState,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    blocking(&state, move |s| {
        let (n, etag) = s.key_backup.delete_keys(s, &req.session().user_id, &req.body.version, None, None)?;
        Ok(delete_backup_keys::v3::Response::new(etag, count(n)))
    })
    .await
}

pub async fn delete_room_keys(
    state: AppState,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let (n, etag) =
            s.key_backup.delete_keys(s, &req.session().user_id, &body.version, Some(body.room_id.as_str()), None)?;
        Ok(delete_backup_keys_for_room::v3::Response::new(etag, count(n)))
    })
    .await
}

pub async fn delete_session_key(
    state: AppState,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let (n, etag) = s.key_backup.delete_keys(
            s,
            &req.session().user_id,
            &body.version,
            Some(body.room_id.as_str()),
            Some(&body.session_id),
        )?;
        Ok(delete_backup_keys_for_session::v3::Response::new(etag, count(n)))
    })
    .await
}
