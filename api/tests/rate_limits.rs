//! Rate limits: 429 with Retry-After, per address and per key, in-process and across
//! two API instances sharing the real Redis.

mod common;

use std::net::SocketAddr;

use axum::http::{Method, StatusCode};
use common::{Auth, TestApp, TestDb};
use serde_json::json;

#[tokio::test]
async fn the_address_limit_answers_429_with_retry_after() {
    let db = TestDb::new().await;
    let mut config = common::config(&db);
    config.rate_limit.per_ip_per_minute = 3;
    let app = TestApp::with_config(config).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            app.request(Method::GET, "/api/auth/me", Auth::None, None)
                .await,
        );
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|r| r.status == StatusCode::UNAUTHORIZED)
            .count(),
        3
    );
    let limited = &statuses[4];
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.error_code(), "rate_limited");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Operations are never limited.
    assert_eq!(
        app.request(Method::GET, "/healthz", Auth::None, None)
            .await
            .status,
        StatusCode::OK
    );
    assert!(
        app.state
            .metrics
            .encode()
            .contains("iafactory_api_rate_limited_requests_total{scope=\"ip\"} 2")
    );
}

#[tokio::test]
async fn a_keys_own_limit_applies() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let admin = app.register("key-limit").await;
    let (key, _) = app
        .create_key(
            &admin.token,
            json!({"name": "slow", "scopes": ["query"], "rate_limit_per_minute": 2}),
        )
        .await;
    let statuses: Vec<StatusCode> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                app.request(Method::GET, "/api/auth/me", Auth::Key(&key), None)
                    .await
                    .status,
            );
        }
        v
    };
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

/// Two real servers on TCP, one Redis: the limit is shared, not per instance.
#[tokio::test]
async fn limits_hold_across_two_instances_sharing_redis() {
    let redis_url = common::engine_url("IAF_TEST_REDIS_URL", "redis");
    let db = TestDb::new().await;
    let prefix_isolation = uuid::Uuid::new_v4();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut config = common::config(&db);
        config.redis_url = Some(redis_url.clone());
        config.rate_limit.per_ip_per_minute = 4;
        // Each test run sees its own addresses in Redis through a forwarded header.
        config.trust_forwarded_for = true;
        let state = common::state(config).await;
        assert!(state.rate_limiter.is_shared());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(iafactory_api::server::serve(state, listener, async {
            let _ = stopped.await;
        }));
        servers.push((address, stop, task));
    }
    // A fresh, unique address per run: the Redis counters of earlier runs never match.
    let client_ip = format!(
        "10.{}.{}.{}",
        prefix_isolation.as_bytes()[0],
        prefix_isolation.as_bytes()[1],
        prefix_isolation.as_bytes()[2]
    );
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let (address, _, _) = &servers[i % 2];
        let response = http
            .get(format!("http://{address}/api/auth/me"))
            .header("x-forwarded-for", &client_ip)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 429, 429],
        "4 allowed in total across both instances"
    );
    for (_, stop, task) in servers {
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
}
