//! `POST /search` (room events), over `service::search`. The answer is
//! written as JSON: ruma's response types want group maps keyed in ways
//! the service already builds.

use axum::{Json, extract::State};
use ruma::api::client::search::search_events::{
    self,
    v3::{GroupingKey, OrderBy, SearchKeys},
};
use serde_json::{Value, json};

use crate::{
    api::{AppState, Ruma, blocking},
    error::Result,
    service::search::{self, Criteria},
};

pub async fn search(State(state): State<AppState>, req: Ruma<search_events::v3::Request>) -> Result<Json<Value>> {
    let session = req.session().clone();
    let body = req.body;
    let Some(criteria) = body.search_categories.room_events else {
        // Only room events can be searched: an empty answer for the rest.
        return Ok(Json(json!({ "search_categories": {} })));
    };
    let context = &criteria.event_context;
    let with_context = !context.is_default();
    let criteria = Criteria {
        search_term: criteria.search_term.clone(),
        keys: criteria.keys.as_ref().map(|keys| {
            keys.iter()
                .map(|k| match k {
                    SearchKeys::ContentBody => "content.body".to_owned(),
                    SearchKeys::ContentName => "content.name".to_owned(),
                    SearchKeys::ContentTopic => "content.topic".to_owned(),
                    other => other.as_str().to_owned(),
                })
                .collect()
        }),
        filter: criteria.filter.clone(),
        order_by_recent: criteria.order_by == Some(OrderBy::Recent),
        before_limit: with_context.then(|| u64::from(context.before_limit) as usize),
        after_limit: with_context.then(|| u64::from(context.after_limit) as usize),
        include_profile: context.include_profile,
        include_state: criteria.include_state == Some(true),
        group_by_room: criteria.groupings.group_by.iter().any(|g| g.key == Some(GroupingKey::RoomId)),
        group_by_sender: criteria.groupings.group_by.iter().any(|g| g.key == Some(GroupingKey::Sender)),
        next_batch: body.next_batch.clone(),
    };
    Ok(Json(blocking(&state, move |s| search::search(s, &session.user_id, criteria)).await?))
}
