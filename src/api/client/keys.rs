//! End-to-end encryption key endpoints and to-device messages.

use std::collections::BTreeMap;

use ruma::{
    OneTimeKeyAlgorithm, OwnedServerName, OwnedUserId, UInt,
    api::client::{
        keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
        to_device::send_event_to_device,
    },
    api::federation::keys::claim_keys as federation_claim,
    serde::Raw,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::Value;

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    policy,
    service::{
        Services,
        keys::{MASTER, RemoteUserKeys, SELF_SIGNING, USER_SIGNING},
        outbound, uiaa,
    },
};

fn value<T>(raw: &Raw<T>) -> Result<Value> {
    serde_json::from_str(raw.json().get()).map_err(|_| Error::bad_json("A key is not valid JSON."))
}

fn counts(map: BTreeMap<String, u64>) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
    map.into_iter().map(|(alg, n)| (OneTimeKeyAlgorithm::from(alg.as_str()), UInt::new_saturating(n))).collect()
}

pub async fn upload(state: AppState, req: Ruma<upload_keys::v3::Request>) -> Result<upload_keys::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        let body = &req.body;
        let device_keys = body.device_keys.as_ref().map(value).transpose()?;
        let one_time =
            body.one_time_keys.iter().map(|(id, k)| Ok((id.to_string(), value(k)?))).collect::<Result<Vec<_>>>()?;
        let fallback =
            body.fallback_keys.iter().map(|(id, k)| Ok((id.to_string(), value(k)?))).collect::<Result<Vec<_>>>()?;
        let changed_before = s.keys.changed_at(&session.user_id)?;
        let counts_now =
            s.keys.upload(&session.user_id, session.device_id.as_str(), device_keys, one_time, fallback)?;
        if s.keys.changed_at(&session.user_id)? != changed_before {
            let device = session.device_id.as_str();
            crate::service::outbound::device_list_update(s, &session.user_id, device, false, changed_before)?;
        }
        Ok(upload_keys::v3::Response::new(counts(counts_now)))
    })
    .await
}

/// Users the requester may ask about: themselves and people they share a room with
/// (guests), anyone local otherwise.
fn may_query(s: &Services, session: &crate::service::users::Session, user_id: &ruma::UserId) -> Result<bool> {
    Ok(user_id == session.user_id || !session.is_guest() || policy::shares_room(s, &session.user_id, user_id)?)
}

/// A remote user's keys into a `/keys/query` answer (only `devices`, if named).
fn add_remote_keys(
    response: &mut get_keys::v3::Response,
    user_id: OwnedUserId,
    keys: RemoteUserKeys,
    devices: &[ruma::OwnedDeviceId],
) {
    let mut device_keys = keys.devices;
    if !devices.is_empty() {
        device_keys.retain(|id, _| devices.contains(id));
    }
    response.device_keys.insert(user_id.clone(), device_keys);
    if let Some(master) = keys.master {
        response.master_keys.insert(user_id.clone(), master);
    }
    if let Some(self_signing) = keys.self_signing {
        response.self_signing_keys.insert(user_id, self_signing);
    }
}

pub async fn query(state: AppState, req: Ruma<get_keys::v3::Request>) -> Result<get_keys::v3::Response> {
    let session = req.session().clone();
    let wanted = req.body.device_keys;
    // Local users from storage; users of other servers asked over federation.
    let (mut response, remote) = blocking(&state, move |s| {
        let mut response = get_keys::v3::Response::new();
        let mut remote: BTreeMap<ruma::OwnedServerName, BTreeMap<OwnedUserId, Vec<ruma::OwnedDeviceId>>> =
            BTreeMap::new();
        for (user_id, devices) in wanted {
            if !may_query(s, &session, &user_id)? {
                continue;
            }
            if !s.users.is_local(&user_id) {
                match s.keys.cached_remote(&user_id) {
                    Some(cached) => add_remote_keys(&mut response, user_id, cached, &devices),
                    None => {
                        remote.entry(user_id.server_name().to_owned()).or_default().insert(user_id, devices);
                    }
                }
                continue;
            }
            let keys = crate::service::keys::published_keys(s, &user_id, &devices, user_id == session.user_id)?;
            response.device_keys.insert(user_id.clone(), keys.devices);
            if let Some(master) = keys.master {
                response.master_keys.insert(user_id.clone(), master);
            }
            if let Some(self_signing) = keys.self_signing {
                response.self_signing_keys.insert(user_id.clone(), self_signing);
            }
            if let Some(user_signing) = keys.user_signing {
                response.user_signing_keys.insert(user_id, user_signing);
            }
        }
        Ok((response, remote))
    })
    .await?;
    let asks = remote.into_iter().map(|(server, users)| {
        let state = state.clone();
        async move {
            let asked = users.clone();
            let asked_at = std::time::Instant::now();
            let answer =
                state.federation.send(&server, ruma::api::federation::keys::get_keys::v1::Request::new(users)).await;
            (server, asked, asked_at, answer)
        }
    });
    for (server, asked, asked_at, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok(mut answer) => {
                // A server answers for its own users only, and only about
                // the users asked; answers about all devices are kept.
                for (user_id, devices) in asked {
                    let Some(device_keys) = answer.device_keys.remove(&user_id) else { continue };
                    let keys = RemoteUserKeys {
                        devices: device_keys,
                        master: answer.master_keys.remove(&user_id),
                        self_signing: answer.self_signing_keys.remove(&user_id),
                        stream_id: None,
                    };
                    if devices.is_empty() && user_id.server_name() == server {
                        state.keys.cache_remote(&user_id, keys.clone(), asked_at);
                    }
                    add_remote_keys(&mut response, user_id, keys, &devices);
                }
            }
            Err(err) => {
                response
                    .failures
                    .insert(server.to_string(), serde_json::json!({ "errcode": err.errcode, "error": err.message }));
            }
        }
    }
    Ok(response)
}

pub async fn claim(state: AppState, req: Ruma<claim_keys::v3::Request>) -> Result<claim_keys::v3::Response> {
    let session = req.session().clone();
    let claims = req.body.one_time_keys.clone();
    // Local keys are claimed here; other servers' users (the guest policy
    // holds for them too) are grouped per server, asked together below.
    let (local, remote) = blocking(&state, move |s| {
        let local = s.keys.claim_many(&claims, |user| Ok(s.users.is_local(user) && may_query(s, &session, user)?))?;
        let mut remote: BTreeMap<OwnedServerName, BTreeMap<_, _>> = BTreeMap::new();
        for (user_id, devices) in claims {
            if !s.users.is_local(&user_id) && may_query(s, &session, &user_id)? {
                remote.entry(user_id.server_name().to_owned()).or_default().insert(user_id, devices);
            }
        }
        Ok((local, remote))
    })
    .await?;
    let mut response = claim_keys::v3::Response::new(local);
    let asks = remote.into_iter().map(|(server, claims)| {
        let state = state.clone();
        async move {
            let answer = state.federation.send(&server, federation_claim::v1::Request::new(claims)).await;
            (server, answer)
        }
    });
    for (server, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok(answer) => response
                .one_time_keys
                .extend(answer.one_time_keys.into_iter().filter(|(user, _)| user.server_name() == server)),
            Err(err) => {
                response
                    .failures
                    .insert(server.to_string(), serde_json::json!({ "errcode": err.errcode, "error": err.message }));
            }
        }
    }
    Ok(response)
}

pub async fn changes(
    state: AppState,
    req: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response> {
    blocking(&state, move |s| {
        let parse = |t: &str| {
            crate::service::sync::parse_since(t).ok_or_else(|| Error::invalid_param("The token is not valid."))
        };
        let (from, to) = (parse(&req.body.from)?, parse(&req.body.to)?);
        let (changed, left) = crate::service::keys::changes_between(s, &req.session().user_id, from, to)?;
        Ok(get_key_changes::v3::Response::new(changed, left))
    })
    .await
}

pub async fn upload_signing(
    state: AppState,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        let body = &req.body;
        let master = body.master_key.as_ref().map(value).transpose()?;
        // Replacing an existing master key needs the password; the first upload does not.
        let existing = s.keys.cross_signing_key(&session.user_id, MASTER)?;
        if existing.is_some() && master.is_some() && existing != master {
            s.uiaa.authorize(
                s,
                body.auth.as_ref(),
                &[&[uiaa::PASSWORD]],
                &format!("signing_keys:{}", session.user_id),
                Some(&session.user_id),
            )?;
        }
        let mut keys = Vec::new();
        if let Some(master) = master {
            keys.push((MASTER, master));
        }
        if let Some(k) = &body.self_signing_key {
            keys.push((SELF_SIGNING, value(k)?));
        }
        if let Some(k) = &body.user_signing_key {
            keys.push((USER_SIGNING, value(k)?));
        }
        let public = keys.iter().any(|(kind, _)| *kind != USER_SIGNING);
        s.keys.set_cross_signing_keys(&session.user_id, keys)?;
        if public {
            crate::service::outbound::signing_key_update(s, &session.user_id)?;
        }
        Ok(upload_signing_keys::v3::Response::new())
    })
    .await
}

pub async fn upload_signatures(
    state: AppState,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        let signed: BTreeMap<OwnedUserId, BTreeMap<String, Value>> =
            serde_json::from_value(serde_json::to_value(&req.body.signed_keys)?)?;
        for (owner, keys) in signed {
            if !s.users.is_local(&owner) || !may_query(s, session, &owner)? {
                continue;
            }
            for (key_id, object) in keys {
                let before = s.keys.changed_at(&owner)?;
                // Failures for one key do not stop the others.
                if let Err(err) = s.keys.add_signatures(&owner, &key_id, &object, &session.user_id) {
                    tracing::debug!(%owner, key_id, "signature upload skipped: {err}");
                    continue;
                }
                // Other servers hear of the newly signed device or key.
                if s.users.device(&owner, &key_id)?.is_some() {
                    crate::service::outbound::device_list_update(s, &owner, &key_id, false, before)?;
                } else {
                    crate::service::outbound::signing_key_update(s, &owner)?;
                }
            }
        }
        Ok(upload_signatures::v3::Response::new())
    })
    .await
}

pub async fn send_to_device(
    state: AppState,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        let body = &req.body;
        if !s.users.claim_to_device_txn(&session.user_id, session.device_id.as_str(), body.txn_id.as_str())? {
            return Ok(send_event_to_device::v3::Response::new());
        }
        let kind = body.event_type.to_string();
        let mut batch = s.keys.batch();
        // Other servers' users get theirs through their server, one EDU each.
        let mut remote: BTreeMap<OwnedServerName, serde_json::Map<String, Value>> = BTreeMap::new();
        for (target, devices) in &body.messages {
            if !s.users.is_local(target) {
                let mut per_device = serde_json::Map::new();
                for (device, content) in devices {
                    per_device.insert(device.to_string(), value(content)?);
                }
                remote
                    .entry(target.server_name().to_owned())
                    .or_default()
                    .insert(target.to_string(), Value::Object(per_device));
                continue;
            }
            for (device, content) in devices {
                let content = value(content)?;
                let device_ids: Vec<String> = match device {
                    DeviceIdOrAllDevices::DeviceId(id) => vec![id.to_string()],
                    DeviceIdOrAllDevices::AllDevices => {
                        s.users.devices(target)?.into_iter().map(|(id, _)| id.to_string()).collect()
                    }
                };
                for device_id in device_ids {
                    s.keys.queue_to_device(&mut batch, &session.user_id, target, &device_id, &kind, &content);
                }
            }
        }
        let destinations = outbound::queue_to_device(&mut batch, &session.user_id, &kind, remote);
        batch.commit()?;
        for destination in &destinations {
            s.outbox.wake(destination);
        }
        Ok(send_event_to_device::v3::Response::new())
    })
    .await
}
