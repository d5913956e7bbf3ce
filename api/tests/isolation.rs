//! Another tenant's ids on every object route: 404 (never 403), and nothing changes.
//! New object routes join the table below.

mod common;

use axum::http::{Method, StatusCode};
use common::{Auth, TestApp, TestDb};
use serde_json::json;

#[tokio::test]
async fn every_object_route_answers_404_for_another_tenants_ids() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let a = app.register("iso-a").await;
    let b = app.register("iso-b").await;
    let (_, b_key) = app
        .create_key(&b.token, json!({"name": "b-key", "scopes": ["query"]}))
        .await;
    let b_user = b.user_id.to_string();

    let cases: Vec<(Method, String)> = vec![
        (Method::GET, format!("/api/keys/{b_key}")),
        (Method::DELETE, format!("/api/keys/{b_key}")),
        (Method::DELETE, format!("/api/users/{b_user}")),
    ];
    for (method, path) in cases {
        let reply = app
            .request(method.clone(), &path, Auth::Bearer(&a.token), None)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            reply.body
        );
        assert_eq!(reply.error_code(), "not_found");
    }

    // B's objects are exactly as they were.
    let key = app
        .request(
            Method::GET,
            &format!("/api/keys/{b_key}"),
            Auth::Bearer(&b.token),
            None,
        )
        .await;
    assert_eq!(key.status, StatusCode::OK);
    assert!(key.body["data"]["revoked_at"].is_null(), "not revoked by A");
    let users = app
        .request(Method::GET, "/api/users", Auth::Bearer(&b.token), None)
        .await;
    assert_eq!(
        users.body["meta"]["total"], 1,
        "B's admin was not deleted by A"
    );
    // And A's lists never show B's objects.
    let a_keys = app
        .request(Method::GET, "/api/keys", Auth::Bearer(&a.token), None)
        .await;
    assert_eq!(a_keys.body["meta"]["total"], 0);
}

#[tokio::test]
async fn a_malformed_id_is_a_bad_request_not_a_crash() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let a = app.register("malformed").await;
    let reply = app
        .request(
            Method::GET,
            "/api/keys/not-a-uuid",
            Auth::Bearer(&a.token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "bad_request");
}
