//! The server's ed25519 signing key: made at first start, kept in the
//! database, and used for every PDU and federation request porch signs.

use base64::Engine;
use ruma::signatures::Ed25519KeyPair;

use crate::storage::{Cf, Db, StorageResult};

const KEY_RECORD: &[u8] = b"signing_key";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredKey {
    /// The key version, the part after `ed25519:` in the key id.
    version: String,
    /// PKCS#8 DER document, base64.
    pkcs8: String,
}

pub struct SigningKey {
    pub key_pair: Ed25519KeyPair,
    pub version: String,
}

impl SigningKey {
    /// Load the key, or make and store one on first start.
    pub fn load_or_create(db: &Db) -> StorageResult<Self> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let stored = match db.get_json::<StoredKey>(Cf::Meta, KEY_RECORD)? {
            Some(stored) => stored,
            None => {
                let document = Ed25519KeyPair::generate();
                let version = format!("a_{}", crate::util::random_string(4));
                let stored = StoredKey { version, pkcs8: b64.encode(&document[..]) };
                db.put_json(Cf::Meta, KEY_RECORD, &stored)?;
                tracing::info!(key_id = %format!("ed25519:{}", stored.version), "made a new server signing key");
                stored
            }
        };
        let document = b64.decode(&stored.pkcs8).expect("stored signing key is base64");
        let key_pair = Ed25519KeyPair::from_der(&document, stored.version.clone())
            .expect("stored signing key is a valid PKCS#8 ed25519 key");
        Ok(Self { key_pair, version: stored.version })
    }

    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.key_pair.public_key())
    }
}
