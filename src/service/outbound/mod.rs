//! The outbound queue: what other servers must receive from us (our PDUs
//! and EDUs), kept per destination in RocksDB so a restart resumes it, and
//! sent as `/send` transactions by one task per destination with back-off.
//!
//! Rows are written in the same batch as the event they carry, so an event
//! acknowledged to a client is always either sent or still queued.

mod data;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedServerName, OwnedTransactionId, RoomId, ServerName,
    api::federation::transactions::send_transaction_message,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue as RawJsonValue};
use tokio::sync::{Notify, mpsc};

use crate::{
    error::Result,
    service::Services,
    storage::{Batch, Db},
};

/// Per transaction, as the spec allows.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxItem {
    Pdu(OwnedEventId),
    Edu(Value),
}

/// Wakes the sender of a destination after rows were written for it.
pub struct OutboxSignal {
    tx: mpsc::UnboundedSender<OwnedServerName>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<OwnedServerName>>>,
}

impl Default for OutboxSignal {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { tx, rx: Mutex::new(Some(rx)) }
    }
}

impl OutboxSignal {
    pub fn wake(&self, destination: &ServerName) {
        // Only fails when the dispatcher is gone (shutting down): the rows
        // stay queued and are sent at the next start.
        let _ = self.tx.send(destination.to_owned());
    }
}

/// Queue `item` for every server in `destinations`, in `batch`.
pub fn queue(batch: &mut Batch<'_>, destinations: &BTreeSet<OwnedServerName>, item: &OutboxItem) {
    for destination in destinations {
        // No sync reports the queue.
        let seq = batch.next_count_quiet();
        data::put_row(batch, destination, seq, item);
    }
}

/// Queue an EDU for the servers of a room's remote members and wake their senders.
pub fn queue_edu_for_room(services: &Services, room_id: &RoomId, edu: Value) -> Result<()> {
    let destinations = services.rooms.remote_servers(room_id)?;
    queue_edu(services, &destinations, edu)
}

pub fn queue_edu(services: &Services, destinations: &BTreeSet<OwnedServerName>, edu: Value) -> Result<()> {
    if destinations.is_empty() {
        return Ok(());
    }
    let mut batch = services.db.batch();
    queue(&mut batch, destinations, &OutboxItem::Edu(edu));
    batch.commit()?;
    for destination in destinations {
        services.outbox.wake(destination);
    }
    Ok(())
}

/// A local user's typing change, for the room's other servers.
pub fn typing(services: &Services, room_id: &RoomId, user_id: &ruma::UserId, typing: bool) -> Result<()> {
    let edu = serde_json::json!({
        "edu_type": "m.typing",
        "content": { "room_id": room_id, "user_id": user_id, "typing": typing },
    });
    queue_edu_for_room(services, room_id, edu)
}

/// A local user's public read receipt, for the room's other servers.
pub fn receipt(
    services: &Services,
    room_id: &RoomId,
    user_id: &ruma::UserId,
    kind: &str,
    thread: &str,
    event_id: &ruma::EventId,
) -> Result<()> {
    if kind != "m.read" {
        // Private receipts stay on this server.
        return Ok(());
    }
    let mut data = serde_json::json!({ "ts": crate::util::now_ms() });
    if !thread.is_empty() {
        data["thread_id"] = Value::String(thread.to_owned());
    }
    let edu = serde_json::json!({
        "edu_type": "m.receipt",
        "content": { room_id.as_str(): { "m.read": { user_id.as_str(): { "event_ids": [event_id], "data": data } } } },
    });
    queue_edu_for_room(services, room_id, edu)
}

/// A local user's device list changed: tell the servers sharing a room
/// with them. `previous` is the user's change position before this one
/// (its `prev_id`: a server that missed it asks for the whole list).
pub fn device_list_update(
    services: &Services,
    user_id: &ruma::UserId,
    device_id: &str,
    deleted: bool,
    previous: u64,
) -> Result<()> {
    let destinations = servers_sharing_rooms(services, user_id)?;
    let stream_id = services.keys.changed_at(user_id)?;
    let prev_id: Vec<u64> = (previous != 0 && previous != stream_id).then_some(previous).into_iter().collect();
    let edu = serde_json::json!({
        "edu_type": "m.device_list_update",
        "content": {
            "user_id": user_id, "device_id": device_id, "stream_id": stream_id, "prev_id": prev_id, "deleted": deleted,
        },
    });
    queue_edu(services, &destinations, edu)
}

/// A local user's master or self-signing key changed: tell the servers
/// sharing a room with them (`m.signing_key_update`).
pub fn signing_key_update(services: &Services, user_id: &ruma::UserId) -> Result<()> {
    let destinations = servers_sharing_rooms(services, user_id)?;
    let mut content = serde_json::json!({ "user_id": user_id });
    for (kind, field) in
        [(crate::service::keys::MASTER, "master_key"), (crate::service::keys::SELF_SIGNING, "self_signing_key")]
    {
        if let Some(key) = services.keys.cross_signing_key(user_id, kind)? {
            content[field] = key;
        }
    }
    queue_edu(services, &destinations, serde_json::json!({ "edu_type": "m.signing_key_update", "content": content }))
}

/// To-device messages for other servers' users (`messages`: per server,
/// user → device or `*` → content), one `m.direct_to_device` EDU per
/// server, queued in `batch`. Returns the servers to wake once it commits.
pub fn queue_to_device(
    batch: &mut Batch<'_>,
    sender: &ruma::UserId,
    kind: &str,
    messages: BTreeMap<OwnedServerName, serde_json::Map<String, Value>>,
) -> Vec<OwnedServerName> {
    let mut destinations = Vec::new();
    for (server, messages) in messages {
        let edu = serde_json::json!({
            "edu_type": "m.direct_to_device",
            "content": { "sender": sender, "type": kind, "message_id": crate::util::random_string(16), "messages": messages },
        });
        queue(batch, &BTreeSet::from([server.clone()]), &OutboxItem::Edu(edu));
        destinations.push(server);
    }
    destinations
}

/// A local user's presence, for the servers they share a room with.
pub fn presence(
    services: &Services,
    user_id: &ruma::UserId,
    state: &ruma::presence::PresenceState,
    status_msg: Option<&str>,
) -> Result<()> {
    let destinations = servers_sharing_rooms(services, user_id)?;
    let mut update = serde_json::json!({
        "user_id": user_id, "presence": state, "last_active_ago": 0,
        "currently_active": *state == ruma::presence::PresenceState::Online,
    });
    if let Some(status_msg) = status_msg {
        update["status_msg"] = Value::from(status_msg);
    }
    queue_edu(services, &destinations, serde_json::json!({ "edu_type": "m.presence", "content": { "push": [update] } }))
}

/// The other servers with members in any room the user is joined to.
fn servers_sharing_rooms(services: &Services, user_id: &ruma::UserId) -> Result<BTreeSet<OwnedServerName>> {
    let mut destinations = BTreeSet::new();
    for (room_id, record) in services.rooms.user_rooms(user_id)? {
        if record.membership == ruma::events::room::member::MembershipState::Join {
            destinations.extend(services.rooms.remote_servers(&room_id)?.iter().cloned());
        }
    }
    Ok(destinations)
}

/// The next rows for a destination: up to 50 PDUs and 100 EDUs, in order.
fn next_rows(db: &Db, destination: &ServerName) -> Result<Vec<(u64, OutboxItem)>> {
    data::next_rows(db, destination, MAX_PDUS, MAX_EDUS)
}

/// Destinations with queued rows (at start-up).
fn queued_destinations(db: &Db) -> Result<Vec<OwnedServerName>> {
    data::queued_destinations(db)
}

/// Runs the senders: one task per destination, started when rows arrive
/// for it and at start-up for whatever the last run left queued.
pub async fn run(services: Arc<Services>) {
    let Some(mut rx) = services.outbox.rx.lock().expect("outbox signal poisoned").take() else { return };
    let mut senders: HashMap<OwnedServerName, Arc<Notify>> = HashMap::new();
    let pending = {
        let services = services.clone();
        tokio::task::spawn_blocking(move || queued_destinations(&services.db)).await
    };
    match pending {
        Ok(Ok(destinations)) => {
            if !destinations.is_empty() {
                tracing::info!(count = destinations.len(), "resuming queued federation traffic");
            }
            for destination in destinations {
                let _ = services.outbox.tx.send(destination);
            }
        }
        Ok(Err(err)) => tracing::error!("cannot read the outbox: {err}"),
        Err(err) => tracing::error!("cannot read the outbox: {err}"),
    }
    while let Some(destination) = rx.recv().await {
        let notify = senders.entry(destination.clone()).or_insert_with(|| {
            let notify = Arc::new(Notify::new());
            tokio::spawn(sender(services.clone(), destination, notify.clone()));
            notify
        });
        notify.notify_one();
    }
}

async fn sender(services: Arc<Services>, destination: OwnedServerName, notify: Arc<Notify>) {
    let max_delay = services.settings.raw.federation.max_retry_interval;
    let mut delay = Duration::from_secs(1);
    loop {
        let rows = {
            let (services, destination) = (services.clone(), destination.clone());
            tokio::task::spawn_blocking(move || next_rows(&services.db, &destination)).await
        };
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(err)) => {
                tracing::error!(%destination, "cannot read the outbox: {err}");
                tokio::time::sleep(max_delay).await;
                continue;
            }
            Err(_) => return,
        };
        if rows.is_empty() {
            notify.notified().await;
            continue;
        }
        match send_rows(&services, &destination, &rows).await {
            Ok(()) => {
                delay = Duration::from_secs(1);
                let seqs: Vec<u64> = rows.iter().map(|(seq, _)| *seq).collect();
                let (services, sent_to) = (services.clone(), destination.clone());
                let done = tokio::task::spawn_blocking(move || {
                    let mut batch = services.db.batch();
                    data::delete_rows(&mut batch, &sent_to, &seqs);
                    batch.commit()
                })
                .await;
                if !matches!(done, Ok(Ok(()))) {
                    tracing::error!(%destination, "cannot remove sent rows from the outbox");
                }
            }
            Err(err) => {
                tracing::warn!(%destination, retry_in = ?delay, "federation transaction not delivered: {err}");
                // A new event does not cut the wait short: the server is down.
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max_delay);
            }
        }
    }
}

async fn send_rows(services: &Arc<Services>, destination: &ServerName, rows: &[(u64, OutboxItem)]) -> Result<()> {
    let mut pdus: Vec<Box<RawJsonValue>> = Vec::new();
    let mut edus = Vec::new();
    for (_, row) in rows {
        match row {
            OutboxItem::Pdu(event_id) => {
                let event_id = event_id.clone();
                let found = crate::service::blocking(services, move |s| s.rooms.get_pdu(&event_id)).await?;
                if let Some((pdu, _)) = found {
                    pdus.push(pdu.json.clone());
                }
            }
            OutboxItem::Edu(edu) => {
                edus.push(ruma::serde::Raw::from_json(serde_json::value::to_raw_value(edu)?));
            }
        }
    }
    let first = rows.first().map(|(seq, _)| *seq).unwrap_or(0);
    let txn_id = OwnedTransactionId::from(format!("{first}"));
    let mut request = send_transaction_message::v1::Request::new(
        txn_id,
        services.settings.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
    );
    request.pdus = pdus;
    request.edus = edus;
    for (event_id, result) in services.federation.send_transaction(destination, request).await? {
        if let Err(why) = result {
            tracing::info!(%destination, %event_id, "the other server refused our event: {why}");
        }
    }
    Ok(())
}
