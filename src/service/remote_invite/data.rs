//! Pending remote invites' storage: column family `remote_invites`, owned
//! here.
//!
//! - `remote_invites`: invite (or knock) event id → [`RemoteInvite`], a
//!   pending invite to, or knock on, a room porch does not hold

use ruma::EventId;

use super::RemoteInvite;
use crate::{
    error::Result,
    storage::{Batch, Cf, Db},
};

/// The pending invite or knock stored under its event id.
pub(crate) fn pending_invite_record(db: &Db, event_id: &EventId) -> Result<Option<RemoteInvite>> {
    Ok(db.get_json(Cf::RemoteInvites, event_id.as_bytes())?)
}

pub(crate) fn put_pending(batch: &mut Batch<'_>, event_id: &EventId, invite: &RemoteInvite) {
    batch.put_json(Cf::RemoteInvites, event_id.as_bytes(), invite);
}

pub(crate) fn delete_pending(batch: &mut Batch<'_>, event_id: &EventId) {
    batch.delete(Cf::RemoteInvites, event_id.as_bytes());
}
