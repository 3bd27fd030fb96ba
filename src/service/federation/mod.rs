//! Talking to other servers: finding them (server discovery), signing our
//! requests (X-Matrix), fetching, verifying and caching their keys, and
//! verifying the requests they send us.

mod data;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::BytesMut;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, ServerName,
    api::{
        IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
        federation::{
            authentication::{ServerSignatures, XMatrix, XMatrixSigningInput},
            transactions::send_transaction_message,
        },
    },
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet},
};
use serde::{Deserialize, Serialize};

use crate::{
    config::Settings,
    error::{Error, Result},
    service::{
        address_guard::AddressGuard,
        discovery::{self, Discovery, Dns},
    },
    signing::SigningKey,
    storage::Db,
    util,
};

/// A remote server's verify keys as we last fetched and checked them.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CachedKeys {
    keys: BTreeMap<String, String>,
    valid_until: u64,
    /// Keys the server used before: key id → (key, until when it signed).
    /// They verify events sent before then (`old_verify_keys`, and keys
    /// that left `verify_keys` since we last fetched).
    #[serde(default)]
    old_keys: BTreeMap<String, (String, u64)>,
    /// The server's own signed key object, handed on by the key notary.
    #[serde(default)]
    signed: Option<serde_json::Value>,
}

/// Keys still valid are fetched again at most this often.
const REFETCH_AFTER: Duration = Duration::from_secs(300);
/// A server whose signature names a key id we do not know is asked again
/// at most this often (it may have rotated its key).
const UNKNOWN_KEY_REFETCH_AFTER: Duration = Duration::from_secs(30);

/// How long other servers may cache our keys.
const KEY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

pub struct Federation {
    db: Arc<Db>,
    signing: Arc<SigningKey>,
    server_name: OwnedServerName,
    http: reqwest::Client,
    /// Plain HTTPS (names resolved normally, through the guard): `.well-known`, push gateways.
    web: reqwest::Client,
    discovery: Discovery,
    guard: Arc<AddressGuard>,
    keys: Mutex<HashMap<OwnedServerName, CachedKeys>>,
    /// Notaries asked for a server's keys when the server cannot be.
    trusted_key_servers: Vec<OwnedServerName>,
    /// When still-valid keys were last fetched again, per server.
    fetched_at: Mutex<HashMap<OwnedServerName, std::time::Instant>>,
    /// When keys were last fetched for an unknown key id, per server.
    unknown_key_fetched_at: Mutex<HashMap<OwnedServerName, std::time::Instant>>,
}

/// The caller learns that `server` could not be reached, never what was
/// found on the way (a caller may name any host): the detail goes to the log.
fn unreachable(server: &ServerName, why: impl std::fmt::Display) -> Error {
    tracing::info!(%server, "cannot reach the server: {why}");
    Error::new(
        http::StatusCode::BAD_GATEWAY,
        "DEV.PORCH.SERVER_UNREACHABLE",
        format!("{server} cannot be reached, or did not answer as a Matrix server."),
    )
}

/// The most a federation answer may take (a `send_join` of a large room is the largest).
const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;
/// The most a key answer may take.
const MAX_KEY_RESPONSE_BYTES: usize = 1024 * 1024;
/// Redirects followed at most (for `.well-known`; each hop is checked by the guard).
const MAX_REDIRECTS: usize = 5;

/// A peer's 400/403/404 as the error to pass on (other statuses, such as
/// its 401, would mislead our client: they become 502).
fn refusal(destination: &ServerName, status: http::StatusCode, bytes: &[u8]) -> Option<Error> {
    if !matches!(status.as_u16(), 400 | 403 | 404) {
        return None;
    }
    #[derive(Deserialize)]
    struct MatrixError {
        errcode: String,
        error: Option<String>,
        /// With `M_INCOMPATIBLE_ROOM_VERSION`: the room's version, for the client.
        room_version: Option<String>,
    }
    if let Ok(refusal) = serde_json::from_slice::<MatrixError>(bytes) {
        let message = format!("{destination}: {}", refusal.error.unwrap_or_else(|| refusal.errcode.clone()));
        let error = Error::new(status, refusal.errcode, message);
        return Some(match refusal.room_version {
            Some(version) => error.with("room_version", serde_json::Value::String(version)),
            None => error,
        });
    }
    // A refusal without a Matrix error body is still that refusal.
    let errcode = match status.as_u16() {
        403 => "M_FORBIDDEN",
        404 => "M_NOT_FOUND",
        _ => "M_UNKNOWN",
    };
    Some(Error::new(status, errcode, format!("{destination} answered {status}.")))
}

/// Another server's answer as ruma's response type; its 400/403/404
/// refusal passed on naming it, anything else unusable as 502.
fn parse_answer<R: OutgoingRequest>(
    destination: &ServerName,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    bytes: &[u8],
) -> Result<R::IncomingResponse> {
    if let Some(refusal) = refusal(destination, status, bytes) {
        return Err(refusal);
    }
    let mut http_response = http::Response::builder().status(status);
    for (name, value) in headers {
        http_response = http_response.header(name, value);
    }
    let http_response = http_response.body(bytes).map_err(Error::internal)?;
    <R::IncomingResponse as IncomingResponseExt>::try_from_http_response(http_response).map_err(|e| {
        Error::new(
            http::StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("{destination} answered in a way porch cannot use: {e}"),
        )
    })
}

/// Read a response body, refusing more than `limit` bytes.
pub async fn read_bounded(mut response: reqwest::Response, limit: usize) -> std::result::Result<bytes::Bytes, String> {
    if response.content_length().is_some_and(|len| len > limit as u64) {
        return Err(format!("the answer is larger than {limit} bytes"));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An HTTP client whose every connection passes `guard`: names resolve
/// through it (see `discovery::Resolver`), address literals and redirect
/// targets are checked before connecting.
pub fn guarded_client(
    guard: &Arc<AddressGuard>,
    builder: reqwest::ClientBuilder,
    resolver: discovery::Resolver,
) -> reqwest::Result<reqwest::Client> {
    let redirect_guard = guard.clone();
    builder
        .dns_resolver(resolver)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if redirect_guard.check_url(attempt.url()).is_err() {
                attempt.error(crate::service::address_guard::Refused)
            } else {
                attempt.follow()
            }
        }))
        .build()
}

impl Federation {
    pub fn new(db: Arc<Db>, signing: Arc<SigningKey>, settings: &Settings) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let fed = &settings.raw.federation;
        let mut name_servers = Vec::new();
        for server in &fed.dns_servers {
            name_servers.push(server.parse::<std::net::SocketAddr>().map_err(|_| {
                anyhow::anyhow!(
                    "`federation.dns_servers` holds {server:?}; write each as \"ip:port\", e.g. \"9.9.9.9:53\""
                )
            })?);
        }
        let guard = Arc::new(
            AddressGuard::new(&settings.raw.outbound.ip_range_denylist, &settings.raw.outbound.ip_range_allowlist)
                .map_err(|why| anyhow::anyhow!("`outbound` holds {why}"))?,
        );
        let dns = Dns::new(&name_servers, guard.clone())?;
        let mut trusted_key_servers = Vec::new();
        for server in &fed.trusted_key_servers {
            trusted_key_servers.push(OwnedServerName::try_from(server.as_str()).map_err(|_| {
                anyhow::anyhow!("`federation.trusted_key_servers` holds {server:?}, which is not a server name")
            })?);
        }
        let mut trusted_ca = None;
        if !fed.trusted_ca.is_empty() {
            let pem = std::fs::read(&fed.trusted_ca).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read `federation.trusted_ca` ({}): {e}; give the path of a PEM CA certificate",
                    fed.trusted_ca
                )
            })?;
            trusted_ca = Some(reqwest::Certificate::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!("`federation.trusted_ca` is not a PEM certificate ({e}); fix the file")
            })?);
        }
        if !fed.verify_certificates {
            tracing::warn!(
                "federation.verify_certificates is off: other servers' TLS certificates are not checked (for labs only)"
            );
        }
        let client = |follow_srv: bool| -> reqwest::Result<reqwest::Client> {
            let mut builder = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("porch/", env!("CARGO_PKG_VERSION")))
                // A system proxy would resolve names itself, past the guard.
                .no_proxy();
            if let Some(ca) = &trusted_ca {
                builder = builder.add_root_certificate(ca.clone());
            }
            if !fed.verify_certificates {
                builder = builder.danger_accept_invalid_certs(true);
            }
            guarded_client(&guard, builder, discovery::Resolver { dns: dns.clone(), follow_srv })
        };
        Ok(Self {
            db,
            signing,
            server_name: settings.server_name.clone(),
            http: client(true)?,
            web: client(false)?,
            discovery: Discovery::new(dns.clone(), client(false)?, guard.clone()),
            guard,
            keys: Mutex::new(HashMap::new()),
            trusted_key_servers,
            fetched_at: Mutex::new(HashMap::new()),
            unknown_key_fetched_at: Mutex::new(HashMap::new()),
        })
    }

    /// A client for plain web requests that still passes the address guard.
    pub fn web_client(&self) -> reqwest::Client {
        self.web.clone()
    }

    pub fn guard(&self) -> &AddressGuard {
        &self.guard
    }

    /// Where to reach a server (see [`discovery`]).
    pub async fn base_url(&self, server: &ServerName) -> Result<String> {
        Ok(self.discovery.destination(server).await.base_url)
    }

    /// Send a signed request to `destination` and parse its answer.
    pub async fn send<R>(&self, destination: &ServerName, request: R) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<Authentication = ServerSignatures>,
        for<'a> R::PathBuilder: ruma::api::path_builder::PathBuilder<Input<'a> = ()>,
    {
        let (status, headers, bytes) = self.send_raw(destination, request).await?;
        parse_answer::<R>(destination, status, &headers, &bytes)
    }

    /// A signed request ruma has no type for (the deprecated v1 forms):
    /// `body` as given, the answer's JSON back.
    pub async fn send_json(
        &self,
        destination: &ServerName,
        method: http::Method,
        path: &str,
        body: &serde_json::value::RawValue,
    ) -> Result<Box<serde_json::value::RawValue>> {
        use ruma::api::auth_scheme::AuthScheme;
        let base = self.base_url(destination).await?;
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.get().as_bytes().to_vec())
            .map_err(Error::internal)?;
        let input = XMatrixSigningInput::new(self.server_name.clone(), destination.to_owned(), &self.signing.key_pair);
        ServerSignatures::add_authentication(&mut request, input)
            .map_err(|e| Error::internal(format!("signing a federation request: {e}")))?;
        let request = reqwest::Request::try_from(request).map_err(Error::internal)?;
        let response = self.execute(destination, request).await?;
        let status = response.status();
        let bytes = read_bounded(response, MAX_RESPONSE_BYTES).await.map_err(|e| unreachable(destination, e))?;
        if let Some(refusal) = refusal(destination, status, &bytes) {
            return Err(refusal);
        }
        if !status.is_success() {
            return Err(unreachable(destination, format!("it answered {status}")));
        }
        serde_json::from_slice(&bytes).map_err(|e| unreachable(destination, format!("its answer is not JSON ({e})")))
    }

    /// Send a transaction; the other server's answer for each PDU. Any 200
    /// means delivered: some servers (stock sytest's) answer `{}`, not the
    /// spec's `{"pdus": {}}`, and resending would replay the events.
    pub async fn send_transaction(
        &self,
        destination: &ServerName,
        request: send_transaction_message::v1::Request,
    ) -> Result<BTreeMap<OwnedEventId, std::result::Result<(), String>>> {
        let (status, headers, bytes) = self.send_raw(destination, request).await?;
        let lacks_pdus = serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|v| v.as_object().is_some_and(|o| !o.contains_key("pdus")));
        if status.is_success() && lacks_pdus {
            return Ok(BTreeMap::new());
        }
        Ok(parse_answer::<send_transaction_message::v1::Request>(destination, status, &headers, &bytes)?.pdus)
    }

    async fn send_raw<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<(http::StatusCode, http::HeaderMap, bytes::Bytes)>
    where
        R: OutgoingRequest<Authentication = ServerSignatures>,
        for<'a> R::PathBuilder: ruma::api::path_builder::PathBuilder<Input<'a> = ()>,
    {
        let base = self.base_url(destination).await?;
        let input = XMatrixSigningInput::new(self.server_name.clone(), destination.to_owned(), &self.signing.key_pair);
        let request = request
            .try_into_http_request::<BytesMut>(&base, input, ())
            .map_err(|e| Error::internal(format!("building a federation request: {e}")))?;
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, body.freeze());
        let request = reqwest::Request::try_from(request).map_err(Error::internal)?;
        let response = self.execute(destination, request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = read_bounded(response, MAX_RESPONSE_BYTES).await.map_err(|e| unreachable(destination, e))?;
        Ok((status, headers, bytes))
    }

    /// Send a request to `server` once the guard allows its address.
    async fn execute(&self, server: &ServerName, request: reqwest::Request) -> Result<reqwest::Response> {
        self.guard.check_url(request.url()).map_err(|e| unreachable(server, e))?;
        self.http.execute(request).await.map_err(|e| unreachable(server, e))
    }

    /// A GET or POST of JSON (keys), bounded in size.
    async fn fetch_json(&self, server: &ServerName, request: reqwest::RequestBuilder) -> Result<serde_json::Value> {
        let request = request.build().map_err(|e| unreachable(server, e))?;
        let response = self.execute(server, request).await?;
        let bytes = read_bounded(response, MAX_KEY_RESPONSE_BYTES).await.map_err(|e| unreachable(server, e))?;
        serde_json::from_slice(&bytes).map_err(|e| unreachable(server, format!("its answer is not JSON ({e})")))
    }

    /// Our keys as `/_matrix/key/v2/server` publishes them, signed.
    pub fn own_keys(&self) -> Result<CanonicalJsonObject> {
        use ruma::api::federation::discovery::{ServerSigningKeys, VerifyKey};
        let key_id = ruma::OwnedServerSigningKeyId::try_from(self.signing.key_id()).map_err(Error::internal)?;
        let verify_key = VerifyKey::new(Base64::new(self.signing.key_pair.public_key().to_vec()));
        let valid_until =
            ruma::MilliSecondsSinceUnixEpoch::from_system_time(std::time::SystemTime::now() + KEY_VALIDITY)
                .ok_or_else(|| Error::internal("key validity out of range"))?;
        let mut keys = ServerSigningKeys::new(self.server_name.clone(), valid_until);
        keys.verify_keys = BTreeMap::from([(key_id, verify_key)]);
        let mut object = match ruma::canonical_json::to_canonical_value(&keys).map_err(Error::internal)? {
            CanonicalJsonValue::Object(object) => object,
            _ => return Err(Error::internal("server keys are not an object")),
        };
        ruma::signatures::sign_json(self.server_name.as_str(), &self.signing.key_pair, &mut object)
            .map_err(Error::internal)?;
        Ok(object)
    }

    /// A server's verify keys: cached while valid, else fetched from the
    /// server itself and checked against its own signature.
    ///
    /// `key_ids` are the keys a signature names: one we do not know makes us
    /// ask the server again (rate-limited), as it may have rotated its key.
    /// `signed_at` (an event's `origin_server_ts`) admits the server's old
    /// keys that were still in use then.
    pub async fn verify_keys(
        &self,
        server: &ServerName,
        key_ids: &[String],
        signed_at: Option<u64>,
    ) -> Result<PublicKeySet> {
        if server == self.server_name {
            let own = Base64::new(self.signing.key_pair.public_key().to_vec());
            return Ok(BTreeMap::from([(self.signing.key_id(), own)]));
        }
        let mut set = usable_keys(&self.cached_keys(server, util::now_ms()).await?, signed_at)?;
        if key_ids.iter().any(|id| !set.contains_key(id)) && self.may_refetch_for_unknown_key(server) {
            tracing::info!(%server, ?key_ids, "a signature names a key we do not know: fetching the server's keys again");
            match self.refetch(server).await {
                Ok(fresh) => set = usable_keys(&fresh, signed_at)?,
                Err(err) => tracing::info!(%server, "could not fetch the keys again: {}", err.message),
            }
        }
        Ok(set)
    }

    fn may_refetch_for_unknown_key(&self, server: &ServerName) -> bool {
        first_in(&self.unknown_key_fetched_at, server, UNKNOWN_KEY_REFETCH_AFTER)
    }

    /// As a key notary: `server`'s signed keys, valid at least until
    /// `valid_until` where the server can still be asked, with our
    /// signature added. `None` when we have nothing for it.
    pub async fn notarised_keys(&self, server: &ServerName, valid_until: u64) -> Result<Option<CanonicalJsonObject>> {
        if server == self.server_name {
            return self.own_keys().map(Some);
        }
        let cached = match self.cached_keys(server, valid_until).await {
            Ok(cached) => Some(cached),
            // Unreachable now: what we had, if anything, is still worth giving.
            Err(_) => self.stored_keys(server).await?,
        };
        let Some(signed) = cached.and_then(|c| c.signed) else { return Ok(None) };
        let Ok(CanonicalJsonValue::Object(mut object)) = CanonicalJsonValue::try_from(signed) else { return Ok(None) };
        ruma::signatures::sign_json(self.server_name.as_str(), &self.signing.key_pair, &mut object)
            .map_err(Error::internal)?;
        Ok(Some(object))
    }

    async fn stored_keys(&self, server: &ServerName) -> Result<Option<CachedKeys>> {
        let cached = self.keys.lock().expect("key cache poisoned").get(server).cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let (db, server) = (self.db.clone(), server.to_owned());
        tokio::task::spawn_blocking(move || data::server_keys(&db, &server)).await.map_err(Error::internal)?
    }

    /// The cached keys if valid past `valid_until`, else fresh ones from
    /// the server itself, checked against its own signature.
    async fn cached_keys(&self, server: &ServerName, valid_until: u64) -> Result<CachedKeys> {
        let now = util::now_ms();
        let stored = self.stored_keys(server).await?;
        if let Some(cached) = stored.as_ref().filter(|c| c.valid_until > valid_until.max(now)) {
            return Ok(cached.clone());
        }
        // A notary caller asking for keys valid far ahead does not make us
        // fetch the same server's keys more than once every few minutes.
        if let Some(cached) = stored.filter(|c| c.valid_until > now)
            && self.recently_fetched(server)
        {
            return Ok(cached);
        }
        self.refetch(server).await
    }

    /// Fresh keys from the server (else the trusted notaries), merged with
    /// what we had: keys it no longer lists stay as old keys.
    async fn refetch(&self, server: &ServerName) -> Result<CachedKeys> {
        let stored = self.stored_keys(server).await?;
        let mut fetched = match self.keys_from_server(server).await {
            Ok(cached) => Ok(cached),
            Err(err) => {
                let mut found = Err(err);
                // The server is down or misbehaving: ask the notaries we trust.
                for notary in self.trusted_key_servers.iter().filter(|n| *n != server) {
                    match self.keys_from_notary(notary, server).await {
                        Ok(cached) => {
                            found = Ok(cached);
                            break;
                        }
                        Err(why) => tracing::info!(%server, %notary, "the notary could not vouch: {}", why.message),
                    }
                }
                found
            }
        }?;
        if let Some(previous) = stored {
            for (id, old) in previous.old_keys {
                fetched.old_keys.entry(id).or_insert(old);
            }
            // A key the server dropped signed nothing after now (it may
            // have been dropped because it leaked).
            let dropped_at = util::now_ms().min(previous.valid_until);
            for (id, key) in previous.keys {
                if !fetched.keys.contains_key(&id) {
                    fetched.old_keys.entry(id).or_insert((key, dropped_at));
                }
            }
        }
        let (db, key, record) = (self.db.clone(), server.to_owned(), fetched.clone());
        tokio::task::spawn_blocking(move || data::save_server_keys(&db, &key, &record))
            .await
            .map_err(Error::internal)??;
        self.keys.lock().expect("key cache poisoned").insert(server.to_owned(), fetched.clone());
        Ok(fetched)
    }

    fn recently_fetched(&self, server: &ServerName) -> bool {
        !first_in(&self.fetched_at, server, REFETCH_AFTER)
    }

    /// `/_matrix/key/v2/server` of the server itself.
    async fn keys_from_server(&self, server: &ServerName) -> Result<CachedKeys> {
        let base = self.base_url(server).await?;
        let body = self.fetch_json(server, self.http.get(format!("{base}/_matrix/key/v2/server"))).await?;
        self_signed_keys(server, body)
    }

    /// `server`'s keys as a notary hands them on: signed by the server
    /// itself and by the notary, whose own keys we fetch from it directly.
    async fn keys_from_notary(&self, notary: &ServerName, server: &ServerName) -> Result<CachedKeys> {
        let base = self.base_url(notary).await?;
        let request = self
            .http
            .post(format!("{base}/_matrix/key/v2/query"))
            .json(&serde_json::json!({ "server_keys": { server.as_str(): {} } }));
        let body = self.fetch_json(notary, request).await?;
        let Some(keys) = body["server_keys"]
            .as_array()
            .and_then(|all| all.iter().find(|k| k["server_name"].as_str() == Some(server.as_str())))
        else {
            return Err(Error::not_found(format!("{notary} has no keys of {server}")));
        };
        let notary_keys = match self.stored_keys(notary).await? {
            Some(cached) if cached.valid_until > util::now_ms() => cached,
            _ => self.keys_from_server(notary).await?,
        };
        let key_map: PublicKeyMap = BTreeMap::from([(notary.to_string(), to_key_set(&notary_keys)?)]);
        ruma::signatures::verify_json(&key_map, &only_signed_by(keys, notary)?)
            .map_err(|e| Error::forbidden(format!("{notary} did not sign {server}'s keys: {e}")))?;
        let mut own = keys.clone();
        if let Some(signatures) = own["signatures"].as_object_mut() {
            signatures.retain(|name, _| name == server.as_str());
        }
        self_signed_keys(server, own)
    }

    /// The checks on receipt of a PDU that need no room state: its format,
    /// the signatures of every server that must have signed it (refused if
    /// any fails), and its content hash (redacted if it does not match).
    /// Returns the event id and the object to keep.
    pub async fn verify_pdu(
        &self,
        room_version: &ruma::RoomVersionId,
        object: CanonicalJsonObject,
    ) -> Result<(ruma::OwnedEventId, CanonicalJsonObject)> {
        let rules = room_version
            .rules()
            .ok_or_else(|| Error::unsupported_room_version(format!("Room version {room_version} is not supported.")))?;
        ruma::state_res::check_pdu_format(&object, &rules.event_format)
            .map_err(|e| Error::bad_json(format!("The event is malformed: {e}")))?;
        let servers = ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(|e| Error::bad_json(format!("The event does not say who must sign it: {e}")))?;
        let signed_at = match object.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).ok(),
            _ => None,
        };
        let mut key_map = PublicKeyMap::new();
        for server in servers {
            let key_ids: Vec<String> = match object.get("signatures") {
                Some(CanonicalJsonValue::Object(by_server)) => match by_server.get(server.as_str()) {
                    Some(CanonicalJsonValue::Object(keys)) => keys.keys().cloned().collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            key_map.insert(server.to_string(), self.verify_keys(&server, &key_ids, signed_at).await?);
        }
        // Hashing and ed25519 checks are CPU work: off the async threads, so
        // a transaction's PDUs (of different rooms) verify side by side.
        tokio::task::spawn_blocking(move || {
            let verified = ruma::signatures::verify_event(&key_map, &object, &rules)
                .map_err(|e| Error::forbidden(format!("The event's signatures do not verify: {e}")))?;
            let object = match verified {
                ruma::signatures::Verified::All => object,
                // The content was changed after signing: keep only what redaction keeps.
                ruma::signatures::Verified::Signatures => ruma::canonical_json::redact(object, &rules.redaction, None)
                    .map_err(|e| Error::bad_json(format!("The event cannot be redacted: {e}")))?,
            };
            let event_id = crate::pdu::event_id_of(&object, &rules).map_err(Error::bad_json)?;
            Ok((event_id, object))
        })
        .await
        .map_err(Error::internal)?
    }

    /// Check the X-Matrix signature of a request sent to us; returns its origin.
    /// An origin whose keys we do not hold costs the caller a token of
    /// `new_origins` (fetching them means connecting somewhere it named).
    pub async fn authenticate(
        &self,
        request: &http::Request<&[u8]>,
        new_origins: impl FnOnce() -> Result<()>,
    ) -> Result<OwnedServerName> {
        let unauthorized = |why: String| Error::new(http::StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", why);
        let x_matrix = XMatrix::extract_from_http_headers(request.headers())
            .map_err(|e| unauthorized(format!("This endpoint needs a valid X-Matrix Authorization header: {e}")))?;
        if x_matrix.origin == self.server_name {
            return Err(unauthorized("Requests cannot claim to come from this server.".to_owned()));
        }
        if self.stored_keys(&x_matrix.origin).await?.is_none() {
            new_origins()?;
        }
        // A body that is not canonical JSON (floats, integers past 2^53) can
        // be neither signed nor taken: the sender's mistake, 400.
        if !request.body().is_empty() && serde_json::from_slice::<CanonicalJsonValue>(request.body()).is_err() {
            return Err(Error::bad_json("The request body is not canonical JSON."));
        }
        let keys = self.verify_keys(&x_matrix.origin, &[x_matrix.key.to_string()], None).await?;
        let key_map: PublicKeyMap = BTreeMap::from([(x_matrix.origin.to_string(), keys)]);
        x_matrix
            .verify_http_request(request, &self.server_name, &key_map)
            .map_err(|e| unauthorized(format!("The request's signature does not verify: {e}")))?;
        Ok(x_matrix.origin)
    }
}

/// Whether `server` was not seen in `times` within `every`; it is then
/// noted as seen now. The map stays bounded.
fn first_in(times: &Mutex<HashMap<OwnedServerName, std::time::Instant>>, server: &ServerName, every: Duration) -> bool {
    let mut times = times.lock().expect("fetch times poisoned");
    let now = std::time::Instant::now();
    if times.get(server).is_some_and(|at| now.duration_since(*at) < every) {
        return false;
    }
    if times.len() >= 10_000 {
        times.retain(|_, at| now.duration_since(*at) < every);
    }
    times.insert(server.to_owned(), now);
    true
}

/// A server's key object checked against its own signature.
fn self_signed_keys(server: &ServerName, body: serde_json::Value) -> Result<CachedKeys> {
    if body["server_name"].as_str() != Some(server.as_str()) {
        return Err(Error::forbidden(format!("{server} published keys for another server")));
    }
    let mut keys = BTreeMap::new();
    for (key_id, key) in body["verify_keys"].as_object().into_iter().flatten() {
        if let Some(key) = key["key"].as_str() {
            keys.insert(key_id.clone(), key.to_owned());
        }
    }
    let mut old_keys = BTreeMap::new();
    for (key_id, key) in body["old_verify_keys"].as_object().into_iter().flatten() {
        if let (Some(public), Some(expired)) = (key["key"].as_str(), key["expired_ts"].as_u64()) {
            old_keys.insert(key_id.clone(), (public.to_owned(), expired));
        }
    }
    let object = only_signed_by(&body, server)?;
    let now = util::now_ms();
    let cached = CachedKeys {
        keys,
        valid_until: body["valid_until_ts"].as_u64().unwrap_or(0).min(now + 7 * 24 * 3600 * 1000),
        old_keys,
        signed: Some(body),
    };
    let key_map: PublicKeyMap = BTreeMap::from([(server.to_string(), to_key_set(&cached)?)]);
    ruma::signatures::verify_json(&key_map, &object)
        .map_err(|e| Error::forbidden(format!("{server}'s keys are not signed by themselves: {e}")))?;
    Ok(cached)
}

/// The key object as canonical JSON with only `signer`'s signatures, to
/// check that one signature.
fn only_signed_by(body: &serde_json::Value, signer: &ServerName) -> Result<CanonicalJsonObject> {
    let mut object = match CanonicalJsonValue::try_from(body.clone()) {
        Ok(CanonicalJsonValue::Object(object)) => object,
        _ => return Err(Error::forbidden(format!("the keys of {signer} are not canonical JSON"))),
    };
    if let Some(CanonicalJsonValue::Object(signatures)) = object.get_mut("signatures") {
        signatures.retain(|name, _| name == signer.as_str());
    }
    Ok(object)
}

fn to_key_set(cached: &CachedKeys) -> Result<PublicKeySet> {
    usable_keys(cached, None)
}

/// The server's current keys, and with `signed_at` (an event's time) the
/// old keys that still signed then.
fn usable_keys(cached: &CachedKeys, signed_at: Option<u64>) -> Result<PublicKeySet> {
    let old = cached
        .old_keys
        .iter()
        .filter(|(id, (_, until))| !cached.keys.contains_key(*id) && signed_at.is_some_and(|at| at <= *until))
        .map(|(id, (key, _))| (id, key));
    cached
        .keys
        .iter()
        .chain(old)
        .map(|(id, key)| {
            Ok((
                id.clone(),
                Base64::parse(key).map_err(|e| Error::forbidden(format!("a published key is not base64: {e}")))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ruma::{CanonicalJsonValue, RoomVersionId, events::TimelineEventType};
    use serde_json::json;

    use crate::service::rooms::NewEvent;

    /// A real event of this server, verified as a remote server's would be.
    #[tokio::test(flavor = "multi_thread")]
    async fn incoming_pdus_are_verified_redacted_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let services = crate::service::open_for_test(dir.path());
        let alice = services.users.local_user_id("alice").unwrap();
        services
            .users
            .create(&alice, Some("password1"), crate::service::users::AccountKind::Member, false, None)
            .unwrap();
        let (room_id, _) = services
            .rooms
            .create_room(
                &alice,
                RoomVersionId::V12,
                json!({ "room_version": "12" }),
                vec![NewEvent::state(TimelineEventType::RoomMember, alice.as_str(), json!({ "membership": "join" }))],
            )
            .unwrap();
        let message = services
            .rooms
            .append(&room_id, &alice, NewEvent::message("m.room.message", json!({ "body": "secret" })))
            .unwrap();
        let original = message.canonical_object();

        let (event_id, kept) = services.federation.verify_pdu(&RoomVersionId::V12, original.clone()).await.unwrap();
        assert_eq!(event_id, message.event_id, "the event id is recomputed from the content");
        assert_eq!(kept, original);

        let mut tampered = original.clone();
        tampered.insert("content".into(), CanonicalJsonValue::Object([("body".to_owned(), "forged".into())].into()));
        let (_, kept) = services.federation.verify_pdu(&RoomVersionId::V12, tampered).await.unwrap();
        assert_eq!(
            kept.get("content"),
            Some(&CanonicalJsonValue::Object(Default::default())),
            "a hash mismatch is redacted"
        );

        let mut forged = original.clone();
        forged.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(1u32.into()));
        assert!(
            services.federation.verify_pdu(&RoomVersionId::V12, forged).await.is_err(),
            "a broken signature is refused"
        );

        let mut malformed = original;
        let too_many: Vec<CanonicalJsonValue> =
            (0..21).map(|i| CanonicalJsonValue::String(format!("$event{i}"))).collect();
        malformed.insert("prev_events".into(), CanonicalJsonValue::Array(too_many));
        assert!(
            services.federation.verify_pdu(&RoomVersionId::V12, malformed).await.is_err(),
            "a malformed PDU is refused"
        );
    }
}
