//! The guest's page: `GET /guest/{token}` serves a small, framework-free web
//! page that previews the link, joins, and chats through the client API.

use axum::{
    http::header,
    response::{Html, IntoResponse},
    routing::get,
};
use http::Method;

use crate::api::Routes;

const INDEX: &str = include_str!("guest_page/index.html");
const SCRIPT: &str = include_str!("guest_page/app.js");
const STYLE: &str = include_str!("guest_page/style.css");

/// The page must not be framed, and runs only its own script.
pub(crate) const SECURITY_HEADERS: [(header::HeaderName, &str); 3] = [
    (header::CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
];

pub fn register(r: &mut Routes) {
    r.raw("/guest/{token}", Method::GET, get(|| async { (SECURITY_HEADERS, Html(INDEX)).into_response() }))
        .raw(
            "/guest/assets/app.js",
            Method::GET,
            get(|| async {
                (SECURITY_HEADERS, [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
            }),
        )
        .raw(
            "/guest/assets/style.css",
            Method::GET,
            get(|| async {
                (SECURITY_HEADERS, [(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
            }),
        );
}
