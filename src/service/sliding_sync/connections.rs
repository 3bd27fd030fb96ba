//! Sliding-sync connections: what each client connection was sent, per
//! room, so the next request sends only what changed.
//!
//! A connection is one `(user, device, conn_id)`. Its `pos` names a
//! generation; only the newest two are accepted, so a client that lost a
//! response can repeat its request and gets the same changes again (the
//! newest generation's room entries are rolled back first). Kept in memory
//! and bounded: after a restart, or when evicted, a client's `pos` is
//! unknown and it starts a new connection (`M_UNKNOWN_POS`), which every
//! sliding-sync client does on its own.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, events::room::member::MembershipState};

use crate::error::{Error, Result};

/// Connections kept in all; past this the least recently used one goes.
const MAX_CONNECTIONS: usize = 10_000;

/// Connections one device may keep (clients use two: room list and encryption).
const MAX_CONNECTIONS_PER_DEVICE: usize = 8;

/// A connection unused this long is forgotten.
const IDLE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Members `$LAZY` remembers having sent per room before it starts again
/// (sending a member twice is harmless).
pub const MAX_LAZY_MEMBERS: usize = 1_000;

type Key = (OwnedUserId, OwnedDeviceId, String);

#[derive(Default)]
pub struct Connections {
    all: Mutex<HashMap<Key, Arc<Mutex<Connection>>>>,
}

/// The required state a room was sent with, normalised (sorted, deduplicated).
pub type RequiredState = BTreeSet<(String, String)>;

/// What a connection holds of one room.
#[derive(Clone, Debug)]
pub struct RoomSent {
    /// Stream position up to which the client has the room.
    pub upto: u64,
    pub membership: MembershipState,
    pub timeline_limit: usize,
    pub required_state: Arc<RequiredState>,
    /// The members `$LAZY` sent.
    pub lazy_members: BTreeSet<OwnedUserId>,
}

#[derive(Clone, Debug, Default)]
struct Versioned {
    /// As of `generation`.
    current: Option<RoomSent>,
    generation: u64,
    /// As of the generation before, for a repeated request.
    before: Option<RoomSent>,
}

/// One response's position.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    pub number: u64,
    /// The stream position its response covered (`None`: none yet).
    pub stream: Option<u64>,
    pub list_counts: BTreeMap<String, u64>,
}

pub struct Connection {
    nonce: u64,
    last_used: Instant,
    latest: Generation,
    previous: Option<Generation>,
    rooms: HashMap<OwnedRoomId, Versioned>,
    /// The rooms the latest generation changed (rolled back on a repeat).
    touched: Vec<OwnedRoomId>,
    /// The user's rooms as of the last request (server state, whatever the
    /// client holds, so a repeated request keeps it).
    pub room_list: Option<super::room_list::RoomList>,
    /// Each list's `required_state` as last asked for (shared with the
    /// rooms sent with it).
    pub list_required_state: HashMap<String, Arc<RequiredState>>,
}

impl Connection {
    fn new() -> Self {
        Self {
            nonce: rand::random::<u64>() >> 12,
            last_used: Instant::now(),
            latest: Generation::default(),
            previous: None,
            rooms: HashMap::new(),
            touched: Vec::new(),
            room_list: None,
            list_required_state: HashMap::new(),
        }
    }

    /// The generation the client's `pos` names, rolled back to if it is
    /// the one before the newest.
    fn resume(&mut self, pos: &str) -> Result<()> {
        let (nonce, number) = parse_pos(pos).ok_or_else(unknown_pos)?;
        if nonce != self.nonce {
            return Err(unknown_pos());
        }
        if number == self.latest.number {
            return Ok(());
        }
        match self.previous.take() {
            Some(previous) if previous.number == number => {
                for room_id in std::mem::take(&mut self.touched) {
                    if let Some(entry) = self.rooms.get_mut(&room_id)
                        && entry.generation == self.latest.number
                    {
                        entry.current = entry.before.take();
                        entry.generation = previous.number;
                    }
                }
                self.latest = previous;
                Ok(())
            }
            other => {
                self.previous = other;
                Err(unknown_pos())
            }
        }
    }

    /// The generation a request builds on.
    pub fn base(&self) -> &Generation {
        &self.latest
    }

    pub fn pos(&self) -> String {
        format_pos(self.nonce, self.latest.number)
    }

    /// What the client holds of `room_id` as of the base generation.
    pub fn room(&self, room_id: &OwnedRoomId) -> Option<&RoomSent> {
        self.rooms.get(room_id).and_then(|entry| entry.current.as_ref())
    }

    /// Start a new generation with what was just sent; returns its `pos`.
    pub fn advance(
        &mut self,
        stream: u64,
        list_counts: BTreeMap<String, u64>,
        sent: Vec<(OwnedRoomId, RoomSent)>,
    ) -> String {
        let number = self.latest.number + 1;
        let mut touched = Vec::with_capacity(sent.len());
        for (room_id, room) in sent {
            let entry = self.rooms.entry(room_id.clone()).or_default();
            entry.before = entry.current.take();
            entry.current = Some(room);
            entry.generation = number;
            touched.push(room_id);
        }
        self.touched = touched;
        let next = Generation { number, stream: Some(stream), list_counts };
        self.previous = Some(std::mem::replace(&mut self.latest, next));
        self.pos()
    }

    /// The rooms the client holds.
    pub fn held_rooms(&self) -> impl Iterator<Item = &OwnedRoomId> {
        self.rooms.iter().filter(|(_, entry)| entry.current.is_some()).map(|(room_id, _)| room_id)
    }
}

impl Connections {
    /// The connection a request is for: a new one without `pos` (which
    /// replaces any of that id), else the one `pos` names, at that
    /// position, or `M_UNKNOWN_POS`.
    pub fn open(
        &self,
        user_id: &OwnedUserId,
        device_id: &OwnedDeviceId,
        conn_id: &str,
        pos: Option<&str>,
    ) -> Result<Arc<Mutex<Connection>>> {
        let key = (user_id.clone(), device_id.clone(), conn_id.to_owned());
        let mut all = self.all.lock().expect("connections poisoned");
        let now = Instant::now();
        let Some(pos) = pos else {
            if !all.contains_key(&key) {
                make_room(&mut all, &key, now);
            }
            let connection = Arc::new(Mutex::new(Connection::new()));
            all.insert(key, connection.clone());
            return Ok(connection);
        };
        let connection = all.get(&key).cloned().ok_or_else(unknown_pos)?;
        drop(all);
        let mut guard = connection.lock().expect("connection poisoned");
        guard.resume(pos)?;
        guard.last_used = now;
        drop(guard);
        Ok(connection)
    }

    /// How many connections are kept (for the figures).
    pub fn len(&self) -> usize {
        self.all.lock().expect("connections poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget a device's connections (it signed out).
    pub fn forget_device(&self, user_id: &ruma::UserId, device_id: &ruma::DeviceId) {
        self.all.lock().expect("connections poisoned").retain(|(u, d, _), _| !(*u == user_id && *d == device_id));
    }
}

/// Make room for one more connection under `key`: expired ones go, then
/// the device's oldest past its share, then the oldest of all past the bound.
fn make_room(all: &mut HashMap<Key, Arc<Mutex<Connection>>>, key: &Key, now: Instant) {
    let last_used = |c: &Arc<Mutex<Connection>>| c.try_lock().map(|c| c.last_used).unwrap_or(now);
    all.retain(|_, c| now.duration_since(last_used(c)) < IDLE_EXPIRY);
    let mine: Vec<(Key, Instant)> = all
        .iter()
        .filter(|((u, d, _), _)| *u == key.0 && *d == key.1)
        .map(|(k, c)| (k.clone(), last_used(c)))
        .collect();
    if mine.len() >= MAX_CONNECTIONS_PER_DEVICE
        && let Some((oldest, _)) = mine.into_iter().min_by_key(|(_, used)| *used)
    {
        all.remove(&oldest);
    }
    if all.len() >= MAX_CONNECTIONS
        && let Some(oldest) = all.iter().min_by_key(|(_, c)| last_used(c)).map(|(k, _)| k.clone())
    {
        all.remove(&oldest);
    }
}

fn format_pos(nonce: u64, number: u64) -> String {
    format!("{nonce:x}_{number}")
}

fn parse_pos(pos: &str) -> Option<(u64, u64)> {
    let (nonce, number) = pos.split_once('_')?;
    Some((u64::from_str_radix(nonce, 16).ok()?, number.parse().ok()?))
}

pub fn unknown_pos() -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        "M_UNKNOWN_POS",
        "This position is not known (the connection expired or the server restarted): start again without `pos`.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(upto: u64) -> RoomSent {
        RoomSent {
            upto,
            membership: MembershipState::Join,
            timeline_limit: 1,
            required_state: Arc::default(),
            lazy_members: BTreeSet::new(),
        }
    }

    #[test]
    fn a_repeated_request_rolls_back_what_the_lost_response_sent() {
        let (user, device): (OwnedUserId, OwnedDeviceId) = ("@a:x".try_into().unwrap(), "D".into());
        let connections = Connections::default();
        let connection = connections.open(&user, &device, "room-list", None).unwrap();
        let room: OwnedRoomId = "!r:x".try_into().unwrap();
        let first = connection.lock().unwrap().advance(5, BTreeMap::new(), vec![(room.clone(), sent(5))]);
        let second = connection.lock().unwrap().advance(9, BTreeMap::new(), vec![(room.clone(), sent(9))]);
        assert_ne!(first, second);

        // The client never got `second`: it repeats with `first`.
        let connection = connections.open(&user, &device, "room-list", Some(&first)).unwrap();
        let guard = connection.lock().unwrap();
        assert_eq!(guard.room(&room).map(|r| r.upto), Some(5));
        assert_eq!(guard.base().stream, Some(5));
        drop(guard);

        // Older positions, other connections' and malformed ones are unknown.
        let third = connection.lock().unwrap().advance(12, BTreeMap::new(), vec![]);
        let fourth = connection.lock().unwrap().advance(13, BTreeMap::new(), vec![]);
        for pos in [first.as_str(), "zz", "1_1", ""] {
            let err = connections.open(&user, &device, "room-list", Some(pos)).err().expect("unknown pos");
            assert_eq!(err.errcode, "M_UNKNOWN_POS");
        }
        assert!(connections.open(&user, &device, "encryption", Some(&fourth)).is_err());
        assert!(connections.open(&user, &device, "room-list", Some(&third)).is_ok());
    }

    #[test]
    fn connections_are_bounded_per_device() {
        let (user, device): (OwnedUserId, OwnedDeviceId) = ("@a:x".try_into().unwrap(), "D".into());
        let connections = Connections::default();
        for n in 0..(MAX_CONNECTIONS_PER_DEVICE * 3) {
            connections.open(&user, &device, &format!("c{n}"), None).unwrap();
        }
        assert_eq!(connections.len(), MAX_CONNECTIONS_PER_DEVICE);
        connections.forget_device(&user, &device);
        assert!(connections.is_empty());
    }
}
