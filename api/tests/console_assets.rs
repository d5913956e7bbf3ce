//! The console's files as the API serves them: types, the security headers, and no
//! rate limit on loading the page.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{Auth, TestApp, TestDb};

async fn get(app: &TestApp, path: &str) -> common::Reply {
    app.send(
        Request::builder()
            .method(Method::GET)
            .uri(path)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_content_security_policy() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    for (path, content_type, marker) in [
        ("/", "text/html; charset=utf-8", "<main id=\"main\""),
        (
            "/console/app.js",
            "text/javascript; charset=utf-8",
            "serverSentEvents",
        ),
        (
            "/console/app.css",
            "text/css; charset=utf-8",
            ":focus-visible",
        ),
    ] {
        let reply = get(&app, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.headers["content-type"], content_type, "{path}");
        let policy = reply.headers["content-security-policy"].to_str().unwrap();
        assert!(policy.starts_with("default-src 'none'"), "{path}: {policy}");
        assert!(
            policy.contains("script-src 'self'") && !policy.contains("unsafe"),
            "{path}: {policy}"
        );
        assert_eq!(reply.headers["x-content-type-options"], "nosniff");
        assert!(
            reply.body.as_str().unwrap().contains(marker),
            "{path} is the console's file"
        );
    }
    let page = get(&app, "/").await;
    let limit = format!(
        "data-max-upload-bytes=\"{}\"",
        app.state.config.max_upload_bytes
    );
    assert!(
        page.body.as_str().unwrap().contains(&limit),
        "the page carries the upload limit ({limit})"
    );
    // The API around it is unchanged: an unknown path is still a JSON 404.
    let unknown = app
        .request(Method::GET, "/console/nothing.js", Auth::None, None)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error_code(), "not_found");
}

#[tokio::test]
async fn loading_the_console_does_not_use_up_the_rate_limit() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(iafactory_api::config::Config {
        rate_limit: iafactory_api::config::RateLimitConfig {
            per_ip_per_minute: 2,
            per_ip_per_hour: 100,
            default_key_per_minute: 100,
            ..Default::default()
        },
        ..common::config(&db)
    })
    .await;
    for _ in 0..5 {
        assert_eq!(get(&app, "/").await.status, StatusCode::OK);
        assert_eq!(get(&app, "/console/app.js").await.status, StatusCode::OK);
    }
    // The page's own API calls still are limited.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            app.request(Method::GET, "/api/auth/me", Auth::None, None)
                .await
                .status,
        );
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}
