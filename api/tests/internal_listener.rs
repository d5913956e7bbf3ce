//! The internal surface (`/internal/*`, `/metrics`) is served on its own listener, never
//! on the public one; failed operator-token attempts are limited per client address.
//! Both over real sockets, as `iafactory-api serve` runs.

mod common;

use std::net::SocketAddr;

use common::{OPERATOR_TOKEN, TestDb};
use serde_json::{Value, json};

struct Served {
    public: SocketAddr,
    internal: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), iafactory_api::server::ServeError>>,
}

async fn serve(config: iafactory_api::config::Config) -> Served {
    let state = common::state(config).await;
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (public_address, internal_address) =
        (public.local_addr().unwrap(), internal.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(iafactory_api::server::serve(
        state,
        public,
        internal,
        async {
            let _ = stopped.await;
        },
    ));
    Served {
        public: public_address,
        internal: internal_address,
        stop,
        task,
    }
}

async fn put_tenant(
    http: &reqwest::Client,
    address: SocketAddr,
    token: &str,
) -> (u16, Option<String>, Value) {
    let response = http
        .put(format!("http://{address}/internal/tenants/univ-oran"))
        .bearer_auth(token)
        .json(&json!({"name": "Université d'Oran", "plan": "pro"}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

#[tokio::test]
async fn the_public_listener_does_not_serve_the_internal_surface() {
    let db = TestDb::new().await;
    let served = serve(common::config(&db)).await;
    let http = reqwest::Client::new();

    // Public: the internal surface does not exist there, with the usual envelope.
    let metrics = http
        .get(format!("http://{}/metrics", served.public))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 404);
    let body: Value = metrics.json().await.unwrap();
    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let (status, _, body) = put_tenant(&http, served.public, OPERATOR_TOKEN).await;
    assert_eq!(status, 404, "even with the right token: {body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let get = http
        .get(format!(
            "http://{}/internal/tenants/univ-oran/knowledge-bases/x",
            served.public
        ))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 404);
    // What the public listener is for still answers there.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let reply = http
            .get(format!("http://{}{path}", served.public))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{path}");
    }

    // Internal: the operator token is checked, and metrics are served.
    let (status, _, body) = put_tenant(&http, served.internal, "wrong").await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = put_tenant(&http, served.internal, OPERATOR_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["slug"], "univ-oran", "{body}");
    let metrics = http
        .get(format!("http://{}/metrics", served.internal))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("route=\"/internal/tenants/{slug}\",status=\"200\""),
        "{text}"
    );
    for path in ["/healthz", "/readyz"] {
        let reply = http
            .get(format!("http://{}{path}", served.internal))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{path}");
    }
    // Nothing public on the internal listener.
    let login = http
        .post(format!("http://{}/api/auth/login", served.internal))
        .json(&json!({"email": "a@b.dz", "password": "whatever it is"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 404);

    // One shutdown stops both.
    let _ = served.stop.send(());
    served.task.await.unwrap().unwrap();
    for address in [served.public, served.internal] {
        assert!(
            http.get(format!("http://{address}/healthz"))
                .send()
                .await
                .is_err(),
            "{address} no longer listens"
        );
    }
}

#[tokio::test]
async fn failed_operator_tokens_are_limited_per_client_address() {
    let db = TestDb::new().await;
    let served = serve(iafactory_api::config::Config {
        operator_token_failures_per_minute: 3,
        ..common::config(&db)
    })
    .await;
    let http = reqwest::Client::new();
    for attempt in 0..3 {
        let (status, _, body) = put_tenant(&http, served.internal, "guess").await;
        assert_eq!(status, 401, "attempt {attempt}: {body}");
    }
    let (status, retry_after, body) = put_tenant(&http, served.internal, "guess").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let retry_after: u64 = retry_after.expect("a Retry-After").parse().unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    // Blocked: the right token is not even compared, so guessing gains nothing.
    let (status, _, body) = put_tenant(&http, served.internal, OPERATOR_TOKEN).await;
    assert_eq!(status, 429, "{body}");

    // Another address (the operator's, say) is not held back by this one's failures.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let (status, _, body) = put_tenant(&elsewhere, served.internal, OPERATOR_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = put_tenant(&elsewhere, served.internal, "guess").await;
    assert_eq!(status, 401, "{body}");

    // Once a failure's cell is back (60 s / 3), the first address may try again.
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    let (status, _, body) = put_tenant(&http, served.internal, OPERATOR_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let _ = served.stop.send(());
    served.task.await.unwrap().unwrap();
}
