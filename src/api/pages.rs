//! porch's web pages: the guest's page (`/guest/{token}`), the invitation
//! page (`/invite/{token}`) and the admin console (`/admin`). Framework-free
//! HTML/CSS/JS that talk to porch's JSON APIs and the client API; the files
//! are in `guest_page/`, `invite_page/`, `admin_console/` and, for what the
//! first two share, `page_common/`.

use axum::{
    http::header,
    response::{Html, IntoResponse},
    routing::get,
};
use http::Method;

use crate::api::Routes;

/// The pages must not be framed, and run only their own scripts.
const SECURITY_HEADERS: [(header::HeaderName, &str); 3] = [
    (header::CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
];

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

fn page(r: &mut Routes, path: &str, html: &'static str) {
    r.raw(path, Method::GET, get(move || async move { (SECURITY_HEADERS, Html(html)).into_response() }));
}

fn asset(r: &mut Routes, path: &str, content_type: &'static str, body: &'static str) {
    r.raw(
        path,
        Method::GET,
        get(move || async move { (SECURITY_HEADERS, [(header::CONTENT_TYPE, content_type)], body).into_response() }),
    );
}

pub fn register(r: &mut Routes) {
    asset(r, "/assets/common.js", JS, include_str!("page_common/common.js"));
    asset(r, "/assets/common.css", CSS, include_str!("page_common/common.css"));

    page(r, "/guest/{token}", include_str!("guest_page/index.html"));
    asset(r, "/guest/assets/app.js", JS, include_str!("guest_page/app.js"));
    asset(r, "/guest/assets/style.css", CSS, include_str!("guest_page/style.css"));

    page(r, "/invite/{token}", include_str!("invite_page/index.html"));
    asset(r, "/invite/assets/app.js", JS, include_str!("invite_page/app.js"));
    asset(r, "/invite/assets/style.css", CSS, include_str!("invite_page/style.css"));

    page(r, "/admin", include_str!("admin_console/index.html"));
    asset(r, "/admin/assets/app.js", JS, include_str!("admin_console/app.js"));
    asset(r, "/admin/assets/style.css", CSS, include_str!("admin_console/style.css"));
}
