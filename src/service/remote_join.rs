//! Joins across servers, both ways: other servers' users joining our rooms
//! (`make_join` / `send_join`, restricted joins vouched for by a local
//! member), and our users joining rooms held by other servers.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomId, RoomVersionId, ServerName, UserId,
    api::federation::membership::{create_join_event, prepare_join_event},
    events::room::member::MembershipState,
};
use serde_json::{Value, json, value::RawValue as RawJsonValue};

use crate::{
    error::{Error, Result},
    pdu::{Pdu, StateMap},
    service::{Services, blocking, federation_v1, inbound, membership, rooms::Placed},
};

/// Room versions porch can join: those it can create.
pub use crate::config::SUPPORTED_ROOM_VERSIONS as SUPPORTED_VERSIONS;

fn error(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(http::StatusCode::BAD_REQUEST, code, message.into())
}

/// The join template for a user of `origin` (`make_join`).
pub fn make_join(
    s: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user_id: &UserId,
    versions: &[RoomVersionId],
) -> Result<(RoomVersionId, CanonicalJsonObject)> {
    if user_id.server_name() != origin {
        return Err(Error::forbidden("A server may only make joins for its own users."));
    }
    let record = s.rooms.room(room_id)?.ok_or_else(|| Error::not_found("This room is not known to this server."))?;
    if !s.rooms.joined_members(room_id)?.iter().any(|m| s.users.is_local(m)) {
        return Err(Error::not_found("This server is no longer in the room."));
    }
    if !versions.contains(&record.version) {
        return Err(error(
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("The room has version {}, which your server does not support.", record.version),
        )
        .with("room_version", serde_json::Value::String(record.version.to_string())));
    }
    crate::service::acl::check_server(s, room_id, origin)?;
    let current = s.rooms.membership(room_id, user_id)?;
    if current == Some(MembershipState::Ban) {
        return Err(Error::forbidden("This user is banned from the room."));
    }
    let state = s.rooms.state_at(record.current_state)?;
    let mut content = serde_json::Map::new();
    content.insert("membership".into(), json!("join"));
    let rule = membership::join_rule(s, &state)?;
    let invited = matches!(current, Some(MembershipState::Invite | MembershipState::Join));
    if matches!(rule.as_str(), "restricted" | "knock_restricted") && !invited {
        if !knows_an_allowed_room(s, &state)? {
            return Err(error(
                "M_UNABLE_TO_AUTHORISE_JOIN",
                "This server is in none of the rooms the join rule allows, so it cannot check the user.",
            ));
        }
        let authoriser = membership::restricted_authoriser(s, room_id, &record.version, &state, user_id)?;
        content.insert("join_authorised_via_users_server".into(), json!(authoriser));
    } else if matches!(rule.as_str(), "invite" | "knock") && !invited {
        return Err(Error::forbidden("This room is invite-only and the user is not invited."));
    }
    s.rooms.membership_template(room_id, user_id, Value::Object(content))
}

fn knows_an_allowed_room(s: &Services, state: &crate::service::rooms::State) -> Result<bool> {
    let Some(rules) = s.rooms.state_content(state, "m.room.join_rules", "")? else { return Ok(false) };
    for entry in rules.get("allow").and_then(Value::as_array).into_iter().flatten() {
        if let Some(Ok(room)) = entry.get("room_id").and_then(Value::as_str).map(OwnedRoomId::try_from)
            && s.rooms.exists(&room)?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Take a remote user's signed join (`send_join` v2): verify, co-sign a
/// restricted join we vouched for, append, send on to the room's other
/// servers, and answer with the state before it and its auth chain.
pub async fn send_join(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &OwnedEventId,
    raw: &RawJsonValue,
) -> Result<create_join_event::v2::RoomState> {
    let record = {
        let room_id = room_id.to_owned();
        blocking(s, move |s| s.rooms.room(&room_id)).await?
    }
    .ok_or_else(|| Error::not_found("This room is not known to this server."))?;
    let version = record.version.clone();
    let mut object: CanonicalJsonObject =
        serde_json::from_str(raw.get()).map_err(|_| Error::bad_json("The join event is not canonical JSON."))?;
    // A restricted join names the local member who vouches for it; our
    // signature is then one the event needs, so it is added before checking.
    let authoriser = match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => match content.get("join_authorised_via_users_server") {
            Some(CanonicalJsonValue::String(user)) => ruma::OwnedUserId::try_from(user.as_str()).ok(),
            _ => None,
        },
        _ => None,
    };
    if let Some(authoriser) = &authoriser
        && authoriser.server_name() == s.server_name()
    {
        let rules = crate::service::rooms::Rooms::rules(&version)?;
        ruma::signatures::hash_and_sign_event(
            s.server_name().as_str(),
            &s.signing.key_pair,
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| Error::bad_json(format!("The join cannot be co-signed: {e}")))?;
    }
    let pdu = inbound::verified_pdu(s, room_id, &version, object).await?;
    if pdu.event_id != *event_id {
        return Err(Error::bad_json("The event id in the path does not match the event."));
    }
    let content = pdu.content_value();
    if pdu.kind != ruma::events::TimelineEventType::RoomMember
        || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        || content.get("membership").and_then(Value::as_str) != Some("join")
    {
        return Err(Error::bad_json("This is not a join event of its sender."));
    }
    if pdu.sender.server_name() != origin {
        return Err(Error::forbidden("A server may only send joins of its own users."));
    }
    {
        let (room_id, origin) = (room_id.to_owned(), origin.to_owned());
        blocking(s, move |s| crate::service::acl::check_server(s, &room_id, &origin)).await?;
    }
    inbound::fetch_auth_events(s, origin, room_id, &version, std::slice::from_ref(&pdu)).await?;
    let (room_id, pdu2) = (room_id.to_owned(), pdu.clone());
    let state = blocking(s, move |s| {
        let none = HashMap::new();
        let auth_state = s
            .rooms
            .auth_state(&version, &pdu2, &none)?
            .map_err(|missing| Error::forbidden(format!("The join's auth event {missing} is unknown here.")))?;
        s.rooms
            .check_auth(&version, &pdu2, &auth_state, &none)
            .map_err(|why| Error::forbidden(format!("The join is not allowed: {why}")))?;
        let state = s
            .rooms
            .state_before_event(&version, &pdu2.prev_events)?
            .ok_or_else(|| Error::bad_json("The join builds on events this server does not know."))?;
        s.rooms
            .check_auth(&version, &pdu2, &state, &none)
            .map_err(|why| Error::forbidden(format!("The join is not allowed: {why}")))?;
        match s.rooms.append_remote(&room_id, pdu2.clone(), state.clone(), true)? {
            Placed::SoftFailed => return Err(Error::forbidden("The join is not allowed by the room's current state.")),
            Placed::Timeline(_) | Placed::Known => {}
        }
        Ok(state)
    })
    .await?;
    let pdu3 = pdu.clone();
    blocking(s, move |s| {
        let mut state_pdus = Vec::new();
        let state_ids = s.rooms.state_event_ids(&state)?;
        for id in &state_ids {
            if let Some((event, _)) = s.rooms.get_pdu(id)? {
                state_pdus.push(event.json.clone());
            }
        }
        let chain = s.rooms.auth_chain(state_ids.into_iter().chain(pdu3.auth_events.iter().cloned()))?;
        let mut auth_chain = Vec::new();
        for id in chain {
            if let Some((event, _)) = s.rooms.get_pdu(&id)? {
                auth_chain.push(event.json.clone());
            }
        }
        let mut room_state = create_join_event::v2::RoomState::new();
        room_state.state = state_pdus;
        room_state.auth_chain = auth_chain;
        room_state.event = Some(pdu3.json.clone());
        let mut servers: BTreeSet<String> =
            s.rooms.remote_servers(&pdu3.room_id)?.iter().map(|s| s.to_string()).collect();
        servers.insert(s.server_name().to_string());
        room_state.servers_in_room = Some(servers.into_iter().collect());
        Ok(room_state)
    })
    .await
}

/// Whether joining this room needs another server: we do not hold it, or
/// none of our users is in it any more (our copy of its state is stale).
pub fn needs_remote_join(s: &Services, room_id: &RoomId) -> Result<bool> {
    if !s.rooms.exists(room_id)? {
        return Ok(true);
    }
    let local_member = s.rooms.joined_members(room_id)?.iter().any(|m| s.users.is_local(m));
    Ok(!local_member && !s.rooms.remote_servers(room_id)?.is_empty())
}

/// Join a room held by other servers, trying `servers` in order.
pub async fn join(
    s: &Arc<Services>,
    user_id: &UserId,
    room_id: &RoomId,
    servers: Vec<OwnedServerName>,
    reason: Option<String>,
) -> Result<OwnedEventId> {
    {
        let (user_id, room_id) = (user_id.to_owned(), room_id.to_owned());
        blocking(s, move |s| crate::policy::check_user(s, &user_id, crate::policy::Action::Join { room_id: &room_id }))
            .await?;
    }
    let mut candidates: Vec<OwnedServerName> = Vec::new();
    let known = {
        let (room_id, user_id) = (room_id.to_owned(), user_id.to_owned());
        blocking(s, move |s| {
            // The inviting server first, when the user holds an invite.
            let mut known: Vec<OwnedServerName> = crate::service::remote_invite::pending_invite(s, &user_id, &room_id)?
                .map(|(_, invite)| invite.servers)
                .unwrap_or_default();
            known.extend(s.rooms.remote_servers(&room_id)?.iter().cloned());
            Ok(known)
        })
        .await?
    };
    for server in known.into_iter().chain(servers).chain(room_id.server_name().map(ToOwned::to_owned)) {
        if server != s.server_name() && !candidates.contains(&server) {
            candidates.push(server);
        }
    }
    if candidates.is_empty() {
        return Err(Error::not_found("This room is not known here, and no server to join it through was given."));
    }
    let mut last = None;
    let invite = {
        let (room_id, user_id) = (room_id.to_owned(), user_id.to_owned());
        blocking(s, move |s| crate::service::remote_invite::pending_invite(s, &user_id, &room_id)).await?
    };
    for server in candidates {
        match join_via(s, &server, user_id, room_id, reason.as_deref()).await {
            Ok(event_id) => {
                let room_id = room_id.to_owned();
                blocking(s, move |s| {
                    // While none of our users was in the room, nobody told
                    // us of its members' devices.
                    let members = s.rooms.joined_members(&room_id)?;
                    s.keys.forget_remote(members.iter().filter(|m| !s.users.is_local(m)).map(|m| m.as_ref()));
                    // The invite is answered: its stripped state is no longer needed.
                    if let Some((invite_id, _)) = invite {
                        // A write of its own, as `Db::delete` makes it.
                        let mut batch = s.db.batch();
                        crate::service::remote_invite::delete_pending(&mut batch, &invite_id);
                        batch.commit()?;
                    }
                    Ok(())
                })
                .await?;
                return Ok(event_id);
            }
            Err(err) => {
                tracing::info!(%room_id, %server, "remote join failed: {}", err.message);
                last = Some(err);
            }
        }
    }
    Err(last.expect("at least one server was tried"))
}

/// Fill a resident server's membership template with our content and
/// time, then hash and sign it; returns its event id and JSON.
pub fn sign_template(
    s: &Services,
    object: &mut CanonicalJsonObject,
    content: serde_json::Map<String, Value>,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<(OwnedEventId, Box<RawJsonValue>)> {
    let content = crate::pdu::to_canonical(Value::Object(content)).map_err(Error::bad_json)?;
    object.insert("content".into(), CanonicalJsonValue::Object(content));
    object
        .insert("origin_server_ts".into(), CanonicalJsonValue::Integer(MilliSecondsSinceUnixEpoch::now().get().into()));
    object.insert("origin".into(), CanonicalJsonValue::String(s.server_name().to_string()));
    for field in ["signatures", "hashes"] {
        object.remove(field);
    }
    crate::pdu::assign_event_id(object, rules, s.server_name());
    ruma::signatures::hash_and_sign_event(s.server_name().as_str(), &s.signing.key_pair, object, &rules.redaction)
        .map_err(|e| Error::internal(format!("signing our membership event: {e}")))?;
    let event_id = crate::pdu::event_id_of(object, rules).map_err(Error::internal)?;
    Ok((event_id, RawJsonValue::from_string(serde_json::to_string(object)?)?))
}

async fn join_via(
    s: &Arc<Services>,
    server: &ServerName,
    user_id: &UserId,
    room_id: &RoomId,
    reason: Option<&str>,
) -> Result<OwnedEventId> {
    let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
    request.ver = SUPPORTED_VERSIONS.to_vec();
    let template = s.federation.send(server, request).await?;
    let version = template.room_version.unwrap_or(RoomVersionId::V1);
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(error("M_INCOMPATIBLE_ROOM_VERSION", format!("porch cannot join rooms of version {version}.")));
    }
    let rules = crate::service::rooms::Rooms::rules(&version)?;
    let mut object: CanonicalJsonObject = serde_json::from_str(template.event.get())
        .map_err(|_| Error::bad_json(format!("{server} sent a join template that is not canonical JSON")))?;
    let sender_ok = object.get("sender").and_then(|v| v.as_str()) == Some(user_id.as_str())
        && object.get("state_key").and_then(|v| v.as_str()) == Some(user_id.as_str());
    if !sender_ok {
        return Err(Error::forbidden(format!("{server} sent a join template for another user")));
    }
    // Our member content (profile, guest marker), keeping what the resident
    // server added (the authorising user of a restricted join).
    let mut content = {
        let (user_id, reason) = (user_id.to_owned(), reason.map(str::to_owned));
        blocking(s, move |s| membership::member_content(s, &user_id, MembershipState::Join, reason.as_deref())).await?
    };
    if let Some(CanonicalJsonValue::Object(offered)) = object.get("content")
        && let Some(CanonicalJsonValue::String(authoriser)) = offered.get("join_authorised_via_users_server")
    {
        content.insert("join_authorised_via_users_server".into(), json!(authoriser));
    }
    let (event_id, raw) = sign_template(s, &mut object, content, &rules)?;
    let request = create_join_event::v2::Request::new(room_id.to_owned(), event_id.clone(), raw.clone());
    let response = match s.federation.send(server, request).await {
        Ok(response) => response.room_state,
        Err(err) if federation_v1::lacks_v2(&err) => {
            let state = federation_v1::send_join(&s.federation, server, room_id, &event_id, &raw).await?;
            serde_json::from_str::<create_join_event::v2::RoomState>(state.get())
                .map_err(|_| Error::bad_json(format!("{server} answered its v1 send_join with no room state")))?
        }
        Err(err) => return Err(err),
    };

    // The join as the resident server signed it (restricted joins), else ours.
    let join_object: CanonicalJsonObject = match &response.event {
        Some(event) => serde_json::from_str(event.get()).map_err(|_| Error::bad_json("bad join event"))?,
        None => object,
    };
    let join = inbound::verified_pdu(s, room_id, &version, join_object).await?;
    if join.event_id != event_id {
        return Err(Error::forbidden(format!("{server} answered with another join event")));
    }
    if response.state.len() + response.auth_chain.len() > 200_000 {
        return Err(Error::forbidden(format!("{server} sent more state than porch accepts")));
    }
    let mut state_ids = Vec::new();
    let mut events: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
    for (raw, is_state) in
        response.state.iter().map(|r| (r, true)).chain(response.auth_chain.iter().map(|r| (r, false)))
    {
        let Ok(object) = serde_json::from_str::<CanonicalJsonObject>(raw.get()) else { continue };
        match inbound::verified_pdu(s, room_id, &version, object).await {
            Ok(pdu) => {
                if is_state {
                    state_ids.push(pdu.event_id.clone());
                }
                events.insert(pdu.event_id.clone(), pdu);
            }
            Err(err) => tracing::info!(%room_id, %server, "dropping a state event from send_join: {}", err.message),
        }
    }
    let room_id = room_id.to_owned();
    let server = server.to_owned();
    blocking(s, move |s| {
        // Each event must pass the auth rules against its own auth events.
        let mut order: Vec<Arc<Pdu>> = events.values().cloned().collect();
        order.sort_by_key(|p| p.depth);
        let mut accepted: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        for pdu in order {
            let Ok(auth_state) = s.rooms.auth_state(&version, &pdu, &accepted)? else { continue };
            if let Err(why) = s.rooms.check_auth(&version, &pdu, &auth_state, &accepted) {
                tracing::info!(%room_id, %server, event_id = %pdu.event_id, "dropping unauthorised state: {why}");
                continue;
            }
            accepted.insert(pdu.event_id.clone(), pdu);
        }
        let mut state = StateMap::new();
        for id in &state_ids {
            if let Some(pdu) = accepted.get(id)
                && let Some(key) = &pdu.state_key
            {
                state.insert((pdu.kind.to_string(), key.clone()), id.clone());
            }
        }
        let create = state
            .get(&("m.room.create".to_owned(), String::new()))
            .and_then(|id| accepted.get(id))
            .ok_or_else(|| Error::forbidden(format!("{server} sent room state without its create event")))?;
        let create_version =
            create.content_value().get("room_version").and_then(Value::as_str).unwrap_or("1").to_owned();
        if create_version != version.as_str() {
            return Err(Error::forbidden(format!("{server} gave a room version that differs from the room's")));
        }
        let state = s.rooms.compact(&state)?;
        s.rooms
            .check_auth(&version, &join, &state, &accepted)
            .map_err(|why| Error::forbidden(format!("The room's state does not allow this join: {why}")))?;
        let outliers: Vec<Arc<Pdu>> = accepted.into_values().collect();
        let join = s.rooms.import_joined_room(&room_id, version, state, &outliers, join)?;
        tracing::info!(%room_id, %server, user_id = %join.sender, "joined a room on another server");
        Ok(join.event_id.clone())
    })
    .await
}
