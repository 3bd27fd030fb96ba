//! Registration tokens: seeded from config, uses counted in the database.

mod data;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{error::Result, storage::Db, util};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `None`: unlimited.
    pub uses_allowed: Option<u64>,
    pub completed: u64,
    pub expiry_time: Option<u64>,
}

pub struct Registration {
    db: Arc<Db>,
    any_tokens: bool,
    /// Held from the last validity check to the use being counted, so a
    /// single-use token cannot register two accounts at once.
    use_lock: std::sync::Mutex<()>,
}

impl Registration {
    pub fn new(db: Arc<Db>, config_tokens: &[String]) -> anyhow::Result<Self> {
        for token in config_tokens {
            data::seed_token(&db, token)?;
        }
        let any_tokens = data::any_token(&db);
        Ok(Self { db, any_tokens, use_lock: std::sync::Mutex::new(()) })
    }

    /// Whether registration needs a token (any token exists).
    pub fn requires_token(&self) -> bool {
        self.any_tokens
    }

    pub fn is_valid(&self, token: &str) -> Result<bool> {
        if !crate::config::valid_registration_token(token) {
            return Ok(false);
        }
        let Some(record) = data::token(&self.db, token)? else {
            return Ok(false);
        };
        let unused = record.uses_allowed.is_none_or(|allowed| record.completed < allowed);
        let fresh = record.expiry_time.is_none_or(|expiry| util::now_ms() < expiry);
        Ok(unused && fresh)
    }

    /// Run `register` if the token is still valid, and count the use if it
    /// succeeds; check and count happen under one lock.
    pub fn use_token<T>(&self, token: &str, register: impl FnOnce() -> Result<T>) -> Result<T> {
        let _guard = self.use_lock.lock().expect("token lock poisoned");
        if !self.is_valid(token)? {
            return Err(crate::error::Error::forbidden("The registration token is no longer valid."));
        }
        let out = register()?;
        if let Some(mut record) = data::token(&self.db, token)? {
            record.completed += 1;
            data::save_token(&self.db, token, &record)?;
        }
        Ok(out)
    }
}

/// One-time nonces for shared-secret registration, valid for a minute.
#[derive(Default)]
pub struct Nonces {
    issued: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Nonces {
    pub fn issue(&self) -> String {
        let nonce = util::random_string(32);
        let mut issued = self.issued.lock().expect("nonces poisoned");
        issued.retain(|_, at| at.elapsed() < std::time::Duration::from_secs(60));
        issued.insert(nonce.clone(), std::time::Instant::now());
        nonce
    }

    pub fn take(&self, nonce: &str) -> bool {
        let mut issued = self.issued.lock().expect("nonces poisoned");
        matches!(issued.remove(nonce), Some(at) if at.elapsed() < std::time::Duration::from_secs(60))
    }
}
