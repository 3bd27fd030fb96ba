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

/// Hash a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::{Argon2, PasswordHasher, password_hash::SaltString};
    let salt = SaltString::generate(&mut rand::thread_rng());
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

/// A room id from a request, or the client's error naming what was sent.
pub fn parse_room_id(raw: &str) -> crate::error::Result<ruma::OwnedRoomId> {
    ruma::OwnedRoomId::try_from(raw)
        .map_err(|_| crate::error::Error::invalid_param(format!("`{raw}` is not a room id.")))
}
