//! Small helpers shared across services.

use rand::{Rng, distributions::Alphanumeric};

/// A random alphanumeric string (62 symbols, ~5.95 bits each).
pub fn random_string(len: usize) -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A room id from a request, or the client's error naming what was sent.
pub fn parse_room_id(raw: &str) -> crate::error::Result<ruma::OwnedRoomId> {
    ruma::OwnedRoomId::try_from(raw)
        .map_err(|_| crate::error::Error::invalid_param(format!("`{raw}` is not a room id.")))
}
