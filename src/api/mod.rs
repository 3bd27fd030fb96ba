//! HTTP: the router, and the extractor that turns an axum request into a
//! ruma request with its authenticated session. Handlers are thin: ruma
//! request in, service calls, ruma response out.

pub mod client;
pub mod federation;
pub mod invitations;
pub mod pages;
pub mod porch;
pub mod synapse_admin;

use std::{
    any::TypeId,
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request, State},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter, on},
};
use bytes::BytesMut;
use http::Method;
use ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
    auth_scheme::{AccessToken, AccessTokenOptional},
    error::{DeserializationError, FromHttpRequestError},
    path_builder::PathBuilder,
};

use crate::{
    error::{Error, Result},
    service::{Services, users::Session},
};

pub type AppState = Arc<Services>;

/// The most a PDU may take, by the spec (its canonical JSON).
pub const MAX_PDU_BYTES: usize = 65_536;

/// The largest legal federation transaction: 50 PDUs and 100 EDUs of up to
/// 64 KiB each, with room for the JSON around them.
pub const MAX_TRANSACTION_BYTES: usize = (50 + 100) * MAX_PDU_BYTES + 64 * 1024;

/// A parsed ruma request with who sent it.
pub struct Ruma<T> {
    pub body: T,
    pub session: Option<Session>,
    /// The server that signed a federation request.
    pub origin: Option<ruma::OwnedServerName>,
    pub ip: IpAddr,
    /// The JSON body as an object, kept for endpoints whose extra keys
    /// matter and ruma drops (a join's custom member content).
    pub body_object: Option<serde_json::Map<String, serde_json::Value>>,
}

impl<T> Ruma<T> {
    /// The server that signed a request to an endpoint with server-signature auth.
    pub fn origin(&self) -> &ruma::ServerName {
        self.origin.as_deref().expect("the extractor verifies the origin of federation endpoints")
    }

    /// The session of an endpoint that requires an access token.
    pub fn session(&self) -> &Session {
        self.session.as_ref().expect("the extractor enforces a session for authenticated endpoints")
    }
}

impl<T> FromRequest<AppState> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: 'static,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self> {
        let (mut parts, body) = req.into_parts();
        let mut path_args: Vec<String> = match Path::<Vec<String>>::from_request_parts(&mut parts, state).await {
            Ok(Path(args)) => args,
            Err(_) => Vec::new(),
        };
        if parts.extensions.get::<EmptyStateKey>().is_some() {
            path_args.push(String::new());
        }
        Self::parse(Request::from_parts(parts, body), path_args, state).await
    }
}

impl<T> Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: 'static,
{
    /// Read, authenticate and parse a request whose path arguments are given
    /// (a route that is not `T`'s own, such as the deprecated forms of it).
    pub async fn parse(req: Request, path_args: Vec<String>, state: &AppState) -> Result<Self> {
        let (parts, body) = req.into_parts();
        let ip = client_ip(&parts, &state.settings);
        let limits = &state.settings.raw.limits;
        let limit = if TypeId::of::<T>() == TypeId::of::<ruma::api::client::media::create_content::v3::Request>() {
            limits.max_upload_bytes
        } else if TypeId::of::<T>()
            == TypeId::of::<ruma::api::federation::transactions::send_transaction_message::v1::Request>()
        {
            // The largest legal transaction must fit, whatever `max_request_bytes` says.
            limits.max_request_bytes.max(MAX_TRANSACTION_BYTES)
        } else {
            limits.max_request_bytes
        };
        let mut bytes = crate::listener::read_body(body, limit, &state.settings).await?.to_vec();
        if bytes.is_empty() && parts.method != Method::GET && parts.method != Method::HEAD {
            bytes = b"{}".to_vec();
        }

        drop_empty_auth(&mut bytes);
        if TypeId::of::<T>() == TypeId::of::<ruma::api::client::typing::create_typing_event::v3::Request>() {
            default_typing_timeout(&mut bytes);
        }
        if TypeId::of::<T>() == TypeId::of::<ruma::api::federation::event::get_missing_events::v1::Request>() {
            default_earliest_events(&mut bytes);
        }

        let token = access_token(&parts);
        // OpenID userinfo carries its (OpenID) token in the query: without
        // one it is an unauthenticated request (401), not a malformed one.
        if token.is_none()
            && TypeId::of::<T>() == TypeId::of::<ruma::api::federation::openid::get_openid_userinfo::v1::Request>()
        {
            return Err(Error::missing_token());
        }
        let auth = TypeId::of::<T::Authentication>();
        let session = if auth == TypeId::of::<AccessToken>() {
            let token = token.ok_or_else(Error::missing_token)?;
            Some(blocking(state, move |s| s.users.authenticate(&token)).await?)
        } else if auth == TypeId::of::<AccessTokenOptional>() {
            match token {
                Some(token) => Some(blocking(state, move |s| s.users.authenticate(&token)).await?),
                None => None,
            }
        } else {
            // Endpoints that need no token still learn who is asking when
            // one is sent (the guest policy needs it); a stale one is ignored.
            match token {
                Some(token) => blocking(state, move |s| s.users.authenticate(&token)).await.ok(),
                None => None,
            }
        };

        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let http_request = http::Request::from_parts(parts, &bytes[..]);
        let origin = if auth == TypeId::of::<ruma::api::federation::authentication::ServerSignatures>() {
            let limiter = || state.key_query_limiter.check(ip).map_err(Error::limit_exceeded);
            Some(state.federation.authenticate(&http_request, limiter).await?)
        } else {
            None
        };
        // ruma's deserialisers can panic on some malformed bodies (e.g. a login
        // body without `type`); that is the client's mistake, not the server's.
        let parsed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| T::try_from_http_request(http_request, &args)));
        let body = match parsed {
            Ok(result) => result.map_err(|e| request_error(e, &bytes))?,
            Err(_) => return Err(Error::bad_json("The request body is not what this endpoint expects.")),
        };
        let keeps_body = [
            TypeId::of::<ruma::api::client::membership::join_room_by_id::v3::Request>(),
            TypeId::of::<ruma::api::client::membership::join_room_by_id_or_alias::v3::Request>(),
            // For `filters.spaces`, which ruma's types lack.
            TypeId::of::<ruma::api::client::sync::sync_events::v5::Request>(),
        ]
        .contains(&TypeId::of::<T>());
        let body_object = if keeps_body {
            serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v.as_object().cloned())
        } else {
            None
        };
        Ok(Self { body, session, origin, ip, body_object })
    }
}

/// A UIA body's `auth` with neither `type` nor `session` (`"auth": {}`,
/// as clients send to learn the flows) means "no auth yet": removed, so
/// the endpoint answers 401 with its flows instead of a parse error. A
/// password stage with the deprecated `user` gets it as an `identifier`.
fn drop_empty_auth(bytes: &mut Vec<u8>) {
    if !bytes.windows(6).any(|w| w == b"\"auth\"") {
        return;
    }
    edit_json_object(bytes, |body| {
        let empty = body
            .get("auth")
            .and_then(|auth| auth.as_object())
            .is_some_and(|auth| !auth.contains_key("type") && !auth.contains_key("session"));
        if empty {
            return body.remove("auth").is_some();
        }
        // The deprecated `user` of a password stage, as the identifier ruma wants.
        let Some(auth) = body.get_mut("auth").and_then(|a| a.as_object_mut()) else { return false };
        if auth.contains_key("identifier") {
            return false;
        }
        let Some(user) = auth.remove("user") else { return false };
        auth.insert("identifier".into(), serde_json::json!({ "type": "m.id.user", "user": user }));
        true
    });
}

/// `{"typing": true}` without `timeout`: the spec makes it optional in
/// practice (Synapse takes it), ruma requires it; 30 s, as Synapse assumes.
fn default_typing_timeout(bytes: &mut Vec<u8>) {
    edit_json_object(bytes, |body| {
        let missing = body.get("typing") == Some(&serde_json::Value::Bool(true)) && !body.contains_key("timeout");
        missing && body.insert("timeout".to_owned(), 30_000.into()).is_none()
    });
}

/// `get_missing_events` without `earliest_events`: none known, as Synapse
/// reads it (ruma requires the field).
fn default_earliest_events(bytes: &mut Vec<u8>) {
    edit_json_object(bytes, |body| {
        !body.contains_key("earliest_events")
            && body.insert("earliest_events".to_owned(), serde_json::Value::Array(Vec::new())).is_none()
    });
}

/// Apply `edit` to a JSON object body; re-serialised only when it says it changed something.
fn edit_json_object(bytes: &mut Vec<u8>, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>) -> bool) {
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice::<serde_json::Value>(bytes) else { return };
    if edit(&mut body) {
        *bytes = serde_json::to_vec(&body).expect("a JSON object serialises");
    }
}

/// The address a request comes from, for rate limits: the socket's, or,
/// when that is a trusted reverse proxy (`listen.trusted_proxies`), the
/// nearest address in `X-Forwarded-For` that is not one of them.
pub fn client_ip(parts: &http::request::Parts, settings: &crate::config::Settings) -> IpAddr {
    let socket = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let trusted = |ip: IpAddr| settings.trusted_proxies.iter().any(|range| range.contains(ip));
    if !trusted(socket) {
        return socket;
    }
    let mut client = socket;
    let forwarded = parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        // `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
        let parsed = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()));
        let Some(ip) = parsed.map(|ip| ip.to_canonical()) else { break };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    client
}

/// A ruma response's JSON body, for handlers that complete what ruma's
/// serialisation leaves out (or wrap it, as the v1 federation forms).
pub fn response_json(response: impl ruma::api::OutgoingResponseExt) -> Result<serde_json::Value> {
    let http = response.try_into_http_response::<Vec<u8>>().map_err(Error::internal)?;
    Ok(serde_json::from_slice(http.body())?)
}

/// A federation request's body and its verified origin, for a route whose
/// body ruma's type would refuse (the v1 invite, which older servers send
/// without the fields ruma wants).
pub async fn signed_federation_body(
    req: Request,
    state: &AppState,
) -> Result<(ruma::OwnedServerName, serde_json::Map<String, serde_json::Value>)> {
    let (parts, body) = req.into_parts();
    let ip = client_ip(&parts, &state.settings);
    let limit = state.settings.raw.limits.max_request_bytes;
    let bytes = crate::listener::read_body(body, limit, &state.settings).await?.to_vec();
    let http_request = http::Request::from_parts(parts, &bytes[..]);
    let limiter = || state.key_query_limiter.check(ip).map_err(Error::limit_exceeded);
    let origin = state.federation.authenticate(&http_request, limiter).await?;
    let object = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .ok_or_else(|| Error::bad_json("The body is not a JSON object."))?;
    Ok((origin, object))
}

/// The session of a request to a route ruma has no type for (the
/// deprecated `/initialSync` and `/events`): the access token only.
pub struct Authenticated(pub Session);

impl axum::extract::FromRequestParts<AppState> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &AppState) -> Result<Self> {
        let token = access_token(parts).ok_or_else(Error::missing_token)?;
        Ok(Self(blocking(state, move |s| s.users.authenticate(&token)).await?))
    }
}

fn access_token(parts: &http::request::Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    let query = parts.uri.query()?;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "access_token").map(|(_, v)| v.into_owned())
}

fn request_error(err: FromHttpRequestError, body: &[u8]) -> Error {
    match err {
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            if serde_json::from_slice::<serde_json::Value>(body).is_err() {
                Error::not_json(format!("The request body is not valid JSON: {e}"))
            } else {
                Error::bad_json(format!("The request body is not what this endpoint expects: {e}"))
            }
        }
        FromHttpRequestError::Deserialization(
            e @ (DeserializationError::Query(_) | DeserializationError::Ident(_)),
        ) => Error::invalid_param(format!("A parameter is not valid: {e}")),
        FromHttpRequestError::MethodMismatch { .. } => Error::method_not_allowed(),
        other => Error::bad_json(format!("The request is not valid: {other}")),
    }
}

/// Run blocking storage work off the async executor.
pub async fn blocking<F, T>(state: &AppState, f: F) -> Result<T>
where
    F: FnOnce(&Services) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    crate::service::blocking(state, f).await
}

/// A ruma response as an axum response.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                parts
                    .headers
                    .entry(http::header::CONTENT_TYPE)
                    .or_insert(http::HeaderValue::from_static("application/json"));
                Response::from_parts(parts, Body::from(body.freeze()))
            }
            Err(err) => Error::internal(format!("serialising a response: {err}")).into_response(),
        }
    }
}

/// Set on routes that end in a state key but were called without it
/// (`/state/{type}` and `/state/{type}/`): the state key is empty.
#[derive(Clone, Copy)]
struct EmptyStateKey;

/// Collects ruma endpoints by path so several methods can share one path.
#[derive(Default)]
pub struct Routes {
    map: BTreeMap<String, MethodRouter<AppState>>,
    taken: BTreeSet<(String, String)>,
}

impl Routes {
    /// Serve ruma endpoint `R` with `handler` on every path ruma knows for it.
    pub fn ruma<R, F, Fut>(&mut self, handler: F) -> &mut Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: 'static,
        R::OutgoingResponse: Send + 'static,
        F: Fn(AppState, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
    {
        let handler = move |State(state): State<AppState>, req: Ruma<R>| {
            let handler = handler.clone();
            async move { handler(state, req).await.map(RumaResponse) }
        };
        for path in R::PATH_BUILDER.all_paths() {
            let (path, state_key_last) = positional(path);
            self.add(&path, R::METHOD, on(method_filter(&R::METHOD), handler.clone()));
            if state_key_last {
                let short = path.rsplit_once('/').map(|(head, _)| head.to_owned()).unwrap_or_default();
                let marked = on(method_filter(&R::METHOD), handler.clone()).layer(axum::Extension(EmptyStateKey));
                self.add(&format!("{short}/"), R::METHOD, marked.clone());
                self.add(&short, R::METHOD, marked);
            }
        }
        self
    }

    /// A plain axum route (for non-Matrix-spec endpoints).
    pub fn raw(&mut self, path: &str, method: Method, router: MethodRouter<AppState>) -> &mut Self {
        self.add(path, method, router);
        self
    }

    fn add(&mut self, path: &str, method: Method, router: MethodRouter<AppState>) {
        if !self.taken.insert((path.to_owned(), method.to_string())) {
            return;
        }
        let merged = match self.map.remove(path) {
            Some(existing) => existing.merge(router),
            None => router,
        };
        self.map.insert(path.to_owned(), merged);
    }

    pub fn into_router(self) -> Router<AppState> {
        let mut router = Router::new();
        for (path, method_router) in self.map {
            router = router.route(&path, method_router);
        }
        router
    }
}

fn method_filter(method: &Method) -> MethodFilter {
    MethodFilter::try_from(method.clone()).expect("ruma endpoints use standard methods")
}

/// Rename path variables by position (`{p0}`, `{p1}`…) so endpoints that
/// name the same segment differently share one route; reports whether the
/// last segment is a state key.
fn positional(path: &str) -> (String, bool) {
    let mut out = String::new();
    let mut index = 0;
    let mut last_is_state_key = false;
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if segment.starts_with('{') && segment.ends_with('}') {
            last_is_state_key = segment == "{state_key}";
            out.push_str(&format!("{{p{index}}}"));
            index += 1;
        } else {
            last_is_state_key = false;
            out.push_str(segment);
        }
    }
    (out, last_is_state_key)
}

pub async fn unrecognized(uri: http::Uri) -> Error {
    // A malformed push rule path (no scope, kind or rule id) is a bad
    // request about an endpoint that exists, as Synapse answers it.
    let path = uri.path();
    if path.starts_with("/_matrix/client/") && path.contains("/pushrules/") {
        return Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNRECOGNIZED",
            "Push rule paths are /pushrules/global/{kind}/{ruleId}, kind one of override, underride, sender, room, content.",
        );
    }
    Error::unrecognized("Unrecognized request: this server has no such endpoint.")
}

pub async fn method_not_allowed() -> Error {
    Error::method_not_allowed()
}

/// The server-server API, served over TLS on `listen.federation`.
pub fn federation_router(state: AppState) -> Router {
    let mut routes = Routes::default();
    federation::register(&mut routes);
    routes
        .into_router()
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(state.settings.raw.limits.max_request_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            Error::internal("a request handler panicked").into_response()
        }))
        .with_state(state)
}

pub fn router(state: AppState) -> Router {
    let mut routes = Routes::default();
    client::register(&mut routes);
    synapse_admin::register(&mut routes);
    porch::register(&mut routes);
    invitations::register(&mut routes);
    pages::register(&mut routes);
    let max_body = state.settings.raw.limits.max_request_bytes.max(state.settings.raw.limits.max_upload_bytes);
    routes
        .into_router()
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::Any)
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
                .allow_headers([http::header::AUTHORIZATION, http::header::CONTENT_TYPE, http::HeaderName::from_static("x-requested-with")]),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            Error::internal("a request handler panicked").into_response()
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &http::Request<Body>| {
            tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(state)
}
