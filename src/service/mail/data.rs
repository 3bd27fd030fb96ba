//! The mail queue's storage: column family `mails`, key = mail id (creation
//! time in hex ‖ random, so keys sort by age), value = [`Mail`] as JSON.

use serde::{Deserialize, Serialize};

use crate::{
    error::Result,
    storage::{Batch, Cf, Db},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailState {
    /// Waiting for its (next) try.
    Queued,
    /// Tried and failed for a reason that may pass (server down, timeout).
    Failing,
    /// Accepted by the mail server.
    Sent,
    /// Refused for good by the mail server (e.g. no such mailbox).
    Failed,
    /// No mail server is configured: written to the log and kept for the outbox.
    Logged,
    /// Withdrawn before it was sent (its invitation was revoked or resent).
    Cancelled,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mail {
    pub id: String,
    pub to: String,
    pub subject: String,
    /// The bodies; dropped once the mail is sent, since they hold a secret link.
    pub text: Option<String>,
    pub html: Option<String>,
    pub created_at: u64,
    pub state: MailState,
    pub attempts: u32,
    pub next_attempt_at: u64,
    pub last_error: Option<String>,
    pub sent_at: Option<u64>,
}

pub fn get(db: &Db, id: &str) -> Result<Option<Mail>> {
    Ok(db.get_json(Cf::Mails, id.as_bytes())?)
}

pub fn put(batch: &mut Batch<'_>, mail: &Mail) {
    batch.put_json(Cf::Mails, mail.id.as_bytes(), mail);
}

pub fn save(db: &Db, mail: &Mail) -> Result<()> {
    let mut batch = db.batch();
    put(&mut batch, mail);
    Ok(batch.commit_durable()?)
}

/// Every mail, oldest first.
pub fn all(db: &Db) -> Result<Vec<Mail>> {
    db.scan_prefix(Cf::Mails, b"")
        .map(|entry| {
            let (_, value) = entry?;
            Ok(crate::storage::decode(Cf::Mails, &value)?)
        })
        .collect()
}

pub fn delete(batch: &mut Batch<'_>, id: &str) {
    batch.delete(Cf::Mails, id.as_bytes());
}
