//! The server-server API served on the TLS listener. So far: the server's
//! published signing keys and its version; the rest of federation is next.

use std::{collections::BTreeMap, time::Duration};

use ruma::{
    CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerSigningKeyId,
    api::federation::discovery::{ServerSigningKeys, VerifyKey, get_server_keys, get_server_version},
    serde::{Base64, Raw},
};

use crate::{
    api::{AppState, Routes, Ruma},
    error::{Error, Result},
};

/// How long other servers may cache our keys.
const KEY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

pub fn register(r: &mut Routes) {
    r.ruma::<get_server_keys::v2::Request, _, _>(server_keys).ruma::<get_server_version::v1::Request, _, _>(version);
}

async fn version(_: AppState, _: Ruma<get_server_version::v1::Request>) -> Result<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("porch".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}

/// `/_matrix/key/v2/server`: our verify key, signed by itself.
async fn server_keys(state: AppState, _: Ruma<get_server_keys::v2::Request>) -> Result<get_server_keys::v2::Response> {
    let key_id = OwnedServerSigningKeyId::try_from(state.signing.key_id()).map_err(Error::internal)?;
    let verify_key = VerifyKey::new(Base64::new(state.signing.key_pair.public_key().to_vec()));
    let valid_until = MilliSecondsSinceUnixEpoch::from_system_time(std::time::SystemTime::now() + KEY_VALIDITY)
        .ok_or_else(|| Error::internal("key validity out of range"))?;
    let mut keys = ServerSigningKeys::new(state.settings.server_name.clone(), valid_until);
    keys.verify_keys = BTreeMap::from([(key_id, verify_key)]);
    let mut object = match ruma::canonical_json::to_canonical_value(&keys).map_err(Error::internal)? {
        CanonicalJsonValue::Object(object) => object,
        _ => return Err(Error::internal("server keys are not an object")),
    };
    ruma::signatures::sign_json(state.settings.server_name.as_str(), &state.signing.key_pair, &mut object)
        .map_err(Error::internal)?;
    let raw = Raw::from_json(serde_json::value::to_raw_value(&object)?);
    Ok(get_server_keys::v2::Response::new(raw))
}
