//! `/versions`, `.well-known`, `/capabilities`.

use std::collections::BTreeMap;

use axum::Json;
use ruma::{
    RoomVersionId,
    api::client::discovery::{
        discover_homeserver::{self, HomeserverInfo},
        get_capabilities::{
            self,
            v3::{Capabilities, RoomVersionStability, RoomVersionsCapability},
        },
        get_supported_versions,
    },
};
use serde_json::{Value, json};

use crate::{
    api::{AppState, Ruma},
    config::SUPPORTED_ROOM_VERSIONS,
    error::Result,
};

/// Spec versions whose client-server API porch serves.
const SPEC_VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
    "v1.13", "v1.14", "v1.15",
];

pub async fn versions(
    _: AppState,
    _: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    let mut response = get_supported_versions::Response::new(SPEC_VERSIONS.iter().map(|v| (*v).to_owned()).collect());
    response.unstable_features = BTreeMap::from([
        ("org.matrix.msc3266".to_owned(), true),
        ("org.matrix.msc3083.v2".to_owned(), true),
        // Simplified sliding sync (MSC4186), which Element X needs.
        ("org.matrix.simplified_msc3575".to_owned(), true),
    ]);
    Ok(response)
}

pub async fn well_known_client(
    state: AppState,
    _: Ruma<discover_homeserver::Request>,
) -> Result<discover_homeserver::Response> {
    Ok(discover_homeserver::Response::new(HomeserverInfo::new(state.settings.client_base_url())))
}

/// `/.well-known/matrix/server`: where other servers reach this one.
pub async fn well_known_server(axum::extract::State(state): axum::extract::State<AppState>) -> Json<Value> {
    let server = if state.settings.raw.well_known.server.is_empty() {
        match state.settings.federation_addr {
            Some(addr) => format!("{}:{}", state.settings.server_name.host(), addr.port()),
            None => state.settings.server_name.to_string(),
        }
    } else {
        state.settings.raw.well_known.server.clone()
    };
    Json(json!({ "m.server": server }))
}

pub async fn capabilities(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Ruma<get_capabilities::v3::Request>,
) -> Result<Json<Value>> {
    let mut capabilities = Capabilities::new();
    let available: BTreeMap<RoomVersionId, RoomVersionStability> =
        SUPPORTED_ROOM_VERSIONS.iter().map(|v| (v.clone(), RoomVersionStability::Stable)).collect();
    capabilities.room_versions = RoomVersionsCapability::new(state.settings.default_room_version.clone(), available);
    let mut body = json!({ "capabilities": serde_json::to_value(&capabilities)? });
    let has_password = req.session().user.password_hash.is_some();
    for (name, enabled) in [
        ("m.change_password", has_password),
        ("m.set_displayname", true),
        ("m.set_avatar_url", true),
        ("m.3pid_changes", false),
        ("m.get_login_token", has_password),
    ] {
        body["capabilities"][name] = json!({ "enabled": enabled });
    }
    Ok(Json(body))
}
