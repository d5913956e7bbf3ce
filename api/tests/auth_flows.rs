//! Registration, login and tokens, end to end through the router on real PostgreSQL.

mod common;

use axum::http::{Method, StatusCode};
use base64::Engine;
use common::{Auth, TestApp, TestDb};
use serde_json::json;

#[tokio::test]
async fn register_login_and_me() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let registered = app.register("univ-tlemcen").await;

    let me = app
        .request(
            Method::GET,
            "/api/auth/me",
            Auth::Bearer(&registered.token),
            None,
        )
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["status"], "success");
    assert_eq!(me.body["data"]["user"]["role"], "tenant_admin");
    assert_eq!(
        me.body["data"]["user"]["tenant_id"],
        registered.tenant_id.to_string()
    );
    assert_eq!(me.body["data"]["tenant"]["slug"], "univ-tlemcen");

    let login = app
        .request(
            Method::POST,
            "/api/auth/login",
            Auth::None,
            Some(json!({"email": "ADMIN@univ-tlemcen.dz", "password": "a long enough password"})),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert_eq!(login.body["data"]["token_type"], "bearer");
    assert_eq!(login.body["data"]["expires_in"], 3600);
    let token = login.body["data"]["access_token"].as_str().unwrap();
    let me = app
        .request(Method::GET, "/api/auth/me", Auth::Bearer(token), None)
        .await;
    assert_eq!(me.status, StatusCode::OK);
}

#[tokio::test]
async fn a_taken_slug_or_email_is_a_conflict() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    app.register("dup").await;
    let again = app
        .request(Method::POST, "/api/auth/register", Auth::None, Some(json!({"tenant_name": "Other", "tenant_slug": "dup", "email": "other@x.dz", "password": "a long enough password"})))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert!(
        again.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("slug")
    );
    let same_email = app
        .request(Method::POST, "/api/auth/register", Auth::None, Some(json!({"tenant_name": "Other", "tenant_slug": "other", "email": "admin@dup.dz", "password": "a long enough password"})))
        .await;
    assert_eq!(
        same_email.status,
        StatusCode::CONFLICT,
        "{}",
        same_email.body
    );
}

#[tokio::test]
async fn wrong_credentials_are_401_and_never_say_which_part_was_wrong() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    app.register("acme").await;
    for (email, password) in [
        ("admin@acme.dz", "wrong password!!"),
        ("nobody@acme.dz", "a long enough password"),
    ] {
        let reply = app
            .request(
                Method::POST,
                "/api/auth/login",
                Auth::None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            reply.body["error"]["message"],
            "wrong e-mail address or password"
        );
    }
}

fn forge(claims: serde_json::Value, key: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

#[tokio::test]
async fn expired_forged_and_unsigned_tokens_are_refused() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let registered = app.register("tokens").await;
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64| json!({"sub": registered.user_id, "user_id": registered.user_id, "tenant_id": registered.tenant_id, "role": "tenant_admin", "exp": exp, "iat": now});
    let valid = forge(claims(now + 600), common::JWT_SECRET.as_bytes());
    let ok = app
        .request(Method::GET, "/api/auth/me", Auth::Bearer(&valid), None)
        .await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "the forging helper itself is right: {}",
        ok.body
    );

    let expired = forge(claims(now - 600), common::JWT_SECRET.as_bytes());
    let reply = app
        .request(Method::GET, "/api/auth/me", Auth::Bearer(&expired), None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    let forged = forge(claims(now + 600), b"not-the-server-secret-not-the-server");
    let reply = app
        .request(Method::GET, "/api/auth/me", Auth::Bearer(&forged), None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let unsigned = format!(
        "{}.{}.",
        engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
        engine.encode(serde_json::to_vec(&claims(now + 600)).unwrap())
    );
    let reply = app
        .request(Method::GET, "/api/auth/me", Auth::Bearer(&unsigned), None)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "alg: none is refused"
    );
    assert_eq!(reply.headers["www-authenticate"], "Bearer");

    let garbage = app
        .request(Method::GET, "/api/auth/me", Auth::Bearer("not.a.jwt"), None)
        .await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    let none = app
        .request(Method::GET, "/api/auth/me", Auth::None, None)
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.error_code(), "unauthorized");
}

#[tokio::test]
async fn malformed_and_oversize_bodies_are_rejected_in_the_envelope() {
    let db = TestDb::new().await;
    let mut config = common::config(&db);
    config.body_limit_bytes = 2048;
    let app = TestApp::with_config(config).await;

    let request = |body: &'static [u8], content_type: &'static str| {
        axum::http::Request::builder()
            .method(Method::POST)
            .uri("/api/auth/login")
            .header("content-type", content_type)
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let malformed = app.send(request(b"{\"email\": ", "application/json")).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.error_code(), "bad_request");

    let wrong_type = app
        .send(request(b"email=a", "application/x-www-form-urlencoded"))
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let wrong_shape = app
        .send(request(b"{\"email\": 42}", "application/json"))
        .await;
    assert_eq!(wrong_shape.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong_shape.error_code(), "validation_failed");

    let big = format!(
        "{{\"email\": \"{}\", \"password\": \"x\"}}",
        "a".repeat(4096)
    );
    let oversize = app
        .send(
            axum::http::Request::builder()
                .method(Method::POST)
                .uri("/api/auth/login")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(big))
                .unwrap(),
        )
        .await;
    assert_eq!(
        oversize.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        oversize.body
    );
    assert_eq!(oversize.error_code(), "payload_too_large");

    let weak = app
        .request(Method::POST, "/api/auth/register", Auth::None, Some(json!({"tenant_name": "T", "tenant_slug": "t", "email": "a@t.dz", "password": "short"})))
        .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(weak.body["error"]["fields"][0]["field"], "password");
    let bad_slug = app
        .request(Method::POST, "/api/auth/register", Auth::None, Some(json!({"tenant_name": "T", "tenant_slug": "Bad_Slug", "email": "a@t.dz", "password": "a long enough password"})))
        .await;
    assert_eq!(bad_slug.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_tenant_admin_adds_users_and_a_user_cannot() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let admin = app.register("staff").await;
    let created = app
        .request(Method::POST, "/api/users", Auth::Bearer(&admin.token), Some(json!({"email": "prof@staff.dz", "password": "another long password", "role": "user"})))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let login = app
        .request(
            Method::POST,
            "/api/auth/login",
            Auth::None,
            Some(json!({"email": "prof@staff.dz", "password": "another long password"})),
        )
        .await;
    let user_token = login.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let forbidden = app
        .request(
            Method::POST,
            "/api/users",
            Auth::Bearer(&user_token),
            Some(json!({"email": "x@staff.dz", "password": "another long password"})),
        )
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    let listed = app
        .request(
            Method::GET,
            "/api/users?limit=1&sort=email&order=asc",
            Auth::Bearer(&admin.token),
            None,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["meta"]["total"], 2);
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["data"][0]["email"], "admin@staff.dz");
    let bad_sort = app
        .request(
            Method::GET,
            "/api/users?sort=password_hash",
            Auth::Bearer(&admin.token),
            None,
        )
        .await;
    assert_eq!(bad_sort.status, StatusCode::UNPROCESSABLE_ENTITY);
}
