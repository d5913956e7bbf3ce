//! Rate limits: 429 with Retry-After; anonymous requests per client address, signed-in
//! users and keys each their own; the client address from trusted proxies only; in
//! process and across two API instances sharing the real Redis, which may not stall
//! requests when it stops answering.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, StatusCode};
use common::{Auth, TestApp, TestDb};
use iafactory_api::config::TrustedProxies;
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
            .contains("iafactory_api_rate_limited_requests_total{scope=\"anonymous\"} 2")
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
        // Each test run sees its own addresses in Redis through a forwarded header,
        // which the API believes from its (loopback) proxy only.
        config.trusted_proxies = TrustedProxies::parse("127.0.0.1").unwrap();
        let state = common::state(config).await;
        assert!(state.rate_limiter.is_shared());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let task = tokio::spawn(iafactory_api::server::serve(
            state,
            listener,
            internal,
            async {
                let _ = stopped.await;
            },
        ));
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

/// `GET /api/auth/me` `times` times in a row, with `auth`: the statuses.
async fn me_statuses(app: &TestApp, times: usize, auth: Auth<'_>) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for _ in 0..times {
        statuses.push(
            app.request(Method::GET, "/api/auth/me", auth, None)
                .await
                .status,
        );
    }
    statuses
}

async fn failed_login(app: &TestApp, email: &str) -> StatusCode {
    app.request(
        Method::POST,
        "/api/auth/login",
        Auth::None,
        Some(json!({"email": email, "password": "not the password at all"})),
    )
    .await
    .status
}

/// The lockout found on the demo: one client's failed sign-ins must exhaust only the
/// anonymous bucket of its address, never the signed-in users' or keys' limits.
#[tokio::test]
async fn failed_sign_ins_never_lock_out_signed_in_users_or_keys() {
    let db = TestDb::new().await;
    let mut config = common::config(&db);
    config.rate_limit.per_ip_per_minute = 6;
    let app = TestApp::with_config(config).await;
    let admin = app.register("lockout").await;
    let (key, _) = app
        .create_key(&admin.token, json!({"name": "k", "scopes": ["query"]}))
        .await;
    let mut failed = Vec::new();
    for _ in 0..8 {
        failed.push(failed_login(&app, "admin@lockout.dz").await);
    }
    // Registration took one anonymous request of six.
    assert_eq!(
        failed,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
        ]
    );
    for _ in 0..10 {
        let me = app
            .request(
                Method::GET,
                "/api/auth/me",
                Auth::Bearer(&admin.token),
                None,
            )
            .await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.body);
        let with_key = app
            .request(Method::GET, "/api/auth/me", Auth::Key(&key), None)
            .await;
        assert_eq!(with_key.status, StatusCode::OK, "{}", with_key.body);
    }
    // A made-up credential does not escape the anonymous bucket.
    let forged = app
        .request(Method::GET, "/api/auth/me", Auth::Bearer("not.a.jwt"), None)
        .await;
    assert_eq!(forged.status, StatusCode::TOO_MANY_REQUESTS);
    let forged_key = app
        .request(Method::GET, "/api/auth/me", Auth::Key("iaf_made_up"), None)
        .await;
    assert_eq!(forged_key.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn each_signed_in_user_has_a_limit_of_their_own() {
    let db = TestDb::new().await;
    let mut config = common::config(&db);
    config.rate_limit.per_user_per_minute = 3;
    let app = TestApp::with_config(config).await;
    let first = app.register("per-user-a").await;
    let second = app.register("per-user-b").await;
    let statuses = me_statuses(&app, 4, Auth::Bearer(&first.token)).await;
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let other = app
        .request(
            Method::GET,
            "/api/auth/me",
            Auth::Bearer(&second.token),
            None,
        )
        .await;
    assert_eq!(other.status, StatusCode::OK, "another user is not limited");
    assert!(
        app.state
            .metrics
            .encode()
            .contains("iafactory_api_rate_limited_requests_total{scope=\"user\"} 1")
    );
}

#[tokio::test]
async fn the_address_ceiling_bounds_everyone_behind_one_address() {
    let db = TestDb::new().await;
    let mut config = common::config(&db);
    config.rate_limit.per_ip_ceiling_per_minute = 4;
    let app = TestApp::with_config(config).await;
    let admin = app.register("ceiling").await;
    let statuses = me_statuses(&app, 5, Auth::Bearer(&admin.token)).await;
    assert_eq!(statuses[..4], [StatusCode::OK; 4]);
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS);
}

async fn anonymous_from(app: &TestApp, peer: [u8; 4], forwarded_for: &str) -> StatusCode {
    use tower::ServiceExt;
    let request = axum::http::Request::builder()
        .uri("/api/auth/me")
        .header("x-forwarded-for", forwarded_for)
        .body(Body::empty())
        .unwrap();
    // TestApp's router arrives from one fixed peer: this one arrives from `peer`, as
    // axum's connect info says for a served request.
    let router = iafactory_api::app::app(app.state.clone()).layer(axum::Extension(
        axum::extract::ConnectInfo(SocketAddr::from((peer, 40000))),
    ));
    router.oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn only_a_trusted_proxy_names_the_client() {
    let db = TestDb::new().await;
    let mut config = common::config(&db);
    config.rate_limit.per_ip_per_minute = 2;
    config.trusted_proxies = TrustedProxies::parse("172.18.0.1").unwrap();
    let app = TestApp::with_config(config).await;
    // An untrusted peer that makes up a new address each time is still itself.
    let forwarded: Vec<String> = (0..3).map(|i| format!("203.0.113.{i}")).collect();
    let forged: Vec<StatusCode> = futures::future::join_all(
        forwarded
            .iter()
            .map(|header| anonymous_from(&app, [198, 51, 100, 7], header)),
    )
    .await;
    assert_eq!(
        forged
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        1,
        "{forged:?}"
    );
    // Through the trusted gateway, two clients have two buckets, whatever a client
    // writes to the left of what the gateway appended.
    let mut through_gateway = Vec::new();
    for _ in 0..3 {
        through_gateway.push(anonymous_from(&app, [172, 18, 0, 1], "9.9.9.9, 192.0.2.10").await);
    }
    assert_eq!(
        through_gateway,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(
        anonymous_from(&app, [172, 18, 0, 1], "192.0.2.11").await,
        StatusCode::UNAUTHORIZED,
        "the other client behind the gateway is not limited"
    );
}

/// A Redis of its own: pausing the shared one would stall the other tests' checks.
struct PrivateRedis {
    url: String,
    process: std::process::Child,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/engines.sh up redis)");
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { url, process }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `CLIENT PAUSE` makes Redis accept commands and not answer them: the checks must give
/// up after the configured timeout, let the requests through and count it.
#[tokio::test]
async fn a_paused_redis_does_not_stall_requests() {
    let redis = PrivateRedis::start();
    let db = TestDb::new().await;
    let mut config = common::config(&db);
    config.redis_url = Some(redis.url.clone());
    config.redis_timeout_ms = 200;
    config.rate_limit.per_ip_per_minute = 1000;
    let app = TestApp::with_config(config).await;
    assert!(app.state.rate_limiter.is_shared());
    assert_eq!(
        app.request(Method::GET, "/api/auth/me", Auth::None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "Redis answers before the pause"
    );
    let mut admin = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(5000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let reply = app
            .request(Method::GET, "/api/auth/me", Auth::None, None)
            .await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "a paused Redis stalled a request for {slowest:?}"
    );
    let metrics = app.state.metrics.encode();
    let errors: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("iafactory_api_rate_limiter_errors_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(errors >= 5, "each stalled check is counted: {errors}");
}
