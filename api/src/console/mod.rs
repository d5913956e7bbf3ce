//! The web console: one HTML page, one script and one stylesheet, embedded in the
//! binary and served at `/`. The page calls the JSON API like any other client; see
//! docs/console.md for why it has no framework and no build step.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::config::Config;
use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");

/// Everything comes from this origin: no CDN, no inline script or style, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Where the page learns this API's settings: the upload limit, so that a file over it is
/// refused before its bytes are sent (the API checks it again).
const SETTINGS_PLACEHOLDER: &str = "data-max-upload-bytes=\"0\"";

/// The console's routes, merged into the API's router. They are outside the rate-limited
/// `/api` group: loading the page must not use up the calls it is about to make.
pub fn routes(config: &Config) -> Router<AppState> {
    let index: Arc<str> = INDEX_HTML
        .replacen(
            SETTINGS_PLACEHOLDER,
            &format!("data-max-upload-bytes=\"{}\"", config.max_upload_bytes),
            1,
        )
        .into();
    Router::new()
        .route(
            "/",
            get(move || async move { asset("text/html; charset=utf-8", index.to_string()) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

fn asset(content_type: &'static str, body: impl Into<String>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidated on each load: a new binary's page never runs an old script.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ],
        body.into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console works offline: nothing in it points outside the origin it came from.
    #[test]
    fn the_assets_load_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for outside in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(
                    !text.contains(outside),
                    "{name} refers to {outside:?}: the console must not fetch from elsewhere"
                );
            }
        }
    }

    #[test]
    fn the_page_carries_the_upload_limit() {
        assert_eq!(INDEX_HTML.matches(SETTINGS_PLACEHOLDER).count(), 1);
    }

    /// The session token is kept in memory: the script never writes it to storage.
    #[test]
    fn the_token_is_never_stored() {
        for stored in ["sessionStorage", "document.cookie"] {
            assert!(!APP_JS.contains(stored), "app.js uses {stored}");
        }
        let local_storage_writes: Vec<&str> = APP_JS
            .lines()
            .filter(|line| line.contains("localStorage.setItem"))
            .collect();
        assert_eq!(
            local_storage_writes,
            ["  window.localStorage.setItem(\"iaf.console.lang\", lang);"],
            "only the interface language is remembered"
        );
    }

    /// Every string the interface shows exists in the three languages.
    #[test]
    fn every_language_has_every_string() {
        let keys = |language: &str| -> std::collections::BTreeSet<String> {
            let start = APP_JS
                .find(&format!("\n  {language}: {{"))
                .unwrap_or_else(|| panic!("no {language} strings"));
            let block = &APP_JS[start..];
            let block = &block[..block.find("\n  },").expect("the block ends")];
            // Outside quotes at even indexes, inside at odd ones; a key is a quoted
            // string followed by a colon.
            let parts: Vec<&str> = block.split('"').collect();
            (1..parts.len())
                .step_by(2)
                .filter(|&i| parts.get(i + 1).is_some_and(|next| next.starts_with(':')))
                .map(|i| parts[i].to_owned())
                .collect()
        };
        let english = keys("en");
        assert!(english.len() > 100, "the English strings are found");
        for language in ["fr", "ar"] {
            assert_eq!(
                keys(language),
                english,
                "{language} has the same strings as en"
            );
        }
    }
}
