//! Invites and leaves across servers: inviting another server's user
//! (`/invite` v2, their server co-signs), taking invites for our users,
//! rejecting an invite to a room we do not hold (`make_leave` /
//! `send_leave` through the inviting server), and other servers' users
//! leaving our rooms the same way.
//!
//! Owns the `remote_invites` column family (its `data` module): pending
//! invites to, and knocks on, rooms porch does not hold. The events
//! themselves and the users' membership records go through
//! [`rooms::data`](crate::service::rooms::data).

mod data;

use std::{collections::HashMap, sync::Arc};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId,
    ServerName, UserId,
    api::federation::membership::{RawStrippedState, create_invite, create_leave_event, prepare_leave_event},
    events::{TimelineEventType, room::member::MembershipState},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json, value::RawValue as RawJsonValue};

pub(crate) use self::data::{delete_pending, pending_invite_record, put_pending};
use crate::{
    error::{Error, Result},
    pdu::{Pdu, StoredPdu},
    service::{
        Services, blocking, inbound,
        membership::{self, member_content},
        remote_join::SUPPORTED_VERSIONS,
        rooms::{MembershipRecord, NewEvent, Placed, Rooms, data as rooms_data},
        users::Session,
    },
};

/// An invite from another server to a room this server does not hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteInvite {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    /// Stripped state for the client, the invite event included.
    pub stripped: Vec<Value>,
    /// Servers to join or reject through: the inviter's first.
    pub servers: Vec<OwnedServerName>,
}

pub fn remote_invite(s: &Services, event_id: &ruma::EventId) -> Result<Option<RemoteInvite>> {
    pending_invite_record(&s.db, event_id)
}

/// The remote invite (or knock) a local user holds for a room, if any.
pub fn pending_invite(
    s: &Services,
    user_id: &UserId,
    room_id: &RoomId,
) -> Result<Option<(OwnedEventId, RemoteInvite)>> {
    let Some(record) = s.rooms.user_membership(user_id, room_id)? else { return Ok(None) };
    if !matches!(record.membership, MembershipState::Invite | MembershipState::Knock) {
        return Ok(None);
    }
    Ok(remote_invite(s, &record.event_id)?.map(|invite| (record.event_id, invite)))
}

/// A signed-in user invites anyone: the guest policy and the per-user
/// limit decide, then [`invite_user_as`]. Every client invite path goes here.
pub async fn invite_user(
    s: &Arc<Services>,
    session: &Session,
    room_id: &RoomId,
    target: &UserId,
    reason: Option<String>,
    is_direct: bool,
) -> Result<OwnedEventId> {
    let checked = session.clone();
    blocking(s, move |s| membership::may_invite(s, &checked)).await?;
    invite_user_as(s, room_id, &session.user_id, target, reason, is_direct).await
}

/// Invite anyone as `sender`: a local user by appending the invite, another
/// server's user through that server (see [`invite`]). For paths where
/// porch decided already (a createRoom's invite list, a link redeemed by a
/// user of another server).
pub(crate) async fn invite_user_as(
    s: &Arc<Services>,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    reason: Option<String>,
    is_direct: bool,
) -> Result<OwnedEventId> {
    if target.server_name() != s.settings.server_name {
        return invite(s, room_id, sender, target, reason, is_direct).await;
    }
    let (room, sender, target) = (room_id.to_owned(), sender.to_owned(), target.to_owned());
    blocking(s, move |s| membership::invite_as(s, &room, &sender, &target, reason.as_deref(), is_direct)).await
}

/// Invite another server's user: sign the invite, have their server
/// co-sign it, then append it and send it to the room's servers.
pub async fn invite(
    s: &Arc<Services>,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    reason: Option<String>,
    is_direct: bool,
) -> Result<OwnedEventId> {
    let (room, sender_owned, target_owned) = (room_id.to_owned(), sender.to_owned(), target.to_owned());
    let (version, pdu, invite_state) = blocking(s, move |s| {
        if !s.rooms.is_joined(&room, &sender_owned)? {
            return Err(Error::forbidden("You are not in this room."));
        }
        match s.rooms.membership(&room, &target_owned)? {
            Some(MembershipState::Join) => {
                return Err(Error::forbidden(format!("{target_owned} is already in the room.")));
            }
            Some(MembershipState::Ban) => {
                return Err(Error::forbidden(format!("{target_owned} is banned from the room.")));
            }
            _ => {}
        }
        crate::service::acl::check_server(s, &room, target_owned.server_name())?;
        let mut content = member_content(s, &target_owned, MembershipState::Invite, reason.as_deref())?;
        if is_direct {
            content.insert("is_direct".into(), Value::Bool(true));
        }
        let event = NewEvent::state(TimelineEventType::RoomMember, target_owned.as_str(), Value::Object(content));
        let (version, pdu) = s.rooms.prepare(&room, &sender_owned, event)?;
        Ok((version, pdu, room_state_for(s, &room, &sender_owned)?))
    })
    .await?;
    let request = create_invite::v2::Request::new(
        room_id.to_owned(),
        pdu.event_id.clone(),
        version.clone(),
        pdu.json.clone(),
        invite_state.clone(),
    );
    let signed_event = match s.federation.send(target.server_name(), request).await {
        Ok(response) => response.event,
        // The v1 form cannot name the room version: only for versions 1 and 2, as Synapse.
        Err(err)
            if crate::service::federation_v1::lacks_v2(&err)
                && matches!(version, RoomVersionId::V1 | RoomVersionId::V2) =>
        {
            invite_v1(s, target.server_name(), room_id, &pdu, &invite_state).await?
        }
        Err(err) => return Err(err),
    };
    let object: CanonicalJsonObject = serde_json::from_str(signed_event.get())
        .map_err(|_| Error::bad_json(format!("{} sent back an invite that is not JSON", target.server_name())))?;
    let signed_by_target = matches!(object.get("signatures"), Some(CanonicalJsonValue::Object(sigs)) if sigs.contains_key(target.server_name().as_str()));
    if !signed_by_target {
        return Err(Error::forbidden(format!("{} did not sign the invite", target.server_name())));
    }
    let signed = inbound::verified_pdu(s, room_id, &version, object).await?;
    if signed.event_id != pdu.event_id {
        return Err(Error::forbidden(format!("{} changed the invite", target.server_name())));
    }
    let room = room_id.to_owned();
    blocking(s, move |s| append_own(s, &room, &version, signed)).await
}

/// The invite through the deprecated v1 form: the event with the room's
/// stripped state in `unsigned.invite_room_state`; the signed event back.
async fn invite_v1(
    s: &Arc<Services>,
    server: &ServerName,
    room_id: &RoomId,
    pdu: &Pdu,
    invite_state: &[RawStrippedState],
) -> Result<Box<RawJsonValue>> {
    use crate::service::federation_v1;
    let mut event: serde_json::Map<String, Value> = serde_json::from_str(pdu.json.get())?;
    let stripped: Vec<Value> = invite_state
        .iter()
        .filter_map(|state| match state {
            RawStrippedState::Pdu(raw) => serde_json::from_str::<Value>(raw.get()).ok(),
            #[allow(deprecated)]
            RawStrippedState::Stripped(raw) => serde_json::from_str::<Value>(raw.json().get()).ok(),
            _ => None,
        })
        .map(|event| json!({ "type": event["type"], "state_key": event["state_key"], "sender": event["sender"], "content": event["content"] }))
        .collect();
    event.entry("unsigned").or_insert_with(|| json!({}))["invite_room_state"] = Value::Array(stripped);
    let event = serde_json::value::to_raw_value(&event)?;
    let answer = federation_v1::invite(&s.federation, server, room_id, &pdu.event_id, &event).await?;
    #[derive(Deserialize)]
    struct Signed {
        event: Box<RawJsonValue>,
    }
    serde_json::from_str::<Signed>(answer.get())
        .map(|signed| signed.event)
        .map_err(|_| Error::bad_json(format!("{server} answered its v1 invite without the signed event")))
}

/// What an invitee or knocker may see of the room before joining: the
/// state events clients show for it, and `user`'s member event.
pub fn room_state_for(s: &Services, room_id: &RoomId, user: &UserId) -> Result<Vec<RawStrippedState>> {
    let state = s.rooms.current_state(room_id)?;
    let mut out = Vec::new();
    for kind in crate::service::sync::STRIPPED_STATE_TYPES {
        if let Some(event) = s.rooms.state_pdu(&state, kind, "")? {
            out.push(RawStrippedState::Pdu(event.json.clone()));
        }
    }
    if let Some(event) = s.rooms.state_pdu(&state, "m.room.member", user.as_str())? {
        out.push(RawStrippedState::Pdu(event.json.clone()));
    }
    Ok(out)
}

/// Append an event we authored that came back co-signed, on the state
/// before it (the room may have moved on meanwhile), and send it out.
fn append_own(s: &Services, room_id: &RoomId, version: &RoomVersionId, pdu: Arc<Pdu>) -> Result<OwnedEventId> {
    let state = s
        .rooms
        .state_before_event(version, &pdu.prev_events)?
        .ok_or_else(|| Error::internal("the state before our own event is unknown"))?;
    s.rooms
        .check_auth(version, &pdu, &state, &HashMap::new())
        .map_err(|why| Error::forbidden(format!("This event is not allowed: {why}")))?;
    match s.rooms.append_remote(room_id, pdu.clone(), state, true)? {
        Placed::SoftFailed => Err(Error::forbidden("The room's state changed and no longer allows this.")),
        Placed::Timeline(_) | Placed::Known => Ok(pdu.event_id.clone()),
    }
}

/// Room state another server sent with an invite or a knock, stripped for clients.
pub fn stripped(state: &[RawStrippedState]) -> Vec<Value> {
    state
        .iter()
        .filter_map(|state| match state {
            RawStrippedState::Pdu(json) => {
                let event: Value = serde_json::from_str(json.get()).ok()?;
                Some(json!({
                    "type": event.get("type")?, "state_key": event.get("state_key")?,
                    "sender": event.get("sender")?, "content": event.get("content")?,
                }))
            }
            #[allow(deprecated)]
            RawStrippedState::Stripped(raw) => serde_json::from_str(raw.json().get()).ok(),
            _ => None,
        })
        .collect()
}

/// Another server invites one of our users (`/invite` v2): check, co-sign,
/// and keep the invite so the user sees it and can join or reject it.
pub async fn receive_invite(
    s: &Arc<Services>,
    origin: &ServerName,
    request: &create_invite::v2::Request,
) -> Result<Box<RawJsonValue>> {
    let version = request.room_version.clone();
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("porch does not support room version {version}."),
        ));
    }
    // A room we hold decides by its ACL whether the inviting server counts.
    let (room, server) = (request.room_id.clone(), origin.to_owned());
    crate::service::blocking(s, move |s| {
        if s.rooms.exists(&room)? { crate::service::acl::check_server(s, &room, &server) } else { Ok(()) }
    })
    .await?;
    let rules = Rooms::rules(&version)?;
    let mut object: CanonicalJsonObject =
        serde_json::from_str(request.event.get()).map_err(|_| Error::bad_json("The invite is not canonical JSON."))?;
    let pdu = inbound::verified_pdu(s, &request.room_id, &version, object.clone()).await?;
    if pdu.event_id != request.event_id {
        return Err(Error::bad_json("The event id in the path does not match the event."));
    }
    let target = pdu.state_key.as_deref().and_then(|k| ruma::OwnedUserId::try_from(k).ok());
    let is_invite = pdu.kind == TimelineEventType::RoomMember
        && pdu.content_value().get("membership").and_then(Value::as_str) == Some("invite");
    let Some(target) = target.filter(|_| is_invite) else {
        return Err(Error::bad_json("This is not an invite."));
    };
    if pdu.sender.server_name() != origin {
        return Err(Error::forbidden("A server may only send invites from its own users."));
    }
    let stripped: Vec<Value> =
        stripped(&request.invite_room_state).into_iter().chain(std::iter::once(pdu.to_stripped_state())).collect();
    ruma::signatures::hash_and_sign_event(s.server_name().as_str(), &s.signing.key_pair, &mut object, &rules.redaction)
        .map_err(|e| Error::bad_json(format!("The invite cannot be signed: {e}")))?;
    let signed = RawJsonValue::from_string(serde_json::to_string(&object)?)?;
    let mut servers = vec![origin.to_owned()];
    if let Some(server) = request.room_id.server_name().filter(|server| *server != origin) {
        servers.push(server.to_owned());
    }
    let invite = RemoteInvite { room_id: request.room_id.clone(), version, stripped, servers };
    let (room_id, event_id, stored) = (request.room_id.clone(), pdu.event_id.clone(), signed.clone());
    blocking(s, move |s| {
        let user = s.users.get(&target)?;
        if !s.users.is_local(&target) || user.as_ref().is_none_or(|u| u.deactivated) {
            return Err(Error::not_found("No such user on this server."));
        }
        // Guests are only ever in the rooms their link opened.
        if user.is_some_and(|u| u.kind.is_guest()) {
            return Err(Error::forbidden("This user is a guest and cannot be invited."));
        }
        if s.rooms.exists(&room_id)? {
            crate::service::acl::check_server(s, &room_id, pdu.sender.server_name())?;
        }
        if s.rooms.is_joined(&room_id, &target)? {
            return Err(Error::forbidden("The user is already in the room."));
        }
        let mut batch = s.db.batch();
        // `put_user_membership` wakes the user.
        let count = batch.next_count_quiet();
        let meta = crate::pdu::PduMeta::outlier(room_id.clone());
        rooms_data::put_pdu(&mut batch, &event_id, &StoredPdu { meta, pdu: stored });
        put_pending(&mut batch, &event_id, &invite);
        let record = MembershipRecord {
            membership: MembershipState::Invite,
            event_id: event_id.clone(),
            count,
            forgotten: false,
        };
        rooms_data::put_user_membership(&mut batch, &target, &room_id, &record);
        batch.commit()?;
        tracing::info!(%room_id, user_id = %target, inviter = %pdu.sender, "invited from another server");
        Ok(())
    })
    .await?;
    Ok(signed)
}

/// Reject an invite to a room this server does not hold, through the
/// inviting server. If no server answers, the invite is still dropped here.
pub async fn reject(s: &Arc<Services>, user_id: &UserId, room_id: &RoomId, reason: Option<String>) -> Result<()> {
    let pending = {
        let (user, room) = (user_id.to_owned(), room_id.to_owned());
        blocking(s, move |s| pending_invite(s, &user, &room)).await?
    };
    let Some((pending_id, invite)) = pending else { return Err(Error::forbidden("You are not in this room.")) };
    let mut left = None;
    for server in &invite.servers {
        match leave_via(s, server, user_id, room_id, &invite.version, reason.as_deref()).await {
            Ok(event_id) => {
                left = Some(event_id);
                break;
            }
            Err(err) => tracing::info!(%room_id, %server, "could not reject the invite there: {}", err.message),
        }
    }
    let (user, room, version) = (user_id.to_owned(), room_id.to_owned(), invite.version.clone());
    blocking(s, move |s| {
        let mut batch = s.db.batch();
        // `put_user_membership` wakes the user.
        let count = batch.next_count_quiet();
        let event_id = match left {
            Some(event_id) => event_id,
            None => {
                tracing::warn!(%room, user_id = %user, "no server took the rejection; dropping the invite here only");
                let invite = s.rooms.user_membership(&user, &room)?.ok_or_else(|| Error::internal("no invite"))?;
                out_of_band_leave(s, &mut batch, &user, &room, &invite.event_id, &version)?
            }
        };
        let record = MembershipRecord { membership: MembershipState::Leave, event_id, count, forgotten: false };
        rooms_data::put_user_membership(&mut batch, &user, &room, &record);
        // The stripped state is no longer shown once the invite is gone.
        delete_pending(&mut batch, &pending_id);
        batch.commit()?;
        Ok(())
    })
    .await
}

/// A leave the user's client can show when the room's server could not be
/// told (as Synapse makes one): signed here, after the invite, kept as an
/// outlier, never sent anywhere.
fn out_of_band_leave(
    s: &Services,
    batch: &mut crate::storage::Batch,
    user: &UserId,
    room: &RoomId,
    invite: &ruma::EventId,
    version: &RoomVersionId,
) -> Result<OwnedEventId> {
    let rules = crate::service::rooms::Rooms::rules(version)?;
    let invite_pdu = s.rooms.get_pdu(invite)?.map(|(pdu, _)| pdu);
    let depth = invite_pdu.as_ref().map_or(1, |pdu| u64::from(pdu.depth) + 1);
    // Versions 1 and 2 cite an event with its reference hash.
    let reference = |id: &ruma::EventId| -> Result<Value> {
        if !rules.event_format.require_event_id {
            return Ok(json!(id));
        }
        let pdu = invite_pdu.as_ref().ok_or_else(|| Error::internal("the invite is not stored"))?;
        let hash = ruma::signatures::reference_hash(&pdu.canonical_object(), &rules).map_err(Error::internal)?;
        Ok(json!([id, { "sha256": hash }]))
    };
    let object = json!({
        "type": "m.room.member",
        "state_key": user,
        "sender": user,
        "room_id": room,
        "prev_events": [reference(invite)?],
        "auth_events": [reference(invite)?],
        "depth": depth,
    });
    let mut object = crate::pdu::to_canonical(object).map_err(Error::internal)?;
    let content = serde_json::Map::from_iter([("membership".to_owned(), json!("leave"))]);
    let (event_id, json) = crate::service::remote_join::sign_template(s, &mut object, content, &rules)?;
    let meta = crate::pdu::PduMeta::outlier(room.to_owned());
    rooms_data::put_pdu(batch, &event_id, &StoredPdu { meta, pdu: json });
    Ok(event_id)
}

/// The room's server withdrew a user's pending invite or refused their
/// knock (`pdu`, a leave or ban verified by the caller): the user leaves.
pub fn withdrawn(s: &Services, room_id: &RoomId, pdu: &Pdu) -> Result<()> {
    let Some(user) = pdu.state_key.as_deref().and_then(|k| ruma::OwnedUserId::try_from(k).ok()) else { return Ok(()) };
    let Some((pending_id, _)) = pending_invite(s, &user, room_id)? else { return Ok(()) };
    let membership = pdu.content_value().get("membership").and_then(Value::as_str).map(MembershipState::from);
    let mut batch = s.db.batch();
    // `put_user_membership` wakes the user.
    let count = batch.next_count_quiet();
    let meta = crate::pdu::PduMeta::outlier(room_id.to_owned());
    rooms_data::put_pdu(&mut batch, &pdu.event_id, &StoredPdu { meta, pdu: pdu.json.clone() });
    delete_pending(&mut batch, &pending_id);
    let record = MembershipRecord {
        membership: membership.unwrap_or(MembershipState::Leave),
        event_id: pdu.event_id.clone(),
        count,
        forgotten: false,
    };
    rooms_data::put_user_membership(&mut batch, &user, room_id, &record);
    batch.commit()?;
    tracing::info!(%room_id, user_id = %user, by = %pdu.sender, "a pending invite or knock was withdrawn or refused");
    Ok(())
}

async fn leave_via(
    s: &Arc<Services>,
    server: &ServerName,
    user_id: &UserId,
    room_id: &RoomId,
    version: &RoomVersionId,
    reason: Option<&str>,
) -> Result<OwnedEventId> {
    let template = s
        .federation
        .send(server, prepare_leave_event::v1::Request::new(room_id.to_owned(), user_id.to_owned()))
        .await?;
    let version = template.room_version.unwrap_or_else(|| version.clone());
    let rules = Rooms::rules(&version)?;
    let mut object = own_template(server, &template.event, user_id)?;
    let mut content = serde_json::Map::new();
    content.insert("membership".into(), json!("leave"));
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        content.insert("reason".into(), json!(reason));
    }
    let (event_id, raw) = crate::service::remote_join::sign_template(s, &mut object, content, &rules)?;
    s.federation
        .send(server, create_leave_event::v2::Request::new(room_id.to_owned(), event_id.clone(), raw.clone()))
        .await?;
    let (room, id) = (room_id.to_owned(), event_id.clone());
    blocking(s, move |s| {
        let meta = crate::pdu::PduMeta::outlier(room);
        // A write of its own, as `Db::put_json` makes it.
        let mut batch = s.db.batch();
        rooms_data::put_pdu(&mut batch, &id, &StoredPdu { meta, pdu: raw });
        batch.commit()?;
        Ok(())
    })
    .await?;
    Ok(event_id)
}

/// A membership template another server made for `user_id`, checked to be
/// about that user and nobody else.
pub fn own_template(server: &ServerName, raw: &RawJsonValue, user_id: &UserId) -> Result<CanonicalJsonObject> {
    let object: CanonicalJsonObject = serde_json::from_str(raw.get())
        .map_err(|_| Error::bad_json(format!("{server} sent a membership template that is not JSON")))?;
    if object.get("state_key").and_then(|v| v.as_str()) != Some(user_id.as_str())
        || object.get("sender").and_then(|v| v.as_str()) != Some(user_id.as_str())
    {
        return Err(Error::forbidden(format!("{server} sent a membership template for another user")));
    }
    Ok(object)
}

/// The leave template for a user of `origin` (`make_leave`).
pub fn make_leave(
    s: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<(RoomVersionId, CanonicalJsonObject)> {
    if user_id.server_name() != origin {
        return Err(Error::forbidden("A server may only make leaves for its own users."));
    }
    crate::service::acl::check_server(s, room_id, origin)?;
    match s.rooms.membership(room_id, user_id)? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
        _ => return Err(Error::forbidden("The user is not in the room.")),
    }
    s.rooms.membership_template(room_id, user_id, json!({ "membership": "leave" }))
}

/// A remote user's signed leave (`send_leave` v2): check, append, send on.
pub async fn send_leave(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &OwnedEventId,
    raw: &RawJsonValue,
) -> Result<()> {
    let (checked, server) = (room_id.to_owned(), origin.to_owned());
    crate::service::blocking(s, move |s| crate::service::acl::check_server(s, &checked, &server)).await?;
    receive_membership(s, origin, room_id, event_id, raw, MembershipState::Leave).await.map(|_| ())
}

/// A remote user's own signed membership event (`send_leave`,
/// `send_knock`): verify, check against the state before it, append, and
/// send it on to the room's other servers.
pub async fn receive_membership(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &OwnedEventId,
    raw: &RawJsonValue,
    membership: MembershipState,
) -> Result<Arc<Pdu>> {
    let version = {
        let room = room_id.to_owned();
        blocking(s, move |s| s.rooms.room(&room)).await?
    }
    .ok_or_else(|| Error::not_found("This room is not known to this server."))?
    .version;
    let object: CanonicalJsonObject =
        serde_json::from_str(raw.get()).map_err(|_| Error::bad_json("The event is not canonical JSON."))?;
    let pdu = inbound::verified_pdu(s, room_id, &version, object).await?;
    let matches = pdu.kind == TimelineEventType::RoomMember
        && pdu.state_key.as_deref() == Some(pdu.sender.as_str())
        && pdu.content_value().get("membership").and_then(Value::as_str) == Some(membership.as_str());
    if pdu.event_id != *event_id || !matches {
        return Err(Error::bad_json(format!("This is not the {membership} event of its sender named in the path.")));
    }
    if pdu.sender.server_name() != origin {
        return Err(Error::forbidden("A server may only send membership events of its own users."));
    }
    inbound::fetch_auth_events(s, origin, room_id, &version, std::slice::from_ref(&pdu)).await?;
    let room = room_id.to_owned();
    blocking(s, move |s| {
        crate::service::acl::check_server(s, &room, pdu.sender.server_name())?;
        let state = s
            .rooms
            .state_before_event(&version, &pdu.prev_events)?
            .ok_or_else(|| Error::bad_json("The event builds on events this server does not know."))?;
        s.rooms
            .check_auth(&version, &pdu, &state, &HashMap::new())
            .map_err(|why| Error::forbidden(format!("The {membership} is not allowed: {why}")))?;
        match s.rooms.append_remote(&room, pdu.clone(), state, true)? {
            Placed::SoftFailed => Err(Error::forbidden("The room's state no longer allows this.")),
            Placed::Timeline(_) | Placed::Known => Ok(pdu),
        }
    })
    .await
}
