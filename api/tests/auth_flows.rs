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
    let claims = |exp: i64| json!({"sub": registered.user_id, "user_id": registered.user_id, "tenant_id": registered.tenant_id, "role": "tenant_admin", "exp": exp, "iat": now, "ver": 0});
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

    // Signed with the server's secret but without a token version (or with another
    // one): no session is behind it.
    for (field, value) in [("ver", serde_json::Value::Null), ("ver", json!(1))] {
        let mut other = claims(now + 600);
        if value.is_null() {
            other.as_object_mut().unwrap().remove(field);
        } else {
            other[field] = value;
        }
        let token = forge(other, common::JWT_SECRET.as_bytes());
        let reply = app
            .request(Method::GET, "/api/auth/me", Auth::Bearer(&token), None)
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
    // Another user id, as if forged for a user that does not exist.
    let mut ghost = claims(now + 600);
    ghost["user_id"] = json!(uuid::Uuid::new_v4());
    let token = forge(ghost, common::JWT_SECRET.as_bytes());
    let reply = app
        .request(Method::GET, "/api/auth/me", Auth::Bearer(&token), None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);

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

/// Two API replicas on one database, with rate limits out of the way of the polling.
async fn two_replicas(db: &TestDb) -> (TestApp, TestApp) {
    let config = || iafactory_api::config::Config {
        rate_limit: iafactory_api::config::RateLimitConfig {
            per_ip_per_minute: 100_000,
            per_ip_per_hour: 1_000_000,
            default_key_per_minute: 100_000,
            per_user_per_minute: 100_000,
            per_ip_ceiling_per_minute: 1_000_000,
        },
        ..common::config(db)
    };
    (
        TestApp::with_config(config()).await,
        TestApp::with_config(config()).await,
    )
}

async fn login(app: &TestApp, email: &str, password: &str) -> common::Reply {
    app.request(
        Method::POST,
        "/api/auth/login",
        Auth::None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

async fn add_user(app: &TestApp, admin: &str, email: &str, role: &str) -> (String, String) {
    let created = app
        .request(
            Method::POST,
            "/api/users",
            Auth::Bearer(admin),
            Some(json!({"email": email, "password": "another long password", "role": role})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let reply = login(app, email, "another long password").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    (
        created.body["data"]["id"].as_str().unwrap().to_owned(),
        reply.body["data"]["access_token"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

/// A route that reads nothing of the user itself (unlike `/api/auth/me`, which answers
/// 401 for a deleted user by its own lookup): only the bearer path decides.
async fn me_status(app: &TestApp, token: &str) -> StatusCode {
    app.request(
        Method::GET,
        "/api/knowledge-bases",
        Auth::Bearer(token),
        None,
    )
    .await
    .status
}

/// The bound of the bearer path's cache: no request made this long after a change
/// may still be served with the old session.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::test]
async fn sign_out_and_account_changes_end_sessions_within_5_seconds() {
    let db = TestDb::new().await;
    let (a, b) = two_replicas(&db).await;
    let admin = a.register("sessions").await;
    let other = a.register("sessions-suspended").await;
    let (_, leaving) = add_user(&a, &admin.token, "leaving@sessions.dz", "user").await;
    let (deleted_id, deleted) = add_user(&a, &admin.token, "deleted@sessions.dz", "user").await;
    let (demoted_id, demoted) =
        add_user(&a, &admin.token, "demoted@sessions.dz", "tenant_admin").await;
    let (suspended_id, suspended) =
        add_user(&a, &admin.token, "suspended@sessions.dz", "user").await;
    let (_, rotating) = add_user(&a, &admin.token, "rotating@sessions.dz", "user").await;

    // Every token works on both replicas, and B has cached each session.
    let cases: Vec<(&str, &str)> = vec![
        ("logout", &leaving),
        ("delete", &deleted),
        ("demote", &demoted),
        ("suspend user", &suspended),
        ("change password", &rotating),
        ("suspend tenant", &other.token),
    ];
    for (name, token) in &cases {
        assert_eq!(me_status(&a, token).await, StatusCode::OK, "{name}");
        assert_eq!(me_status(&b, token).await, StatusCode::OK, "{name}");
    }

    // Each change on A, with the moment it started.
    let mut started = Vec::new();
    started.push(std::time::Instant::now());
    let reply = a
        .request(
            Method::POST,
            "/api/auth/logout",
            Auth::Bearer(&leaving),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    started.push(std::time::Instant::now());
    let reply = a
        .request(
            Method::DELETE,
            &format!("/api/users/{deleted_id}"),
            Auth::Bearer(&admin.token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    started.push(std::time::Instant::now());
    let reply = a
        .request(
            Method::PATCH,
            &format!("/api/users/{demoted_id}"),
            Auth::Bearer(&admin.token),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    started.push(std::time::Instant::now());
    let reply = a
        .request(
            Method::PATCH,
            &format!("/api/users/{suspended_id}"),
            Auth::Bearer(&admin.token),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["data"]["status"], "suspended");
    started.push(std::time::Instant::now());
    let reply = a
        .request(
            Method::POST,
            "/api/auth/password",
            Auth::Bearer(&rotating),
            Some(json!({"current_password": "another long password", "new_password": "a brand new password"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let rotated = reply.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    started.push(std::time::Instant::now());
    let reply = a
        .request(
            Method::PUT,
            "/internal/tenants/sessions-suspended",
            Auth::Bearer(common::OPERATOR_TOKEN),
            Some(json!({"name": "Tenant sessions-suspended", "plan": "free", "suspended": true})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    // On A, where the change was made, the user's own sessions end at once.
    for (name, token) in &cases[..5] {
        assert_eq!(
            me_status(&a, token).await,
            StatusCode::UNAUTHORIZED,
            "{name} on the replica that made it"
        );
    }
    // On B, within the cache's 5 s.
    // A request that started 5 s or more after the change is never answered 200 (the
    // first 401 is seen within the polling's granularity after that).
    let mut ended: Vec<Option<std::time::Duration>> = vec![None; cases.len()];
    let mut last_ok: Vec<Option<std::time::Duration>> = vec![None; cases.len()];
    while ended.iter().any(Option::is_none) {
        for (i, (name, token)) in cases.iter().enumerate() {
            if ended[i].is_some() {
                continue;
            }
            let polled_at = std::time::Instant::now() - started[i];
            match me_status(&b, token).await {
                StatusCode::UNAUTHORIZED => ended[i] = Some(polled_at),
                StatusCode::OK => {
                    assert!(
                        polled_at < WITHIN,
                        "{name}: the token still works on the other replica {polled_at:?} after the change"
                    );
                    last_ok[i] = Some(polled_at);
                }
                other => panic!("{name}: {other}"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for (i, (name, _)) in cases.iter().enumerate() {
        println!(
            "{name}: on the other replica, last 200 for a request sent {:?} after the change, first 401 for one sent {:?} after",
            last_ok[i],
            ended[i].unwrap()
        );
    }

    // What comes after: a new session works at once on both replicas, however
    // recently they cached the old one.
    let again = login(&a, "leaving@sessions.dz", "another long password").await;
    let again = again.body["data"]["access_token"].as_str().unwrap();
    assert_eq!(me_status(&b, again).await, StatusCode::OK);
    assert_eq!(me_status(&b, &rotated).await, StatusCode::OK);
    let demoted_again = login(&a, "demoted@sessions.dz", "another long password").await;
    assert_eq!(demoted_again.body["data"]["user"]["role"], "user");
    let refused = login(&a, "suspended@sessions.dz", "another long password").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let old_password = login(&a, "rotating@sessions.dz", "another long password").await;
    assert_eq!(old_password.status, StatusCode::UNAUTHORIZED);
    let gone = login(&a, "deleted@sessions.dz", "another long password").await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
}
