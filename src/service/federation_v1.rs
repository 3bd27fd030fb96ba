//! The deprecated v1 forms of `send_join` and `invite`, for servers that
//! know no v2 (older ones, and Matrix's test suite's own): the signed event
//! goes as it is, and the answer comes wrapped as `[200, answer]`. ruma's
//! v1 invite type carries only some of the event's fields, and it has no
//! v1 `send_join`, hence these.

use ruma::{EventId, RoomId, ServerName};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    error::{Error, Result},
    service::federation::Federation,
};

/// A peer that knows no v2 form answers its path with 404 or 400 `M_UNRECOGNIZED`.
pub fn lacks_v2(err: &Error) -> bool {
    err.status == http::StatusCode::NOT_FOUND || err.errcode == "M_UNRECOGNIZED"
}

/// `PUT /v1/send_join`: the room state (v2's answer) from inside `[200, …]`.
pub async fn send_join(
    federation: &Federation,
    server: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    pdu: &RawJsonValue,
) -> Result<Box<RawJsonValue>> {
    let path = format!("/_matrix/federation/v1/send_join/{}/{}", encode(room_id.as_str()), encode(event_id.as_str()));
    let answer = federation.send_json(server, http::Method::PUT, &path, pdu).await?;
    unwrap_answer(&answer).ok_or_else(|| Error::bad_json(format!("{server} answered its v1 send_join oddly")))
}

/// `PUT /v1/invite`: the event (with `unsigned.invite_room_state`) goes
/// whole; the answer is `[200, {"event": signed}]`.
pub async fn invite(
    federation: &Federation,
    server: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    event: &RawJsonValue,
) -> Result<Box<RawJsonValue>> {
    let path = format!("/_matrix/federation/v1/invite/{}/{}", encode(room_id.as_str()), encode(event_id.as_str()));
    let answer = federation.send_json(server, http::Method::PUT, &path, event).await?;
    unwrap_answer(&answer).ok_or_else(|| Error::bad_json(format!("{server} answered its v1 invite oddly")))
}

/// The answer inside `[200, answer]`.
fn unwrap_answer(raw: &RawJsonValue) -> Option<Box<RawJsonValue>> {
    let (code, answer): (u16, Box<RawJsonValue>) = serde_json::from_str(raw.get()).ok()?;
    (code == 200).then_some(answer)
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>().replace('+', "%20")
}
