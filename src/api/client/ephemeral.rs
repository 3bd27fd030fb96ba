//! Typing, receipts and read markers.

use std::time::Duration;

use ruma::{
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
        typing::create_typing_event::{self, v3::Typing},
    },
    events::receipt::ReceiptThread,
};
use serde_json::json;

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    service::{outbound, push},
};

pub async fn typing(
    state: AppState,
    req: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        if req.body.user_id != session.user_id {
            return Err(Error::forbidden("You can only set your own typing state."));
        }
        if !s.rooms.is_joined(&req.body.room_id, &session.user_id)? {
            return Err(Error::forbidden("You are not in this room."));
        }
        let timeout = match req.body.state {
            Typing::Yes(info) => Some(info.timeout),
            _ => None,
        };
        s.ephemeral.set_typing(&req.body.room_id, &session.user_id, timeout.map(|t: Duration| t))?;
        outbound::typing(s, &req.body.room_id, &session.user_id, timeout.is_some())?;
        Ok(create_typing_event::v3::Response::new())
    })
    .await
}

fn thread_key(thread: &ReceiptThread) -> String {
    match thread {
        ReceiptThread::Main => "main".to_owned(),
        ReceiptThread::Thread(id) => id.to_string(),
        _ => String::new(),
    }
}

/// Record a receipt or marker after checking the event is in the room.
fn receipt(
    s: &crate::service::Services,
    session: &crate::service::users::Session,
    room_id: &ruma::RoomId,
    event_id: &ruma::EventId,
    kind: &str,
    thread: &str,
) -> Result<()> {
    if !s.rooms.is_joined(room_id, &session.user_id)? {
        return Err(Error::forbidden("You are not in this room."));
    }
    if s.rooms.get_pdu(event_id)?.filter(|(p, _)| p.room_id == room_id).is_none() {
        return Err(Error::not_found("No such event in this room."));
    }
    match kind {
        "m.fully_read" => {
            s.account_data.set(&session.user_id, Some(room_id), "m.fully_read", &json!({ "event_id": event_id }))?;
        }
        _ => {
            // Receipts only move forward, as Synapse keeps them: one for an
            // earlier event than the user's current one changes nothing.
            if let Some(current) = s.ephemeral.receipt(room_id, &session.user_id, kind, thread)?
                && let (Some((_, old)), Some((_, new))) = (s.rooms.get_pdu(&current)?, s.rooms.get_pdu(event_id)?)
                && new.ordering() < old.ordering()
            {
                return Ok(());
            }
            let event_id = event_id.to_owned();
            s.ephemeral.set_receipt(room_id, &session.user_id, kind, thread, &event_id)?;
            outbound::receipt(s, room_id, &session.user_id, kind, thread, &event_id)?;
            push::reset_counts(s, &session.user_id, room_id, thread)?;
        }
    }
    Ok(())
}

pub async fn create_receipt(
    state: AppState,
    req: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let kind = match &body.receipt_type {
            ReceiptType::Read => "m.read",
            ReceiptType::ReadPrivate => "m.read.private",
            ReceiptType::FullyRead => "m.fully_read",
            _ => return Err(Error::invalid_param("Unknown receipt type.")),
        };
        receipt(s, req.session(), &body.room_id, &body.event_id, kind, &thread_key(&body.thread))?;
        Ok(create_receipt::v3::Response::new())
    })
    .await
}

pub async fn read_markers(
    state: AppState,
    req: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let session = req.session();
        if let Some(event_id) = &body.fully_read {
            receipt(s, session, &body.room_id, event_id, "m.fully_read", "")?;
        }
        if let Some(event_id) = &body.read_receipt {
            receipt(s, session, &body.room_id, event_id, "m.read", "")?;
        }
        if let Some(event_id) = &body.private_read_receipt {
            receipt(s, session, &body.room_id, event_id, "m.read.private", "")?;
        }
        Ok(set_read_marker::v3::Response::new())
    })
    .await
}
