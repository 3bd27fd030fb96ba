//! Email invitations' storage.
//!
//! - `invitations`: invitation id → [`Invitation`] (JSON).
//! - `invitation_tokens`: SHA-256 of the link's secret token (hex) →
//!   invitation id. Only the hash is kept: the token lives in the mail.

use ruma::{OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    error::Result,
    storage::{Batch, Cf, Db},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invitation {
    pub id: String,
    pub email: String,
    pub rooms: Vec<OwnedRoomId>,
    pub invited_by: OwnedUserId,
    pub created_at: u64,
    pub expires_at: u64,
    pub message: Option<String>,
    /// Hash of the current link's token; a resend replaces it.
    pub token_hash: String,
    /// The mail that carries the current link.
    pub mail_id: Option<String>,
    pub revoked_at: Option<u64>,
    pub accepted_by: Option<OwnedUserId>,
    pub accepted_at: Option<u64>,
    /// The address belonged to an account here, which was invited directly.
    #[serde(default)]
    pub existing_account: bool,
    /// The rooms' pending markers have been withdrawn (revoked, expired or accepted).
    #[serde(default)]
    pub markers_removed: bool,
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn get(db: &Db, id: &str) -> Result<Option<Invitation>> {
    Ok(db.get_json(Cf::Invitations, id.as_bytes())?)
}

pub fn by_token(db: &Db, token: &str) -> Result<Option<Invitation>> {
    let Some(id) = db.get(Cf::InvitationTokens, token_hash(token).as_bytes())? else { return Ok(None) };
    get(db, &String::from_utf8_lossy(&id))
}

pub fn put(batch: &mut Batch<'_>, invitation: &Invitation) {
    batch.put_json(Cf::Invitations, invitation.id.as_bytes(), invitation);
}

pub fn put_token(batch: &mut Batch<'_>, token_hash: &str, id: &str) {
    batch.put(Cf::InvitationTokens, token_hash.as_bytes(), id.as_bytes());
}

pub fn delete_token(batch: &mut Batch<'_>, token_hash: &str) {
    batch.delete(Cf::InvitationTokens, token_hash.as_bytes());
}

pub fn all(db: &Db) -> Result<Vec<Invitation>> {
    db.scan_prefix(Cf::Invitations, b"")
        .map(|entry| {
            let (_, value) = entry?;
            Ok(crate::storage::decode(Cf::Invitations, &value)?)
        })
        .collect()
}
