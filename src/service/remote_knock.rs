//! Knocking across servers: other servers' users knocking on our rooms
//! (`make_knock` / `send_knock`), and our users knocking on rooms this
//! server does not hold, through a server that does. A pending remote
//! knock is kept like a remote invite (stripped state, servers to withdraw
//! it through), so sync shows it and leaving withdraws it.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
    api::federation::membership::{RawStrippedState, create_knock_event, prepare_knock_event},
    events::room::member::MembershipState,
};
use serde_json::{json, value::RawValue as RawJsonValue};

use crate::{
    error::{Error, Result},
    pdu::{PduMeta, StoredPdu},
    service::{
        Services, blocking,
        membership::member_content,
        remote_invite::{self, RemoteInvite},
        remote_join::{SUPPORTED_VERSIONS, sign_template},
        rooms::{MembershipRecord, Rooms, data as rooms_data},
    },
};

/// The knock template for a user of `origin` (`make_knock`).
pub fn make_knock(
    s: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user_id: &UserId,
    supported: &[RoomVersionId],
) -> Result<(RoomVersionId, CanonicalJsonObject)> {
    if user_id.server_name() != origin {
        return Err(Error::forbidden("A server may only make knocks for its own users."));
    }
    let record = s.rooms.room(room_id)?.ok_or_else(|| Error::not_found("This room is not known to this server."))?;
    if !supported.contains(&record.version) {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("The room's version {} is not one your server supports.", record.version),
        )
        .with("room_version", json!(record.version)));
    }
    if !Rooms::rules(&record.version)?.authorization.knocking {
        return Err(Error::forbidden(format!("Rooms of version {} cannot be knocked on.", record.version)));
    }
    crate::service::acl::check_server(s, room_id, origin)?;
    match s.rooms.membership(room_id, user_id)? {
        Some(MembershipState::Join) => return Err(Error::forbidden("The user is already in the room.")),
        Some(MembershipState::Ban) => return Err(Error::forbidden("The user is banned from the room.")),
        Some(MembershipState::Invite) => return Err(Error::forbidden("The user is already invited.")),
        _ => {}
    }
    s.rooms.membership_template(room_id, user_id, json!({ "membership": "knock" }))
}

/// A remote user's signed knock (`send_knock`): checked and appended by
/// [`remote_invite::receive_membership`]; answered with the room state a
/// knocker may see.
pub async fn send_knock(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &OwnedEventId,
    raw: &RawJsonValue,
) -> Result<Vec<RawStrippedState>> {
    let pdu = remote_invite::receive_membership(s, origin, room_id, event_id, raw, MembershipState::Knock).await?;
    let room = room_id.to_owned();
    blocking(s, move |s| remote_invite::room_state_for(s, &room, &pdu.sender)).await
}

/// Knock on a room this server does not hold, through the first of
/// `servers` that takes it.
pub async fn knock(
    s: &Arc<Services>,
    user_id: &UserId,
    room_id: &RoomId,
    servers: Vec<OwnedServerName>,
    reason: Option<String>,
) -> Result<()> {
    {
        let user_id = user_id.to_owned();
        blocking(s, move |s| crate::policy::check_user(s, &user_id, crate::policy::Action::Knock)).await?;
    }
    let mut last_error = Error::not_found("No server to knock through: name one with `via`.");
    for server in servers.iter().filter(|server| **server != s.settings.server_name) {
        match knock_via(s, server, user_id, room_id, reason.as_deref()).await {
            Ok(()) => return Ok(()),
            Err(err) => {
                tracing::info!(%room_id, %server, "could not knock there: {}", err.message);
                last_error = err;
            }
        }
    }
    Err(last_error)
}

async fn knock_via(
    s: &Arc<Services>,
    server: &ServerName,
    user_id: &UserId,
    room_id: &RoomId,
    reason: Option<&str>,
) -> Result<()> {
    let mut request = prepare_knock_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
    request.ver = SUPPORTED_VERSIONS.to_vec();
    let template = s.federation.send(server, request).await?;
    let version = template.room_version;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(Error::unsupported_room_version(format!("porch does not support room version {version}.")));
    }
    let rules = Rooms::rules(&version)?;
    let mut object = remote_invite::own_template(server, &template.event, user_id)?;
    let content = {
        let user = user_id.to_owned();
        let reason = reason.map(str::to_owned);
        blocking(s, move |s| member_content(s, &user, MembershipState::Knock, reason.as_deref())).await?
    };
    let (event_id, raw) = sign_template(s, &mut object, content, &rules)?;
    let answer = s
        .federation
        .send(server, create_knock_event::v1::Request::new(room_id.to_owned(), event_id.clone(), raw.clone()))
        .await?;
    let knock = crate::pdu::Pdu::from_json(event_id.clone(), room_id, raw.clone())
        .map_err(|e| Error::internal(format!("our own knock does not parse: {e}")))?;
    let stripped = remote_invite::stripped(&answer.knock_room_state)
        .into_iter()
        .chain(std::iter::once(knock.to_stripped_state()))
        .collect();
    let pending = RemoteInvite { room_id: room_id.to_owned(), version, stripped, servers: vec![server.to_owned()] };
    let (user, room) = (user_id.to_owned(), room_id.to_owned());
    blocking(s, move |s| {
        let mut batch = s.db.batch();
        // `put_user_membership` wakes the user.
        let count = batch.next_count_quiet();
        rooms_data::put_pdu(&mut batch, &event_id, &StoredPdu { meta: PduMeta::outlier(room.clone()), pdu: raw });
        remote_invite::put_pending(&mut batch, &event_id, &pending);
        let record = MembershipRecord { membership: MembershipState::Knock, event_id, count, forgotten: false };
        rooms_data::put_user_membership(&mut batch, &user, &room, &record);
        batch.commit()?;
        tracing::info!(%room, user_id = %user, "knocked on a room of another server");
        Ok(())
    })
    .await
}
