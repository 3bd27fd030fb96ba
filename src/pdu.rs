//! The PDU: a room event exactly as signed and shared over federation, plus
//! the fields porch reads from it. Stored JSON is the signed object; the
//! parsed fields are a view of it.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId,
    RoomId, UInt, UserId, events::TimelineEventType,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, value::RawValue as RawJsonValue};

/// Fields of a PDU as they appear in its JSON.
#[derive(Clone, Debug, Deserialize)]
struct PduFields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawJsonValue>,
    state_key: Option<String>,
    #[serde(default, deserialize_with = "event_references")]
    prev_events: Vec<OwnedEventId>,
    #[serde(default, deserialize_with = "event_references")]
    auth_events: Vec<OwnedEventId>,
    depth: UInt,
    redacts: Option<OwnedEventId>,
}

/// Event references: ids (room versions 3+), or `[id, {hashes}]` pairs
/// (versions 1 and 2). Read without buffering: PDUs are parsed on every
/// read, and state resolution reads many.
fn event_references<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<OwnedEventId>, D::Error> {
    struct Reference(OwnedEventId);

    impl<'de> Deserialize<'de> for Reference {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Reference;

                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an event id, or an [event id, hashes] pair")
                }

                fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<Reference, E> {
                    OwnedEventId::try_from(id).map(Reference).map_err(E::custom)
                }

                fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Reference, A::Error> {
                    let id: OwnedEventId =
                        seq.next_element()?.ok_or_else(|| serde::de::Error::custom("an empty event reference"))?;
                    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                    Ok(Reference(id))
                }
            }
            deserializer.deserialize_any(Visit)
        }
    }
    Ok(Vec::<Reference>::deserialize(deserializer)?.into_iter().map(|r| r.0).collect())
}

/// The id of a signed event: in room versions 1 and 2 the `event_id` its
/// server gave it, which must name that server; later, its reference hash.
pub fn event_id_of(
    object: &CanonicalJsonObject,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<OwnedEventId, String> {
    if rules.event_format.require_event_id {
        let id = object.get("event_id").and_then(|v| v.as_str()).ok_or("the event has no `event_id`")?;
        return OwnedEventId::try_from(id).map_err(|e| format!("`event_id` is not an event id: {e}"));
    }
    let hash =
        ruma::signatures::reference_hash(object, rules).map_err(|e| format!("the event cannot be hashed: {e}"))?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| e.to_string())
}

/// For room versions 1 and 2: give an event being built here an id of
/// this server's (before it is hashed and signed, as the id is part of both).
pub fn assign_event_id(
    object: &mut CanonicalJsonObject,
    rules: &ruma::room_version_rules::RoomVersionRules,
    server_name: &ruma::ServerName,
) {
    if rules.event_format.require_event_id {
        let id = format!("${}:{server_name}", crate::util::random_string(24));
        object.insert("event_id".into(), CanonicalJsonValue::String(id));
    } else {
        object.remove("event_id");
    }
}

#[derive(Clone, Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: UInt,
    /// Top-level `redacts` (v1–v10) or `content.redacts` (v11+).
    pub redacts: Option<OwnedEventId>,
    /// The full signed PDU JSON.
    pub json: Box<RawJsonValue>,
    /// Whether the JSON has a `room_id` (v12 create events do not).
    pub has_room_id: bool,
}

/// What porch keeps about an event besides the PDU itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PduMeta {
    pub room_id: OwnedRoomId,
    /// Stream position of the event in this server's timeline (0 for
    /// outliers and for history fetched by backfill).
    pub count: u64,
    /// For history fetched by backfill: how far below the first live event
    /// it sits (1 is just before it), its timeline ordering negated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfilled: Option<u64>,
    /// State snapshot before and after the event.
    pub state_before: u64,
    pub state_after: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<TxnRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_state: Option<OwnedEventId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_content: Option<Box<RawJsonValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_because: Option<Box<RawJsonValue>>,
    /// Another server's event the auth rules refused: kept (its state is
    /// the state before it) so events that follow it can be placed, but
    /// never in the timeline, and its state is not served.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rejected: bool,
}

impl PduMeta {
    /// An event stored without a place in the timeline or known state.
    pub fn outlier(room_id: OwnedRoomId) -> Self {
        Self {
            room_id,
            count: 0,
            backfilled: None,
            state_before: 0,
            state_after: 0,
            txn: None,
            replaces_state: None,
            prev_content: None,
            redacted_because: None,
            rejected: false,
        }
    }

    /// Stream positions start at 1: position 0 marks an outlier, unless
    /// the event came by backfill.
    pub fn is_outlier(&self) -> bool {
        self.count == 0 && self.backfilled.is_none()
    }

    /// Whether the state at the event is known: events in the timeline,
    /// and those kept out of it with their state (soft-failed, rejected).
    pub fn has_state(&self) -> bool {
        !self.is_outlier() || self.state_after != 0
    }

    /// The event's place in its room's timeline: the stream position for
    /// live events, below zero for backfilled history.
    pub fn ordering(&self) -> i64 {
        match self.backfilled {
            Some(depth) => -(depth as i64),
            None => self.count as i64,
        }
    }
}

/// The device and transaction id a local client sent an event with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TxnRef {
    pub device_id: String,
    pub txn_id: String,
}

/// The stored record: meta and the PDU, in one value so one read gets both.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredPdu {
    pub meta: PduMeta,
    pub pdu: Box<RawJsonValue>,
}

impl Pdu {
    /// Parse a signed PDU. `room_id` is required for v12 create events,
    /// which carry no `room_id` field.
    pub fn from_json(
        event_id: OwnedEventId,
        room_id: &RoomId,
        json: Box<RawJsonValue>,
    ) -> Result<Self, serde_json::Error> {
        let fields: PduFields = serde_json::from_str(json.get())?;
        let redacts = fields.redacts.or_else(|| {
            #[derive(Deserialize)]
            struct Redacts {
                redacts: Option<OwnedEventId>,
            }
            if fields.kind == TimelineEventType::RoomRedaction {
                serde_json::from_str::<Redacts>(fields.content.get()).ok().and_then(|c| c.redacts)
            } else {
                None
            }
        });
        Ok(Self {
            event_id,
            has_room_id: fields.room_id.is_some(),
            room_id: fields.room_id.unwrap_or_else(|| room_id.to_owned()),
            sender: fields.sender,
            origin_server_ts: fields.origin_server_ts,
            kind: fields.kind,
            content: fields.content,
            state_key: fields.state_key,
            prev_events: fields.prev_events,
            auth_events: fields.auth_events,
            depth: fields.depth,
            redacts,
            json,
        })
    }

    pub fn from_stored(event_id: OwnedEventId, stored: &StoredPdu) -> Result<Self, serde_json::Error> {
        Self::from_json(event_id, &stored.meta.room_id, stored.pdu.clone())
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Object(Map::new()))
    }

    pub fn canonical_object(&self) -> CanonicalJsonObject {
        serde_json::from_str(self.json.get()).expect("stored PDUs are canonical JSON objects")
    }

    /// The event in the client-server API's format.
    pub fn to_client_event(&self, meta: &PduMeta, with_room_id: bool, viewer_device: Option<&str>) -> Value {
        let mut event = Map::new();
        event.insert("type".into(), Value::String(self.kind.to_string()));
        event.insert("content".into(), self.content_value());
        event.insert("event_id".into(), Value::String(self.event_id.to_string()));
        event.insert("sender".into(), Value::String(self.sender.to_string()));
        event.insert("origin_server_ts".into(), serde_json::to_value(self.origin_server_ts).unwrap_or_default());
        if with_room_id {
            event.insert("room_id".into(), Value::String(self.room_id.to_string()));
        }
        if let Some(state_key) = &self.state_key {
            event.insert("state_key".into(), Value::String(state_key.clone()));
        }
        if let Some(redacts) = &self.redacts {
            event.insert("redacts".into(), Value::String(redacts.to_string()));
        }
        let mut unsigned = Map::new();
        let age = MilliSecondsSinceUnixEpoch::now().get().saturating_sub(self.origin_server_ts.get());
        unsigned.insert("age".into(), serde_json::to_value(age).unwrap_or_default());
        if let (Some(txn), Some(device)) = (&meta.txn, viewer_device)
            && txn.device_id == device
        {
            unsigned.insert("transaction_id".into(), Value::String(txn.txn_id.clone()));
        }
        if let Some(prev) = &meta.prev_content {
            unsigned.insert("prev_content".into(), serde_json::from_str(prev.get()).unwrap_or_default());
        }
        if let Some(replaces) = &meta.replaces_state {
            unsigned.insert("replaces_state".into(), Value::String(replaces.to_string()));
        }
        if let Some(because) = &meta.redacted_because {
            let because: Value = serde_json::from_str(because.get()).unwrap_or_default();
            // The redaction's id too, as Synapse gives it and clients read it.
            if let Some(id) = because.get("event_id").cloned() {
                unsigned.insert("redacted_by".into(), id);
            }
            unsigned.insert("redacted_because".into(), because);
        }
        event.insert("unsigned".into(), Value::Object(unsigned));
        Value::Object(event)
    }

    /// The stripped form used in invite and knock state.
    pub fn to_stripped_state(&self) -> Value {
        serde_json::json!({
            "type": self.kind.to_string(),
            "state_key": self.state_key.clone().unwrap_or_default(),
            "sender": self.sender,
            "content": self.content_value(),
        })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.has_room_id.then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawJsonValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        false
    }
}

/// Room state as a map of `(event type, state key)` to event id.
pub type StateMap = BTreeMap<(String, String), OwnedEventId>;

/// Convert a serde_json object to canonical JSON, refusing floats and
/// out-of-range integers as the spec requires.
pub fn to_canonical(value: Value) -> Result<CanonicalJsonObject, String> {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        Ok(_) => Err("event content must be a JSON object".to_owned()),
        Err(e) => Err(format!("event content is not canonical JSON: {e}")),
    }
}
