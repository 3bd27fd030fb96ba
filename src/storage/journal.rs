//! The recent changes, by audience and stream position: lets a reader that
//! holds a position (a sliding-sync connection) find which rooms changed
//! since, without looking at each of a user's rooms. In memory and
//! bounded: a position older than what is kept gets no answer, and the
//! reader looks at everything, as it does after a restart.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::Mutex,
};

use ruma::{OwnedRoomId, RoomId, UserId};

use super::waiters::Audience;

/// Released batches kept (a few MiB); at a thousand writes a second, the
/// last minute or so.
const KEPT: usize = 65_536;

pub struct Journal {
    inner: Mutex<Inner>,
}

struct Inner {
    /// `(highest position, audience)` of each released batch, in position order.
    entries: VecDeque<(u64, Audience)>,
    /// Every change after this position is in `entries`.
    floor: u64,
}

/// What changed for one user between two positions.
#[derive(Debug, Default)]
pub struct UserChanges {
    /// A change for everyone (key changes, presence).
    pub everyone: bool,
    /// A change for the user alone (global account data, to-device
    /// messages, push rules, key claims).
    pub user: bool,
    /// Rooms whose events changed and that the caller asked about.
    pub rooms: BTreeSet<OwnedRoomId>,
    /// Of `rooms`, those whose membership changed.
    pub member_rooms: BTreeSet<OwnedRoomId>,
    /// Rooms where the user's own standing changed (membership, unread
    /// counts, room account data), asked about or not.
    pub own_rooms: BTreeSet<OwnedRoomId>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        !self.everyone && !self.user && self.rooms.is_empty() && self.own_rooms.is_empty()
    }
}

impl Journal {
    /// A journal that knows of nothing up to `floor`.
    pub fn new(floor: u64) -> Self {
        Self { inner: Mutex::new(Inner { entries: VecDeque::new(), floor }) }
    }

    /// Note batches just released (every position up to their highest is
    /// safe), in position order.
    pub(super) fn record(&self, released: impl IntoIterator<Item = (u64, Audience)>) {
        let mut inner = self.inner.lock().expect("journal poisoned");
        for entry in released {
            if inner.entries.len() >= KEPT
                && let Some((oldest, _)) = inner.entries.pop_front()
            {
                inner.floor = inner.floor.max(oldest);
            }
            inner.entries.push_back(entry);
        }
    }

    /// What changed for `user_id` after `since` up to `upto`; `wanted`
    /// says which rooms' event changes the caller cares about. `None` if
    /// the journal no longer reaches back to `since`.
    pub fn changes_for(
        &self,
        user_id: &UserId,
        since: u64,
        upto: u64,
        mut wanted: impl FnMut(&RoomId) -> bool,
    ) -> Option<UserChanges> {
        let inner = self.inner.lock().expect("journal poisoned");
        if since < inner.floor {
            return None;
        }
        let mut out = UserChanges::default();
        let first = inner.entries.partition_point(|(at, _)| *at <= since);
        for (at, audience) in inner.entries.range(first..) {
            if *at > upto {
                break;
            }
            out.everyone |= audience.everyone;
            out.user |= audience.users.iter().any(|u| u == user_id);
            for (user, room) in &audience.user_rooms {
                if user == user_id {
                    out.own_rooms.insert(room.clone());
                }
            }
            for room in &audience.rooms {
                if !out.rooms.contains(room) && wanted(room) {
                    out.rooms.insert(room.clone());
                }
            }
            for room in &audience.member_rooms {
                if out.rooms.contains(room) {
                    out.member_rooms.insert(room.clone());
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> OwnedRoomId {
        OwnedRoomId::try_from(format!("!{name}:example.org")).unwrap()
    }

    #[test]
    fn changes_are_found_by_position_and_audience() {
        let alice: ruma::OwnedUserId = "@alice:example.org".try_into().unwrap();
        let bob: ruma::OwnedUserId = "@bob:example.org".try_into().unwrap();
        let journal = Journal::new(10);
        journal.record([
            (11, Audience { rooms: vec![room("a")], ..Audience::default() }),
            (12, Audience { rooms: vec![room("b")], member_rooms: vec![room("b")], ..Audience::default() }),
            (13, Audience { user_rooms: vec![(bob.clone(), room("c"))], ..Audience::default() }),
            (14, Audience { users: vec![alice.clone()], ..Audience::default() }),
        ]);
        let all = journal.changes_for(&alice, 10, 14, |_| true).unwrap();
        assert_eq!(all.rooms, [room("a"), room("b")].into());
        assert!(all.user && !all.everyone && all.own_rooms.is_empty());
        assert_eq!(all.member_rooms, [room("b")].into());
        let later = journal.changes_for(&alice, 11, 13, |r| r != &*room("x")).unwrap();
        assert_eq!(later.rooms, [room("b")].into());
        assert!(!later.user);
        let bobs = journal.changes_for(&bob, 12, 14, |_| false).unwrap();
        assert_eq!(bobs.own_rooms, [room("c")].into());
        assert!(bobs.rooms.is_empty() && !bobs.user);
        assert!(journal.changes_for(&alice, 14, 14, |_| true).unwrap().is_empty());
        assert!(journal.changes_for(&alice, 9, 14, |_| true).is_none(), "before the floor");
    }

    #[test]
    fn the_oldest_entries_go_and_the_floor_rises() {
        let journal = Journal::new(0);
        journal.record((1..=KEPT as u64 + 2).map(|n| (n, Audience { everyone: true, ..Audience::default() })));
        let user: ruma::OwnedUserId = "@a:example.org".try_into().unwrap();
        assert!(journal.changes_for(&user, 1, 5, |_| true).is_none());
        assert!(journal.changes_for(&user, 2, 5, |_| true).unwrap().everyone);
    }
}
