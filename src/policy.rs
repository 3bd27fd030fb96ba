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
    /// `open`: a public preset or custom join rules.
    CreateRoom {
        is_direct: bool,
        invites: &'a [ruma::OwnedUserId],
        open: bool,
    },
}

/// Refuse `action` for this session if the policy says no.
pub fn check(services: &Services, session: &Session, action: Action<'_>) -> Result<()> {
    if !session.is_guest() {
        return Ok(());
    }
    let user_id = &session.user_id;
    match action {
        Action::ListPublicRooms => Err(Error::forbidden("Guests cannot browse the room directory.")),
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
        Action::Invite | Action::Kick | Action::Ban | Action::Unban => {
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
        Action::CreateRoom { is_direct, invites, open } => match invites {
            [other] if is_direct && !open && shares_room(services, user_id, other)? => Ok(()),
            _ => Err(Error::forbidden("Guests can only open a direct chat with someone they share a room with.")),
        },
    }
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
