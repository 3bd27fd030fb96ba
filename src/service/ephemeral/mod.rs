//! Typing notifications (in memory: they expire within seconds), presence
//! (in memory: it describes the moment) and read receipts (stored).

mod data;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Map, Value, json};

use self::data::StoredReceipt;
use crate::{error::Result, storage::Db};

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    changed_at: u64,
}

/// Users whose presence is kept in memory at most.
const PRESENCE_KEPT: usize = 100_000;

type PresenceEntry = (ruma::presence::PresenceState, Option<String>, Option<Instant>);

#[derive(Default)]
struct Presence {
    entries: HashMap<OwnedUserId, PresenceEntry>,
    /// Position of each user's last change, and the users by it.
    changed_at: HashMap<OwnedUserId, u64>,
    changes: BTreeMap<u64, OwnedUserId>,
}

pub struct Ephemeral {
    db: Arc<Db>,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    presence: Mutex<Presence>,
    /// By room, the position of its latest receipt (rooms read since the
    /// start, or with a receipt since): an incremental sync skips a room
    /// whose receipts did not move without reading them.
    latest_receipts: Mutex<HashMap<OwnedRoomId, u64>>,
}

impl Ephemeral {
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            db,
            typing: Mutex::new(HashMap::new()),
            presence: Mutex::new(Presence::default()),
            latest_receipts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the room's typing or receipts changed after `since`.
    pub fn changed_since(&self, room_id: &RoomId, since: u64) -> Result<bool> {
        if self.typing.lock().expect("typing poisoned").get(room_id).is_some_and(|t| t.changed_at > since) {
            return Ok(true);
        }
        let known = self.latest_receipts.lock().expect("receipts poisoned").get(room_id).copied();
        let latest = match known {
            Some(latest) => latest,
            None => {
                let latest = data::latest_receipt(&self.db, room_id)?;
                let mut cache = self.latest_receipts.lock().expect("receipts poisoned");
                let entry = cache.entry(room_id.to_owned()).or_insert(latest);
                *entry = (*entry).max(latest);
                *entry
            }
        };
        Ok(latest > since)
    }

    /// Presence is kept in memory: it describes the moment, not history.
    /// Each change takes a stream position, so `/sync` reports it once.
    pub fn set_presence(
        &self,
        user_id: &UserId,
        state: ruma::presence::PresenceState,
        status_msg: Option<String>,
    ) -> Result<()> {
        // Setting it is activity (`last_active_ago`), unless going offline.
        let active = (state != ruma::presence::PresenceState::Offline).then(Instant::now);
        self.with_position(None, |count| {
            let mut presence = self.presence.lock().expect("presence poisoned");
            let Presence { entries, changed_at, changes } = &mut *presence;
            // Other servers push presence at will: the map stays bounded, and
            // offline entries (the default anyway) go first.
            if entries.len() >= PRESENCE_KEPT {
                entries.retain(|_, (state, _, _)| *state != ruma::presence::PresenceState::Offline);
                if entries.len() >= PRESENCE_KEPT {
                    entries.clear();
                }
                changed_at.retain(|user, _| entries.contains_key(user));
                changes.retain(|_, user| entries.contains_key(user));
            }
            if let Some(previous) = changed_at.insert(user_id.to_owned(), count) {
                changes.remove(&previous);
            }
            changes.insert(count, user_id.to_owned());
            entries.insert(user_id.to_owned(), (state, status_msg, active));
        })
    }

    pub fn presence(&self, user_id: &UserId) -> Option<PresenceEntry> {
        self.presence.lock().expect("presence poisoned").entries.get(user_id).cloned()
    }

    /// Users whose presence changed in `(since, upto]`.
    pub fn presence_changed(&self, since: u64, upto: u64) -> Vec<OwnedUserId> {
        if since >= upto {
            return Vec::new();
        }
        let presence = self.presence.lock().expect("presence poisoned");
        presence.changes.range(since + 1..=upto).map(|(_, user)| user.clone()).collect()
    }

    /// Apply an in-memory change under a fresh stream position. The change is
    /// made before the position is released, so no sync can pass it unseen.
    /// With `rooms`, only those rooms' members' syncs wake.
    fn with_position<T>(&self, rooms: Option<&[OwnedRoomId]>, change: impl FnOnce(u64) -> T) -> Result<T> {
        let mut batch = self.db.batch();
        let count = match rooms {
            Some(rooms) => {
                for room_id in rooms {
                    batch.wake_room(room_id);
                }
                batch.next_count_quiet()
            }
            None => batch.next_count(),
        };
        let out = change(count);
        batch.commit()?;
        Ok(out)
    }

    pub fn set_typing(&self, room_id: &RoomId, user_id: &UserId, timeout: Option<Duration>) -> Result<()> {
        self.with_position(Some(&[room_id.to_owned()]), |count| {
            let mut typing = self.typing.lock().expect("typing poisoned");
            let room = typing.entry(room_id.to_owned()).or_default();
            match timeout {
                Some(timeout) => {
                    room.users.insert(user_id.to_owned(), Instant::now() + timeout.min(Duration::from_secs(120)));
                }
                None => {
                    room.users.remove(user_id);
                }
            }
            room.changed_at = count;
        })
    }

    /// Drop expired typers; returns whether anything changed.
    pub fn expire_typing(&self) -> Result<bool> {
        let now = Instant::now();
        let expired: Vec<OwnedRoomId> = self
            .typing
            .lock()
            .expect("typing poisoned")
            .iter()
            .filter(|(_, room)| room.users.values().any(|until| *until <= now))
            .map(|(room_id, _)| room_id.clone())
            .collect();
        if expired.is_empty() {
            return Ok(false);
        }
        // Only those rooms' members' syncs wake.
        self.with_position(Some(&expired), |count| {
            let mut typing = self.typing.lock().expect("typing poisoned");
            for room in typing.values_mut() {
                let before = room.users.len();
                room.users.retain(|_, until| *until > now);
                if room.users.len() != before {
                    room.changed_at = count;
                }
            }
            true
        })
    }

    /// The `m.typing` event for the room if it changed after `since`.
    pub fn typing_event(&self, room_id: &RoomId, since: u64) -> Option<Value> {
        let typing = self.typing.lock().expect("typing poisoned");
        let room = typing.get(room_id)?;
        if room.changed_at <= since {
            return None;
        }
        let now = Instant::now();
        let users: Vec<&OwnedUserId> = room.users.iter().filter(|(_, until)| **until > now).map(|(u, _)| u).collect();
        Some(json!({ "type": "m.typing", "content": { "user_ids": users } }))
    }

    pub fn set_receipt(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        receipt_type: &str,
        thread: &str,
        event_id: &OwnedEventId,
    ) -> Result<()> {
        let mut batch = self.db.batch();
        let count = batch.next_count_quiet();
        batch.wake_room(room_id);
        // Known before the position is released, so no sync can miss it.
        let mut latest = self.latest_receipts.lock().expect("receipts poisoned");
        let entry = latest.entry(room_id.to_owned()).or_default();
        *entry = (*entry).max(count);
        drop(latest);
        let record = StoredReceipt { event_id: event_id.clone(), ts: crate::util::now_ms(), count };
        data::put_receipt(&mut batch, room_id, user_id, receipt_type, thread, &record);
        batch.commit()?;
        Ok(())
    }

    /// The event a user's receipt of one kind (and thread, `""` for none) is at.
    pub fn receipt(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        receipt_type: &str,
        thread: &str,
    ) -> Result<Option<OwnedEventId>> {
        Ok(data::receipt(&self.db, room_id, user_id, receipt_type, thread)?.map(|r| r.event_id))
    }

    /// The `m.receipt` event with every receipt in the room newer than `since`.
    pub fn receipt_event(&self, room_id: &RoomId, since: u64, viewer: &UserId) -> Result<Option<Value>> {
        let mut content: Map<String, Value> = Map::new();
        data::each_receipt_since(&self.db, room_id, since, |user, receipt_type, thread, receipt| {
            // Private receipts are shown to their owner only.
            if receipt_type == b"m.read.private" && user != viewer.as_bytes() {
                return;
            }
            let mut data = json!({ "ts": receipt.ts });
            if !thread.is_empty() {
                data["thread_id"] = Value::String(String::from_utf8_lossy(thread).into_owned());
            }
            let by_event = content.entry(receipt.event_id.to_string()).or_insert_with(|| json!({}));
            let by_type = by_event
                .as_object_mut()
                .expect("object")
                .entry(String::from_utf8_lossy(receipt_type).into_owned())
                .or_insert_with(|| json!({}));
            by_type.as_object_mut().expect("object").insert(String::from_utf8_lossy(user).into_owned(), data);
        })?;
        if content.is_empty() {
            return Ok(None);
        }
        Ok(Some(json!({ "type": "m.receipt", "content": content })))
    }
}
