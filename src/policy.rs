//! The guest policy: the one place that answers "may this account do X?".
//! Every handler that could let a guest reach beyond their rooms asks here
//! (see the guest-rooms contract, "What guests may and may not do").

use ruma::{RoomId, UserId, events::room::member::MembershipState};

use crate::{
    error::{Error, Result},
    service::{Services, users::Session},
};

/// Marks guests in member events and profiles.
pub const GUEST_MARKER: &str = "dev.porch.guest";

/// Something an account wants to do that guests may be refused.
#[derive(Debug)]
pub enum Action<'a> {
    ListPublicRooms,
    /// Seeing a room's summary or its place in a space without being in it.
    PreviewRoom {
        room_id: &'a RoomId,
    },
    PublishRoom,
    ManageAliases,
    ViewProfile {
        target: &'a UserId,
    },
    Invite,
    Kick,
    Ban,
    Unban,
    Knock,
    /// Leaving, or changing one's own member event (profile).
    LeaveOrProfile,
    Join {
        room_id: &'a RoomId,
    },
    /// Guest rooms are made by members (and admins) only.
    CreateGuestRoom,
    ManageLinks,
    EndRoom,
    /// A room as createRoom would make it.
    CreateRoom(&'a crate::service::create_room::CreateRoom),
    /// Inviting a person by email to rooms of this server, making an
    /// external account when they accept: server admins only, since
    /// external accounts count against the server's quota.
    InviteByEmail,
    /// A state event other than `m.room.member` (memberships have their own actions).
    SendState {
        room_id: &'a RoomId,
        event_type: &'a str,
        state_key: &'a str,
    },
}

/// State a guest may set in a room they created (their direct chats):
/// what makes the chat theirs, nothing that lets people in or hands out power.
const GUEST_CREATOR_STATE: &[&str] =
    &["m.room.name", "m.room.topic", "m.room.avatar", "m.room.encryption", "m.room.pinned_events"];

/// State a guest may set in any of their rooms, as the power levels allow.
const GUEST_STATE: &[&str] = &["m.room.pinned_events"];

/// Call membership (Element Call): each participant sets their own, keyed by their id.
const OWN_CALL_STATE: &[&str] = &["m.call.member", "org.matrix.msc3401.call.member"];

/// createRoom keys a guest's direct chat may carry in `creation_content`.
const GUEST_CREATION_CONTENT: &[&str] = &["m.federate"];

/// Refuse `action` for this session if the policy says no.
pub fn check(services: &Services, session: &Session, action: Action<'_>) -> Result<()> {
    if matches!(action, Action::InviteByEmail) && (!session.user.is_admin || session.is_guest()) {
        return Err(Error::forbidden("Only server administrators may invite people by email."));
    }
    check_account(services, &session.user_id, session.is_guest(), action)
}

/// [`check`] for a local account known by its id (paths that carry no session).
pub fn check_user(services: &Services, user_id: &UserId, action: Action<'_>) -> Result<()> {
    let Some(user) = services.users.get(user_id)? else {
        return Err(Error::forbidden("This account does not exist here."));
    };
    check_account(services, user_id, user.kind.is_guest(), action)
}

fn check_account(services: &Services, user_id: &UserId, is_guest: bool, action: Action<'_>) -> Result<()> {
    if !is_guest {
        return Ok(());
    }
    match action {
        Action::ListPublicRooms => Err(Error::forbidden("Guests cannot browse the room directory.")),
        Action::PreviewRoom { room_id } => match services.rooms.membership(room_id, user_id)? {
            Some(MembershipState::Invite | MembershipState::Join) => Ok(()),
            _ => Err(Error::forbidden("Guests can only see the rooms they are in.")),
        },
        Action::PublishRoom | Action::ManageAliases => {
            Err(Error::forbidden("Guests cannot publish rooms or manage room aliases."))
        }
        Action::ViewProfile { target } => {
            if target == user_id || shares_room(services, user_id, target)? {
                Ok(())
            } else {
                Err(Error::forbidden("Guests can only see the profiles of people in their rooms."))
            }
        }
        Action::Invite | Action::InviteByEmail | Action::Kick | Action::Ban | Action::Unban => {
            Err(Error::forbidden("Guests cannot invite, kick, ban or unban anyone."))
        }
        Action::LeaveOrProfile => Ok(()),
        Action::CreateGuestRoom => Err(Error::forbidden("Guests cannot create guest rooms.")),
        Action::ManageLinks => Err(Error::forbidden("Guests cannot create or manage links.")),
        Action::EndRoom => Err(Error::forbidden("Guests cannot end rooms.")),
        Action::Knock => Err(Error::forbidden("Guests can only join rooms through a link or an invite.")),
        Action::Join { room_id } => match services.rooms.membership(room_id, user_id)? {
            Some(MembershipState::Invite | MembershipState::Join) => Ok(()),
            _ => Err(Error::forbidden("Guests can only join rooms through a link or an invite.")),
        },
        Action::CreateRoom(room) => guest_direct_chat(services, user_id, room),
        Action::SendState { room_id, event_type, state_key } => {
            if GUEST_STATE.contains(&event_type) {
                return Ok(());
            }
            if OWN_CALL_STATE.contains(&event_type)
                && (state_key == user_id.as_str() || state_key.starts_with(&format!("_{user_id}")))
            {
                return Ok(());
            }
            if GUEST_CREATOR_STATE.contains(&event_type) && created_by(services, room_id, user_id)? {
                return Ok(());
            }
            Err(Error::forbidden(format!(
                "Guests cannot set {event_type} here: they may not open rooms to others, hand out power, or change \
                 rooms they did not create."
            )))
        }
    }
}

/// A guest may create one kind of room: a private direct chat with one
/// person they share a room with, that nobody else can enter.
fn guest_direct_chat(
    services: &Services,
    user_id: &UserId,
    room: &crate::service::create_room::CreateRoom,
) -> Result<()> {
    use ruma::api::client::room::create_room::v3::RoomPreset;
    let refuse = |why: &str| Err(Error::forbidden(format!("Guests can only open a private direct chat: {why}")));
    let [other] = room.invite.as_slice() else {
        return refuse("invite exactly one person you share a room with.");
    };
    if !room.is_direct || !shares_room(services, user_id, other)? {
        return refuse("invite exactly one person you share a room with, as a direct chat.");
    }
    if room.public || room.preset.as_ref().is_some_and(|p| *p == RoomPreset::PublicChat) {
        return refuse("it cannot be public.");
    }
    if room.alias_localpart.is_some() {
        return refuse("it cannot have an alias.");
    }
    if room.power_level_override.is_some() {
        return refuse("its power levels cannot be changed.");
    }
    if let Some(key) =
        room.creation_content.iter().flat_map(|c| c.keys()).find(|k| !GUEST_CREATION_CONTENT.contains(&k.as_str()))
    {
        return refuse(&format!("`{key}` cannot be set in its creation content."));
    }
    if let Some((kind, _, _)) =
        room.initial_state.iter().find(|(kind, _, _)| !GUEST_CREATOR_STATE.contains(&kind.as_str()))
    {
        return refuse(&format!("{kind} cannot be part of its initial state."));
    }
    Ok(())
}

/// Whether `user_id` created the room (sent its `m.room.create`).
fn created_by(services: &Services, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
    Ok(services.rooms.current_state_pdu(room_id, "m.room.create", "")?.is_some_and(|create| create.sender == user_id))
}

/// Whether `a` and `b` are both joined to at least one room.
pub fn shares_room(services: &Services, a: &UserId, b: &UserId) -> Result<bool> {
    for (room_id, record) in services.rooms.user_rooms(a)? {
        if record.membership == MembershipState::Join && services.rooms.is_joined(&room_id, b)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `viewer` may find `target` in the user directory.
pub fn may_see_in_directory(services: &Services, viewer: &Session, target: &UserId) -> Result<bool> {
    if !viewer.is_guest() {
        return Ok(true);
    }
    shares_room(services, &viewer.user_id, target)
}

/// A guest's display name always ends with the configured suffix.
pub fn guest_display_name(services: &Services, name: &str) -> String {
    let suffix = &services.settings.raw.guests.display_suffix;
    let name = name.trim();
    if suffix.is_empty() || name.ends_with(suffix.as_str()) { name.to_owned() } else { format!("{name}{suffix}") }
}
