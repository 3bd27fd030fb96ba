//! The invitation page (`/invite/{token}`) and the admin console
//! (`/admin`): framework-free pages that talk to porch's JSON APIs, served
//! with the same locked-down headers as the guest page.

use axum::{
    http::header,
    response::{Html, IntoResponse},
    routing::get,
};
use http::Method;

use crate::api::{Routes, guest_page::SECURITY_HEADERS};

const INVITE_INDEX: &str = include_str!("invite_page/index.html");
const INVITE_SCRIPT: &str = include_str!("invite_page/app.js");
const INVITE_STYLE: &str = include_str!("invite_page/style.css");
const ADMIN_INDEX: &str = include_str!("admin_console/index.html");
const ADMIN_SCRIPT: &str = include_str!("admin_console/app.js");
const ADMIN_STYLE: &str = include_str!("admin_console/style.css");

fn asset(r: &mut Routes, path: &str, content_type: &'static str, body: &'static str) {
    r.raw(path, Method::GET, get(move || async move { (SECURITY_HEADERS, [(header::CONTENT_TYPE, content_type)], body).into_response() }));
}

pub fn register(r: &mut Routes) {
    r.raw("/invite/{token}", Method::GET, get(|| async { (SECURITY_HEADERS, Html(INVITE_INDEX)).into_response() }))
        .raw("/admin", Method::GET, get(|| async { (SECURITY_HEADERS, Html(ADMIN_INDEX)).into_response() }));
    const JS: &str = "text/javascript; charset=utf-8";
    const CSS: &str = "text/css; charset=utf-8";
    asset(r, "/invite/assets/app.js", JS, INVITE_SCRIPT);
    asset(r, "/invite/assets/style.css", CSS, INVITE_STYLE);
    asset(r, "/admin/assets/app.js", JS, ADMIN_SCRIPT);
    asset(r, "/admin/assets/style.css", CSS, ADMIN_STYLE);
}
