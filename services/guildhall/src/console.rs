//! The operators' web console at `/console`: one HTML page, a stylesheet and a script, embedded
//! in the binary at build time (no npm, no build step) and served by every API process, so that
//! the console is wherever the admin API is. The script signs in with a server key, keeps it in
//! the tab's `sessionStorage` only, and calls the admin API like any other client.
//!
//! The console shows text that players wrote (chat reports, names), so it renders everything with
//! `textContent`, never as HTML, and the page forbids inline script and every other origin
//! (`Content-Security-Policy`): a message that smuggles markup stays text.

use axum::Router;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// Scripts and styles from this origin only, API calls to this origin only, images from here and
/// over HTTPS (asset thumbnails come from the CDN); no frames (clickjacking), no forms posted
/// anywhere, no `<base>` tricks.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self' https: data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The console's routes.
pub fn router() -> Router {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/console/console.js", get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/console.css", get(|| async { file("text/css; charset=utf-8", STYLE) }))
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            // Revalidated each time, so a new release's console is picked up at once.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY")),
        ],
        body,
    )
        .into_response()
}
