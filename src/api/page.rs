//! `GET /`: the status page, one HTML document with inline CSS and JS (no
//! external assets; works offline). It holds no data itself: its script
//! reads `/v1/cluster` and `/v1/events` with the token the person gives it
//! (kept in the tab's sessionStorage; a `#token=` fragment is taken once
//! and removed), so the page is open and its data needs the `client` role.
//! A fresh nonce per answer lets only this page's own script and style
//! run (Content-Security-Policy), and the script puts what the API says in
//! as text, never as markup.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("status.html");

/// Status page
///
/// HTML: leader and term, each node with its status and session count,
/// sessions by status, recent moves. Its data comes from `/v1/cluster` and
/// `/v1/events`, read with the token the person gives it.
#[utoipa::path(
    get,
    path = "/",
    tag = "observability",
    responses((status = 200, description = "The status page", content_type = "text/html", body = String))
)]
pub(super) async fn status_page() -> Response {
    let nonce = nonce();
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::REFERRER_POLICY, "no-referrer".to_string()),
            (header::X_FRAME_OPTIONS, "DENY".to_string()),
        ],
        PAGE.replace("{{NONCE}}", &nonce),
    )
        .into_response()
}

/// 128 random bits, hex.
fn nonce() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: a per-process counter still changes per answer;
        // the CSP then guards less, the page works the same.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        bytes[..8].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_inserts_no_markup() {
        let page = super::PAGE;
        for needle in [
            "http://",
            "https://",
            "src=",
            "innerHTML",
            "outerHTML",
            "eval(",
        ] {
            assert!(!page.contains(needle), "the page contains {needle:?}");
        }
        assert_eq!(page.matches("nonce=\"{{NONCE}}\"").count(), 2);
        assert_ne!(super::nonce(), super::nonce());
    }
}
