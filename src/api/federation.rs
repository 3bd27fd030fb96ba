//! The server-server API served on the TLS listener. So far: the server's
//! published signing keys and its version; the rest of federation is next.

use std::{collections::BTreeMap, time::Duration};

use ruma::{
    CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerSigningKeyId,
    api::federation::{
        device::get_devices,
        directory::{get_public_rooms, get_public_rooms_filtered},
        discovery::{ServerSigningKeys, VerifyKey, get_server_keys, get_server_version},
        keys::get_keys,
        query::{get_profile_information, get_room_information},
    },
    serde::{Base64, Raw},
};

use crate::{
    api::{AppState, Routes, Ruma},
    error::{Error, Result},
    service::directory,
};

/// How long other servers may cache our keys.
const KEY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

pub fn register(r: &mut Routes) {
    r.ruma::<get_server_keys::v2::Request, _, _>(server_keys)
        .ruma::<get_server_version::v1::Request, _, _>(version)
        .ruma::<get_profile_information::v1::Request, _, _>(profile)
        .ruma::<get_room_information::v1::Request, _, _>(room_by_alias)
        .ruma::<get_public_rooms::v1::Request, _, _>(public_rooms)
        .ruma::<get_public_rooms_filtered::v1::Request, _, _>(public_rooms_filtered)
        .ruma::<get_keys::v1::Request, _, _>(user_keys)
        .ruma::<get_devices::v1::Request, _, _>(user_devices);
}

/// A local user's devices with their keys, for other servers' device lists.
async fn user_devices(state: AppState, req: Ruma<get_devices::v1::Request>) -> Result<get_devices::v1::Response> {
    crate::api::blocking(&state, move |s| {
        let user_id = &req.body.user_id;
        if !s.users.is_local(user_id) || s.users.get(user_id)?.is_none() {
            return Err(Error::not_found("No such user on this server."));
        }
        let keys = crate::service::keys::published_keys(s, user_id, &[], false)?;
        let stream_id = ruma::UInt::new_saturating(s.keys.changed_at(user_id)?);
        let mut response = get_devices::v1::Response::new(user_id.clone(), stream_id);
        for (device_id, device_keys) in keys.devices {
            let mut device = get_devices::v1::UserDevice::new(device_id.clone(), device_keys);
            device.device_display_name = s.users.device(user_id, device_id.as_str())?.and_then(|d| d.display_name);
            response.devices.push(device);
        }
        response.master_key = keys.master;
        response.self_signing_key = keys.self_signing;
        Ok(response)
    })
    .await
}

/// Device and cross-signing keys of this server's users, for other servers.
async fn user_keys(state: AppState, req: Ruma<get_keys::v1::Request>) -> Result<get_keys::v1::Response> {
    crate::api::blocking(&state, move |s| {
        let mut response = get_keys::v1::Response::new(Default::default());
        for (user_id, devices) in &req.body.device_keys {
            if !s.users.is_local(user_id) {
                continue;
            }
            let keys = crate::service::keys::published_keys(s, user_id, devices, false)?;
            response.device_keys.insert(user_id.clone(), keys.devices);
            if let Some(master) = keys.master {
                response.master_keys.insert(user_id.clone(), master);
            }
            if let Some(self_signing) = keys.self_signing {
                response.self_signing_keys.insert(user_id.clone(), self_signing);
            }
        }
        Ok(response)
    })
    .await
}

/// An alias of this server, for other servers.
async fn room_by_alias(
    state: AppState,
    req: Ruma<get_room_information::v1::Request>,
) -> Result<get_room_information::v1::Response> {
    crate::api::blocking(&state, move |s| {
        let alias = &req.body.room_alias;
        if alias.server_name() != s.server_name() {
            return Err(Error::not_found("That alias does not belong to this server."));
        }
        let room_id = directory::resolve_alias(s, alias)?.ok_or_else(|| Error::not_found("No room has this alias."))?;
        Ok(get_room_information::v1::Response::new(room_id, vec![s.settings.server_name.clone()]))
    })
    .await
}

async fn public_rooms(
    state: AppState,
    req: Ruma<get_public_rooms::v1::Request>,
) -> Result<get_public_rooms::v1::Response> {
    crate::api::blocking(&state, move |s| {
        let listing = directory::public_rooms(s, None, req.body.limit, req.body.since.as_deref())?;
        let mut response = get_public_rooms::v1::Response::new();
        response.chunk = listing.chunk;
        response.next_batch = listing.next_batch;
        response.prev_batch = listing.prev_batch;
        response.total_room_count_estimate = Some(ruma::UInt::new_saturating(listing.total as u64));
        Ok(response)
    })
    .await
}

async fn public_rooms_filtered(
    state: AppState,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response> {
    crate::api::blocking(&state, move |s| {
        let body = &req.body;
        let listing =
            directory::public_rooms(s, body.filter.generic_search_term.as_deref(), body.limit, body.since.as_deref())?;
        let mut response = get_public_rooms_filtered::v1::Response::new();
        response.chunk = listing.chunk;
        response.next_batch = listing.next_batch;
        response.prev_batch = listing.prev_batch;
        response.total_room_count_estimate = Some(ruma::UInt::new_saturating(listing.total as u64));
        Ok(response)
    })
    .await
}

/// Profiles of this server's users, for other servers. Guests' profiles
/// carry their marker here too.
async fn profile(
    state: AppState,
    req: Ruma<get_profile_information::v1::Request>,
) -> Result<get_profile_information::v1::Response> {
    crate::api::blocking(&state, move |s| {
        let user_id = &req.body.user_id;
        let user = match s.users.get(user_id)? {
            Some(user) if s.users.is_local(user_id) && !user.deactivated => user,
            _ => return Err(Error::not_found("This user has no profile here.")),
        };
        let mut response = get_profile_information::v1::Response::new();
        let wanted = req.body.field.as_ref().map(|f| f.as_str().to_owned());
        let mut put = |field: &str, value: serde_json::Value| {
            if wanted.as_deref().is_none_or(|w| w == field) {
                response.data.set(field.to_owned(), value);
            }
        };
        if let Some(name) = user.displayname {
            put("displayname", serde_json::Value::String(name));
        }
        if let Some(avatar) = user.avatar_url {
            put("avatar_url", serde_json::Value::String(avatar.to_string()));
        }
        if user.kind.is_guest() {
            put(crate::policy::GUEST_MARKER, serde_json::Value::Bool(true));
        }
        Ok(response)
    })
    .await
}

async fn version(_: AppState, _: Ruma<get_server_version::v1::Request>) -> Result<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("porch".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}

/// `/_matrix/key/v2/server`: our verify key, signed by itself.
async fn server_keys(state: AppState, _: Ruma<get_server_keys::v2::Request>) -> Result<get_server_keys::v2::Response> {
    let key_id = OwnedServerSigningKeyId::try_from(state.signing.key_id()).map_err(Error::internal)?;
    let verify_key = VerifyKey::new(Base64::new(state.signing.key_pair.public_key().to_vec()));
    let valid_until = MilliSecondsSinceUnixEpoch::from_system_time(std::time::SystemTime::now() + KEY_VALIDITY)
        .ok_or_else(|| Error::internal("key validity out of range"))?;
    let mut keys = ServerSigningKeys::new(state.settings.server_name.clone(), valid_until);
    keys.verify_keys = BTreeMap::from([(key_id, verify_key)]);
    let mut object = match ruma::canonical_json::to_canonical_value(&keys).map_err(Error::internal)? {
        CanonicalJsonValue::Object(object) => object,
        _ => return Err(Error::internal("server keys are not an object")),
    };
    ruma::signatures::sign_json(state.settings.server_name.as_str(), &state.signing.key_pair, &mut object)
        .map_err(Error::internal)?;
    let raw = Raw::from_json(serde_json::value::to_raw_value(&object)?);
    Ok(get_server_keys::v2::Response::new(raw))
}
