//! The user's rooms as a connection's lists see them, kept with the
//! connection and brought up to date from the storage journal: a request
//! reads only the rooms that changed since the last one, not each of the
//! user's rooms. When the journal no longer reaches back (or the ignore
//! list changed), the list is read again whole.

use std::collections::{HashMap, HashSet};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::Value;

use crate::{
    error::Result,
    service::{Services, rooms::MembershipRecord},
};

/// One of the user's rooms, as the lists see it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub room_id: OwnedRoomId,
    pub record: MembershipRecord,
    /// Its place in recency order.
    pub bump: u64,
}

pub struct RoomList {
    /// The stream position the list is as of.
    pub stream: u64,
    /// Joined (not forgotten), invited and knocking rooms.
    pub rooms: HashMap<OwnedRoomId, Candidate>,
    pub facts: Facts,
}

/// What the filters learnt of the rooms, kept until a room changes.
#[derive(Default)]
pub struct Facts {
    /// Whether a room is encrypted.
    pub encrypted: HashMap<OwnedRoomId, bool>,
    /// A room's type (`m.room.create`'s, which never changes).
    pub room_types: HashMap<OwnedRoomId, Option<String>>,
    /// The children of spaces a filter named.
    pub space_children: HashMap<OwnedRoomId, HashSet<OwnedRoomId>>,
}

impl RoomList {
    /// Read the user's rooms whole, as of `upto`.
    pub fn read(services: &Services, user_id: &UserId, upto: u64) -> Result<Self> {
        let ignored = services.account_data.ignored_users(user_id)?;
        let mut rooms = HashMap::new();
        for (room_id, record) in services.rooms.user_rooms(user_id)? {
            if let Some(candidate) = candidate(services, room_id, record, upto, &ignored)? {
                rooms.insert(candidate.room_id.clone(), candidate);
            }
        }
        tracing::debug!(user = %user_id, rooms = rooms.len(), "sliding sync: the room list read whole");
        Ok(Self { stream: upto, rooms, facts: Facts::default() })
    }

    /// Bring the list up to `upto` from the journal; `false` if it cannot
    /// (it must be read again whole).
    pub fn update(&mut self, services: &Services, user_id: &UserId, upto: u64) -> Result<bool> {
        if upto <= self.stream {
            return Ok(true);
        }
        let journal = services.db.journal();
        let wanted = |room: &RoomId| self.rooms.contains_key(room) || self.facts.space_children.contains_key(room);
        let Some(changes) = journal.changes_for(user_id, self.stream, upto, wanted) else { return Ok(false) };
        if changes.user && ignore_list_changed(services, user_id, self.stream)? {
            return Ok(false);
        }
        let ignored = match changes.own_rooms.is_empty() {
            true => HashSet::new(),
            false => services.account_data.ignored_users(user_id)?,
        };
        for room_id in changes.own_rooms.iter() {
            let record = services.rooms.user_membership(user_id, room_id)?;
            let candidate = match record {
                Some(record) => candidate(services, room_id.clone(), record, upto, &ignored)?,
                None => None,
            };
            self.forget_facts(room_id);
            match candidate {
                Some(candidate) => self.rooms.insert(room_id.clone(), candidate),
                None => self.rooms.remove(room_id),
            };
        }
        for room_id in changes.rooms.difference(&changes.own_rooms) {
            self.forget_facts(room_id);
            let Some(entry) = self.rooms.get_mut(room_id) else { continue };
            if entry.record.membership == MembershipState::Join
                && let Some(room) = services.rooms.room(room_id)?
            {
                entry.bump = room.bump_stamp().max(entry.record.count);
            }
        }
        self.stream = upto;
        Ok(true)
    }

    /// What is known of a room that changed may no longer hold.
    fn forget_facts(&mut self, room_id: &RoomId) {
        self.facts.encrypted.remove(room_id);
        self.facts.space_children.remove(room_id);
    }

    /// The rooms, newest activity first.
    pub fn in_order(&self) -> Vec<&Candidate> {
        in_order(&self.rooms)
    }
}

/// Rooms, newest activity first.
pub fn in_order(rooms: &HashMap<OwnedRoomId, Candidate>) -> Vec<&Candidate> {
    let mut out: Vec<&Candidate> = rooms.values().collect();
    out.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
    out
}

/// The room as a list entry, or `None` if the lists do not show it: left,
/// forgotten, an invite from someone ignored, or a membership after `upto`.
fn candidate(
    services: &Services,
    room_id: OwnedRoomId,
    record: MembershipRecord,
    upto: u64,
    ignored: &HashSet<OwnedUserId>,
) -> Result<Option<Candidate>> {
    if record.count > upto {
        return Ok(None);
    }
    let bump = match record.membership {
        MembershipState::Join if !record.forgotten => match services.rooms.room(&room_id)? {
            Some(room) => room.bump_stamp().max(record.count),
            None => return Ok(None),
        },
        MembershipState::Invite => {
            if !ignored.is_empty()
                && services.rooms.get_pdu(&record.event_id)?.is_some_and(|(pdu, _)| ignored.contains(&pdu.sender))
            {
                return Ok(None);
            }
            record.count
        }
        MembershipState::Knock => record.count,
        _ => return Ok(None),
    };
    Ok(Some(Candidate { room_id, record, bump }))
}

/// Whether `m.ignored_user_list` changed after `since` (invites from
/// newly ignored people leave the lists, and come back when unignored).
fn ignore_list_changed(services: &Services, user_id: &UserId, since: u64) -> Result<bool> {
    Ok(services.account_data.global_changed_since(user_id, since)?.iter().any(|item| item.kind == IGNORED_USERS))
}

const IGNORED_USERS: &str = "m.ignored_user_list";

/// Whether an account-data event changes what the room entries show
/// (unread counts follow the push rules).
pub fn changes_counts(kind: &str) -> bool {
    kind == crate::service::push::PUSH_RULES || kind == IGNORED_USERS
}

/// The rooms the spaces list as children (a child event without `via` is
/// a removed child).
pub fn read_space_children(services: &Services, space: &RoomId) -> Result<HashSet<OwnedRoomId>> {
    let mut children = HashSet::new();
    if !services.rooms.exists(space)? {
        return Ok(children);
    }
    let state = services.rooms.current_state(space)?;
    for (child, event_id) in services.rooms.state_of_kind(&state, "m.space.child")? {
        let Some((pdu, _)) = services.rooms.get_pdu(&event_id)? else { continue };
        if pdu.content_value().get("via").and_then(Value::as_array).is_some_and(|via| !via.is_empty())
            && let Ok(child) = OwnedRoomId::try_from(child)
        {
            children.insert(child);
        }
    }
    Ok(children)
}
