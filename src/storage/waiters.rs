//! Who is waiting for what: long-polling syncs register their user and
//! the rooms they are in, and a change wakes only the syncs it concerns
//! (its [`Audience`]), once the change's stream position is safe to
//! report. A change that declares no audience wakes everyone.
//!
//! This is in-process state: a server spread over several nodes would
//! carry these wake-ups between nodes (see ARCHITECTURE.md).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use tokio::sync::watch;

/// Whose syncs a change should wake.
#[derive(Clone, Debug, Default)]
pub struct Audience {
    pub(super) everyone: bool,
    pub(super) users: Vec<OwnedUserId>,
    pub(super) rooms: Vec<OwnedRoomId>,
    /// Users whose own standing in a room changed (membership, unread
    /// counts, room account data): woken as users; the room is for the
    /// [`super::journal::Journal`].
    pub(super) user_rooms: Vec<(OwnedUserId, OwnedRoomId)>,
    /// Rooms whose membership changed (also in `rooms`): for the journal.
    pub(super) member_rooms: Vec<OwnedRoomId>,
}

impl Audience {
    pub(super) fn is_empty(&self) -> bool {
        !self.everyone
            && self.users.is_empty()
            && self.rooms.is_empty()
            && self.user_rooms.is_empty()
            && self.member_rooms.is_empty()
    }
}

pub struct Waiters {
    registry: Mutex<Registry>,
    everyone: watch::Sender<u64>,
}

#[derive(Default)]
struct Registry {
    users: HashMap<OwnedUserId, UserEntry>,
    /// Per room, the registered users in it (and how many registrations each).
    rooms: HashMap<OwnedRoomId, HashMap<OwnedUserId, usize>>,
}

struct UserEntry {
    signal: watch::Sender<u64>,
    registrations: usize,
}

impl Default for Waiters {
    fn default() -> Self {
        Self { registry: Mutex::default(), everyone: watch::channel(0).0 }
    }
}

impl Waiters {
    /// A sync of `user_id`, who is in `rooms`, is about to look and wait.
    pub fn register(self: &Arc<Self>, user_id: &UserId, rooms: Vec<OwnedRoomId>) -> Registration {
        let mut registry = self.registry.lock().expect("waiters poisoned");
        let entry = registry
            .users
            .entry(user_id.to_owned())
            .or_insert_with(|| UserEntry { signal: watch::channel(0).0, registrations: 0 });
        entry.registrations += 1;
        let mine = entry.signal.subscribe();
        for room_id in &rooms {
            *registry.rooms.entry(room_id.clone()).or_default().entry(user_id.to_owned()).or_default() += 1;
        }
        drop(registry);
        Registration {
            waiters: self.clone(),
            user_id: user_id.to_owned(),
            rooms,
            mine,
            everyone: self.everyone.subscribe(),
        }
    }

    /// Wake the registered syncs `audience` concerns.
    pub(super) fn wake(&self, audience: &Audience) {
        if audience.everyone {
            self.everyone.send_modify(|n| *n += 1);
            return;
        }
        let registry = self.registry.lock().expect("waiters poisoned");
        let bump = |user_id: &UserId| {
            if let Some(entry) = registry.users.get(user_id) {
                entry.signal.send_modify(|n| *n += 1);
            }
        };
        for user_id in audience.users.iter().chain(audience.user_rooms.iter().map(|(user, _)| user)) {
            bump(user_id);
        }
        for room_id in &audience.rooms {
            for user_id in registry.rooms.get(room_id).into_iter().flat_map(HashMap::keys) {
                bump(user_id);
            }
        }
    }

    /// Registered syncs (for tests and metrics).
    pub fn registered(&self) -> usize {
        self.registry.lock().expect("waiters poisoned").users.values().map(|e| e.registrations).sum()
    }
}

/// A sync's place among the waiters, left when dropped.
pub struct Registration {
    waiters: Arc<Waiters>,
    user_id: OwnedUserId,
    rooms: Vec<OwnedRoomId>,
    mine: watch::Receiver<u64>,
    everyone: watch::Receiver<u64>,
}

impl Registration {
    /// Everything so far is about to be looked at: [`Self::changed`]
    /// waits for what comes after this call.
    pub fn mark_seen(&mut self) {
        self.mine.borrow_and_update();
        self.everyone.borrow_and_update();
    }

    /// Until a change for this sync's user, one of its rooms, or everyone.
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = self.mine.changed() => {}
            _ = self.everyone.changed() => {}
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = self.waiters.registry.lock().expect("waiters poisoned");
        for room_id in &self.rooms {
            if let Some(users) = registry.rooms.get_mut(room_id) {
                if let Some(n) = users.get_mut(&self.user_id) {
                    *n -= 1;
                    if *n == 0 {
                        users.remove(&self.user_id);
                    }
                }
                if users.is_empty() {
                    registry.rooms.remove(room_id);
                }
            }
        }
        if let Some(entry) = registry.users.get_mut(&self.user_id) {
            entry.registrations -= 1;
            if entry.registrations == 0 {
                registry.users.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> OwnedUserId {
        OwnedUserId::try_from(format!("@{name}:example.org")).unwrap()
    }

    fn room(name: &str) -> OwnedRoomId {
        OwnedRoomId::try_from(format!("!{name}:example.org")).unwrap()
    }

    fn woke(registration: &mut Registration) -> bool {
        let woke = registration.mine.has_changed().unwrap() || registration.everyone.has_changed().unwrap();
        registration.mark_seen();
        woke
    }

    #[test]
    fn a_change_wakes_only_the_syncs_it_concerns() {
        let waiters = Arc::new(Waiters::default());
        let mut alice = waiters.register(&user("alice"), vec![room("a"), room("shared")]);
        let mut bob = waiters.register(&user("bob"), vec![room("b"), room("shared")]);
        let room_change = |r: &str| Audience { rooms: vec![room(r)], ..Audience::default() };

        waiters.wake(&room_change("a"));
        assert!(woke(&mut alice) && !woke(&mut bob));
        waiters.wake(&room_change("shared"));
        assert!(woke(&mut alice) && woke(&mut bob));
        waiters.wake(&Audience { users: vec![user("bob")], ..Audience::default() });
        assert!(!woke(&mut alice) && woke(&mut bob));
        waiters.wake(&room_change("nobody-waits-here"));
        assert!(!woke(&mut alice) && !woke(&mut bob));
        waiters.wake(&Audience { everyone: true, ..Audience::default() });
        assert!(woke(&mut alice) && woke(&mut bob));

        // Two syncs of one user (two devices): the first leaving keeps the second's place.
        let mut alice_phone = waiters.register(&user("alice"), vec![room("a")]);
        drop(alice);
        waiters.wake(&room_change("a"));
        assert!(woke(&mut alice_phone));
        drop(alice_phone);
        drop(bob);
        assert_eq!(waiters.registered(), 0);
        assert!(waiters.registry.lock().unwrap().rooms.is_empty(), "nothing is left behind");
    }
}
