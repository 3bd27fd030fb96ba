//! The server-server API served on the TLS listener: keys, transactions,
//! joins, knocks, events and state of rooms, directory, profiles, device
//! keys and the key notary.
//! Handlers are thin; the logic is in `service::{inbound, remote_join, rooms}`.

use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::federation::{
        authenticated_media as media,
        backfill::get_backfill,
        device::get_devices,
        directory::{get_public_rooms, get_public_rooms_filtered},
        discovery::{get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version},
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
        keys::{claim_keys, get_keys},
        membership::{
            create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
            prepare_knock_event, prepare_leave_event,
        },
        openid::get_openid_userinfo,
        query::{get_profile_information, get_room_information},
        transactions::send_transaction_message,
    },
    serde::Raw,
};

use crate::{
    api::{AppState, Routes, Ruma, blocking},
    error::{Error, Result},
    service::{acl, directory, history, inbound, remote_invite, remote_join, remote_knock, spaces, tokens},
};

/// Servers one notary request may ask about.
const MAX_NOTARY_SERVERS: usize = 50;

pub fn register(r: &mut Routes) {
    r.ruma::<get_server_keys::v2::Request, _, _>(server_keys)
        // The `{keyId}` form left the spec (MSC3938) but Synapse still serves
        // it and older servers and tools still ask it: the same document.
        .raw("/_matrix/key/v2/server/{key_id}", http::Method::GET, axum::routing::get(server_keys_by_id))
        .ruma::<get_remote_server_keys::v2::Request, _, _>(notary_query)
        // The `{keyId}` form (removed with the other in MSC3938): every key of the server.
        .raw("/_matrix/key/v2/query/{server_name}/{key_id}", http::Method::GET, axum::routing::get(notary_query_by_id))
        .ruma::<get_remote_server_keys_batch::v2::Request, _, _>(notary_batch)
        .ruma::<get_server_version::v1::Request, _, _>(version)
        .ruma::<get_profile_information::v1::Request, _, _>(profile)
        .ruma::<get_room_information::v1::Request, _, _>(room_by_alias)
        .ruma::<get_public_rooms::v1::Request, _, _>(public_rooms)
        .ruma::<get_public_rooms_filtered::v1::Request, _, _>(public_rooms_filtered)
        .ruma::<get_keys::v1::Request, _, _>(user_keys)
        .ruma::<claim_keys::v1::Request, _, _>(claim_keys)
        .ruma::<get_devices::v1::Request, _, _>(user_devices)
        .ruma::<send_transaction_message::v1::Request, _, _>(send_transaction)
        .ruma::<prepare_join_event::v1::Request, _, _>(make_join)
        .ruma::<create_join_event::v2::Request, _, _>(send_join)
        .ruma::<get_event::v1::Request, _, _>(event)
        .ruma::<get_room_state_ids::v1::Request, _, _>(state_ids)
        .ruma::<get_room_state::v1::Request, _, _>(room_state)
        .ruma::<ruma::api::federation::authorization::get_event_authorization::v1::Request, _, _>(event_auth)
        .ruma::<get_missing_events::v1::Request, _, _>(missing_events)
        .ruma::<get_backfill::v1::Request, _, _>(backfill)
        .ruma::<create_invite::v2::Request, _, _>(invite)
        .ruma::<prepare_leave_event::v1::Request, _, _>(make_leave)
        .ruma::<create_leave_event::v2::Request, _, _>(send_leave)
        // The v1 forms, deprecated but still sent by older servers and
        // Matrix's test suite: v2's answer wrapped as `[200, answer]`.
        .raw(
            "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
            http::Method::PUT,
            axum::routing::put(send_join_v1),
        )
        .raw(
            "/_matrix/federation/v1/send_leave/{room_id}/{event_id}",
            http::Method::PUT,
            axum::routing::put(send_leave_v1),
        )
        .raw("/_matrix/federation/v1/invite/{room_id}/{event_id}", http::Method::PUT, axum::routing::put(invite_v1))
        .ruma::<prepare_knock_event::v1::Request, _, _>(make_knock)
        .ruma::<create_knock_event::v1::Request, _, _>(send_knock)
        .ruma::<get_openid_userinfo::v1::Request, _, _>(openid_userinfo)
        .ruma::<ruma::api::federation::space::get_hierarchy::v1::Request, _, _>(hierarchy)
        .ruma::<media::get_content::v1::Request, _, _>(media_download)
        .ruma::<media::get_content_thumbnail::v1::Request, _, _>(media_thumbnail);
}

/// Our users' media for another server's users (authenticated media).
async fn media_download(
    state: AppState,
    req: Ruma<media::get_content::v1::Request>,
) -> Result<media::get_content::v1::Response> {
    let content = blocking(&state, move |s| media_file(s, &req.body.media_id, false)).await?;
    Ok(media::get_content::v1::Response::new(media::ContentMetadata::new(), content))
}

async fn media_thumbnail(
    state: AppState,
    req: Ruma<media::get_content_thumbnail::v1::Request>,
) -> Result<media::get_content_thumbnail::v1::Response> {
    let content = blocking(&state, move |s| media_file(s, &req.body.media_id, true)).await?;
    Ok(media::get_content_thumbnail::v1::Response::new(media::ContentMetadata::new(), content))
}

/// A file of ours; a thumbnail is the original image (porch does not scale
/// images), other media has none.
fn media_file(s: &crate::service::Services, media_id: &str, thumbnail: bool) -> Result<media::FileOrLocation> {
    let (record, bytes) = s.media.get(s.server_name(), media_id)?;
    if thumbnail && !record.content_type.starts_with("image/") {
        return Err(Error::not_found("This media is not an image and has no thumbnail."));
    }
    let disposition = crate::api::client::media::disposition(&record, None);
    Ok(media::FileOrLocation::File(media::Content::new(bytes, record.content_type, disposition)))
}

async fn invite(state: AppState, req: Ruma<create_invite::v2::Request>) -> Result<create_invite::v2::Response> {
    let event = remote_invite::receive_invite(&state, req.origin(), &req.body).await?;
    Ok(create_invite::v2::Response::new(event))
}

type PathArgs = axum::extract::Path<Vec<String>>;

/// A response's JSON body, as `[200, body]` (the v1 membership endpoints' shape).
fn v1_answer(response: impl ruma::api::OutgoingResponseExt) -> Result<axum::Json<serde_json::Value>> {
    Ok(axum::Json(serde_json::json!([200, crate::api::response_json(response)?])))
}

async fn send_join_v1(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::Path(args): PathArgs,
    req: axum::extract::Request,
) -> Result<axum::Json<serde_json::Value>> {
    let req = Ruma::<create_join_event::v2::Request>::parse(req, args, &state).await?;
    v1_answer(send_join(state, req).await?)
}

async fn send_leave_v1(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::Path(args): PathArgs,
    req: axum::extract::Request,
) -> Result<axum::Json<serde_json::Value>> {
    let req = Ruma::<create_leave_event::v2::Request>::parse(req, args, &state).await?;
    v1_answer(send_leave(state, req).await?)
}

/// v1 invites carry the event alone, and predate room versions: the room
/// is taken to be of version 1, as the spec says.
async fn invite_v1(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::Path(args): PathArgs,
    req: axum::extract::Request,
) -> Result<axum::Json<serde_json::Value>> {
    let (origin, mut event) = crate::api::signed_federation_body(req, &state).await?;
    let [room_id, event_id] = args.as_slice() else { return Err(Error::invalid_param("No room or event id.")) };
    let room_id = ruma::OwnedRoomId::try_from(room_id.as_str()).map_err(|_| Error::invalid_param("Not a room id."))?;
    let event_id =
        ruma::OwnedEventId::try_from(event_id.as_str()).map_err(|_| Error::invalid_param("Not an event id."))?;
    let stripped: Vec<Raw<ruma::events::AnyStrippedStateEvent>> = event
        .get("unsigned")
        .and_then(|u| u.get("invite_room_state"))
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    if let Some(unsigned) = event.get_mut("unsigned").and_then(|u| u.as_object_mut()) {
        unsigned.remove("invite_room_state");
    }
    let event = serde_json::value::to_raw_value(&event)?;
    let v2 = create_invite::v2::Request::new(
        room_id,
        event_id,
        ruma::RoomVersionId::V1,
        event,
        stripped.into_iter().map(Into::into).collect(),
    );
    let signed = remote_invite::receive_invite(&state, &origin, &v2).await?;
    Ok(axum::Json(serde_json::json!([200, { "event": signed }])))
}

async fn make_leave(
    state: AppState,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> Result<prepare_leave_event::v1::Response> {
    blocking(&state, move |s| {
        let (version, template) = remote_invite::make_leave(s, req.origin(), &req.body.room_id, &req.body.user_id)?;
        Ok(prepare_leave_event::v1::Response::new(Some(version), serde_json::value::to_raw_value(&template)?))
    })
    .await
}

async fn send_leave(
    state: AppState,
    req: Ruma<create_leave_event::v2::Request>,
) -> Result<create_leave_event::v2::Response> {
    let body = &req.body;
    remote_invite::send_leave(&state, req.origin(), &body.room_id, &body.event_id, &body.pdu).await?;
    Ok(create_leave_event::v2::Response::new())
}

async fn make_knock(
    state: AppState,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> Result<prepare_knock_event::v1::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let (version, template) = remote_knock::make_knock(s, req.origin(), &body.room_id, &body.user_id, &body.ver)?;
        Ok(prepare_knock_event::v1::Response::new(version, serde_json::value::to_raw_value(&template)?))
    })
    .await
}

async fn send_knock(
    state: AppState,
    req: Ruma<create_knock_event::v1::Request>,
) -> Result<create_knock_event::v1::Response> {
    let body = &req.body;
    let room_state = remote_knock::send_knock(&state, req.origin(), &body.room_id, &body.event_id, &body.pdu).await?;
    Ok(create_knock_event::v1::Response::new(room_state))
}

/// Whose OpenID token this is, for a third party checking a user's identity.
/// Also served on the client listener, as Synapse does: integration
/// managers and widgets ask whichever address they were given.
pub async fn openid_userinfo(
    state: AppState,
    req: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<get_openid_userinfo::v1::Response> {
    blocking(&state, move |s| {
        Ok(get_openid_userinfo::v1::Response::new(tokens::openid_user(s, &req.body.access_token)?))
    })
    .await
}

/// `/send`: PDUs and EDUs from another server.
async fn send_transaction(
    state: AppState,
    req: Ruma<send_transaction_message::v1::Request>,
) -> Result<send_transaction_message::v1::Response> {
    let origin = req.origin();
    if req.body.origin != *origin {
        return Err(Error::forbidden("The transaction's origin is not the server that signed it."));
    }
    state.federation_limiter.check(origin.to_owned()).map_err(Error::limit_exceeded)?;
    if req.body.pdus.len() > 50 || req.body.edus.len() > 100 {
        return Err(Error::bad_json("A transaction carries at most 50 PDUs and 100 EDUs."));
    }
    let edus: Vec<serde_json::Value> =
        req.body.edus.iter().filter_map(|edu| serde_json::from_str(edu.json().get()).ok()).collect();
    // In its own task: a sender that gives up waiting (a long state
    // resolution) does not cancel the work, and its retry of the same
    // transaction gets the answer when it is done.
    let (origin, txn_id, pdus) = (origin.to_owned(), req.body.transaction_id.to_string(), req.body.pdus.clone());
    let task = tokio::spawn(async move { inbound::transaction(&state, &origin, &txn_id, &pdus, &edus).await });
    let results = task.await.map_err(Error::internal)?;
    Ok(send_transaction_message::v1::Response::new(results))
}

async fn make_join(
    state: AppState,
    req: Ruma<prepare_join_event::v1::Request>,
) -> Result<prepare_join_event::v1::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let (version, template) = remote_join::make_join(s, req.origin(), &body.room_id, &body.user_id, &body.ver)?;
        let event = serde_json::value::to_raw_value(&template)?;
        let mut response = prepare_join_event::v1::Response::new(event);
        response.room_version = Some(version);
        Ok(response)
    })
    .await
}

async fn send_join(
    state: AppState,
    req: Ruma<create_join_event::v2::Request>,
) -> Result<create_join_event::v2::Response> {
    let body = &req.body;
    let room_state = remote_join::send_join(&state, req.origin(), &body.room_id, &body.event_id, &body.pdu).await?;
    Ok(create_join_event::v2::Response::new(room_state))
}

fn now() -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch::now()
}

/// One event, for a server with a user in its room.
async fn event(state: AppState, req: Ruma<get_event::v1::Request>) -> Result<get_event::v1::Response> {
    blocking(&state, move |s| {
        let (pdu, meta) = s.rooms.get_pdu(&req.body.event_id)?.ok_or_else(|| Error::not_found("No such event."))?;
        acl::check_participant(s, &meta.room_id, req.origin())?;
        let json = history::for_server(s, req.origin(), &pdu, &meta)?;
        Ok(get_event::v1::Response::new(s.settings.server_name.clone(), now(), json))
    })
    .await
}

/// The state before an event (ids, or events), with its auth chain.
fn state_at_event(
    s: &crate::service::Services,
    origin: &ruma::ServerName,
    room_id: &ruma::RoomId,
    event_id: &ruma::EventId,
) -> Result<(Vec<ruma::OwnedEventId>, Vec<ruma::OwnedEventId>)> {
    acl::check_participant(s, room_id, origin)?;
    let (_, meta) = s.rooms.get_pdu(event_id)?.ok_or_else(|| Error::not_found("No such event."))?;
    if meta.room_id != room_id || !meta.has_state() || meta.rejected {
        return Err(Error::not_found("This server does not know the state at that event."));
    }
    let state = s.rooms.state_at(meta.state_before)?;
    let ids: Vec<ruma::OwnedEventId> = s.rooms.state_event_ids(&state)?;
    let chain = s.rooms.auth_chain(ids.iter().cloned())?;
    let in_state: std::collections::HashSet<&ruma::OwnedEventId> = ids.iter().collect();
    let chain: Vec<ruma::OwnedEventId> = chain.into_iter().filter(|id| !in_state.contains(id)).collect();
    Ok((ids, chain))
}

async fn state_ids(
    state: AppState,
    req: Ruma<get_room_state_ids::v1::Request>,
) -> Result<get_room_state_ids::v1::Response> {
    blocking(&state, move |s| {
        let (ids, chain) = state_at_event(s, req.origin(), &req.body.room_id, &req.body.event_id)?;
        Ok(get_room_state_ids::v1::Response::new(chain, ids))
    })
    .await
}

async fn room_state(state: AppState, req: Ruma<get_room_state::v1::Request>) -> Result<get_room_state::v1::Response> {
    blocking(&state, move |s| {
        let (ids, chain) = state_at_event(s, req.origin(), &req.body.room_id, &req.body.event_id)?;
        let load = |ids: Vec<ruma::OwnedEventId>| -> Result<Vec<Box<serde_json::value::RawValue>>> {
            let mut out = Vec::new();
            for id in ids {
                if let Some((pdu, _)) = s.rooms.get_pdu(&id)? {
                    out.push(pdu.json.clone());
                }
            }
            Ok(out)
        };
        Ok(get_room_state::v1::Response::new(load(chain)?, load(ids)?))
    })
    .await
}

/// `/event_auth`: an event's whole auth chain, for a server in the room.
async fn event_auth(
    state: AppState,
    req: Ruma<ruma::api::federation::authorization::get_event_authorization::v1::Request>,
) -> Result<ruma::api::federation::authorization::get_event_authorization::v1::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        acl::check_participant(s, &body.room_id, req.origin())?;
        let (pdu, _) = s.rooms.get_pdu(&body.event_id)?.ok_or_else(|| Error::not_found("No such event."))?;
        if pdu.room_id != body.room_id {
            return Err(Error::not_found("No such event in this room."));
        }
        let mut chain = Vec::new();
        for id in s.rooms.auth_chain(pdu.auth_events.iter().cloned())? {
            if let Some((event, _)) = s.rooms.get_pdu(&id)? {
                chain.push(event.json.clone());
            }
        }
        Ok(ruma::api::federation::authorization::get_event_authorization::v1::Response::new(chain))
    })
    .await
}

async fn missing_events(
    state: AppState,
    req: Ruma<get_missing_events::v1::Request>,
) -> Result<get_missing_events::v1::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        acl::check_participant(s, &body.room_id, req.origin())?;
        let limit = u64::from(body.limit).min(100) as usize;
        let events = s.rooms.missing_events(&body.room_id, &body.earliest_events, &body.latest_events, limit)?;
        let events = events.into_iter().filter(|(p, _)| p.depth >= body.min_depth).collect();
        Ok(get_missing_events::v1::Response::new(as_server_sees(s, req.origin(), events)?))
    })
    .await
}

async fn backfill(state: AppState, req: Ruma<get_backfill::v1::Request>) -> Result<get_backfill::v1::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        acl::check_participant(s, &body.room_id, req.origin())?;
        let limit = u64::from(body.limit).min(100) as usize;
        let events = s.rooms.events_before(&body.room_id, &body.v, limit)?;
        Ok(get_backfill::v1::Response::new(
            s.settings.server_name.clone(),
            now(),
            as_server_sees(s, req.origin(), events)?,
        ))
    })
    .await
}

/// Events as `server` may have them (see [`history::for_server`]).
fn as_server_sees(
    s: &crate::service::Services,
    server: &ruma::ServerName,
    events: Vec<(std::sync::Arc<crate::pdu::Pdu>, crate::pdu::PduMeta)>,
) -> Result<Vec<Box<serde_json::value::RawValue>>> {
    events.iter().map(|(pdu, meta)| history::for_server(s, server, pdu, meta)).collect()
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

/// One-time keys of this server's users' devices, for another server's
/// users starting encrypted sessions with them.
async fn claim_keys(state: AppState, req: Ruma<claim_keys::v1::Request>) -> Result<claim_keys::v1::Response> {
    blocking(&state, move |s| {
        let keys = s.keys.claim_many(&req.body.one_time_keys, |user| Ok(s.users.is_local(user)))?;
        Ok(claim_keys::v1::Response::new(keys))
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
    let object = state.federation.own_keys()?;
    Ok(get_server_keys::v2::Response::new(Raw::from_json(serde_json::value::to_raw_value(&object)?)))
}

async fn server_keys_by_id(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<axum::Json<serde_json::Value>> {
    Ok(axum::Json(serde_json::to_value(state.federation.own_keys()?)?))
}

/// The key notary: another server's keys as that server signed them, with
/// our signature added (ours for our own name).
async fn notary_query(
    state: AppState,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response> {
    state.key_query_limiter.check(req.ip).map_err(Error::limit_exceeded)?;
    let valid_until = u64::from(req.body.minimum_valid_until_ts.get());
    // A server we cannot vouch for gets an empty answer: nothing of what
    // was found on the way goes back to the caller.
    let keys = state.federation.notarised_keys(&req.body.server_name, valid_until).await.ok().flatten();
    let keys = keys.map(|k| serde_json::value::to_raw_value(&k).map(Raw::from_json)).transpose()?;
    Ok(get_remote_server_keys::v2::Response::new(keys.into_iter().collect()))
}

async fn notary_query_by_id(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::Path(mut args): PathArgs,
    req: axum::extract::Request,
) -> Result<crate::api::RumaResponse<get_remote_server_keys::v2::Response>> {
    args.truncate(1);
    let req = Ruma::<get_remote_server_keys::v2::Request>::parse(req, args, &state).await?;
    notary_query(state, req).await.map(crate::api::RumaResponse)
}

async fn notary_batch(
    state: AppState,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response> {
    if req.body.server_keys.len() > MAX_NOTARY_SERVERS {
        return Err(Error::bad_json(format!("Ask for at most {MAX_NOTARY_SERVERS} servers at once.")));
    }
    // Each server asked about takes a token: a batch is no way around the throttle.
    for _ in 0..req.body.server_keys.len().max(1) {
        state.key_query_limiter.check(req.ip).map_err(Error::limit_exceeded)?;
    }
    let asks = req.body.server_keys.iter().map(|(server, criteria)| {
        let valid_until =
            criteria.values().filter_map(|c| c.minimum_valid_until_ts).map(|ts| u64::from(ts.get())).max().unwrap_or(0);
        let state = state.clone();
        async move { state.federation.notarised_keys(server, valid_until).await }
    });
    let mut server_keys = Vec::new();
    for keys in futures_util::future::join_all(asks).await {
        // A server we cannot vouch for is left out, as the spec asks.
        if let Ok(Some(keys)) = keys {
            server_keys.push(Raw::from_json(serde_json::value::to_raw_value(&keys)?));
        }
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(server_keys))
}

async fn hierarchy(
    state: AppState,
    req: Ruma<ruma::api::federation::space::get_hierarchy::v1::Request>,
) -> Result<ruma::api::federation::space::get_hierarchy::v1::Response> {
    blocking(&state, move |s| {
        acl::check_server(s, &req.body.room_id, req.origin())?;
        spaces::for_server(s, req.origin(), &req.body.room_id, req.body.suggested_only)
    })
    .await
}
