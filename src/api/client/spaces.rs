//! Spaces: the room hierarchy under a space.

use ruma::api::client::space::get_hierarchy;

use crate::{
    api::{AppState, Ruma},
    error::Result,
    service::spaces::{self, HierarchyRequest},
};

pub async fn hierarchy(state: AppState, req: Ruma<get_hierarchy::v1::Request>) -> Result<get_hierarchy::v1::Response> {
    let session = req.session().clone();
    let body = req.body;
    let request = HierarchyRequest {
        room_id: body.room_id,
        from: body.from,
        limit: body.limit,
        max_depth: body.max_depth,
        suggested_only: body.suggested_only,
    };
    let (rooms, next_batch) = spaces::hierarchy(&state, &session, request).await?;
    let mut response = get_hierarchy::v1::Response::new();
    response.rooms = rooms;
    response.next_batch = next_batch;
    Ok(response)
}
