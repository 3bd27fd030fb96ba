//! Server ACLs (`m.room.server_acl`): servers a room keeps out. Checked for
//! every request another server makes about a room, as the spec asks; the
//! guest rooms' classified levels rely on it to keep uncleared servers out.

use ruma::{RoomId, ServerName, events::room::server_acl::RoomServerAclEventContent};

use crate::{
    error::{Error, Result},
    service::Services,
};

/// Refuse `server` if the room's current ACL denies it.
pub fn check_server(s: &Services, room_id: &RoomId, server: &ServerName) -> Result<()> {
    let Some(acl) = s.rooms.current_state_pdu(room_id, "m.room.server_acl", "")? else { return Ok(()) };
    let Ok(content) = serde_json::from_str::<RoomServerAclEventContent>(acl.content.get()) else { return Ok(()) };
    if content.is_allowed(server) {
        Ok(())
    } else {
        Err(Error::forbidden(format!("The room's server ACL does not allow {server}.")))
    }
}

/// Refuse `server` unless it has a user in the room, for reads of the
/// room's events and state.
pub fn check_participant(s: &Services, room_id: &RoomId, server: &ServerName) -> Result<()> {
    if !s.rooms.exists(room_id)? {
        return Err(Error::not_found("This room is not known to this server."));
    }
    check_server(s, room_id, server)?;
    let member = s.rooms.members(room_id)?.into_iter().any(|(user, membership)| {
        user.server_name() == server
            && matches!(
                membership,
                ruma::events::room::member::MembershipState::Join | ruma::events::room::member::MembershipState::Invite
            )
    });
    if member { Ok(()) } else { Err(Error::forbidden(format!("{server} has no user in this room."))) }
}
