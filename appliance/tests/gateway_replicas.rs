//! A tenant with several API replicas behind the real TLS gateway: requests are spread
//! over every replica, and a replica that refuses connections is skipped, its requests
//! (bodies included) retried on another one, without a single error reaching a client.

mod gateway_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use gateway_support::*;
use iafactory_appliance::gateway::Upstream;

/// A real HTTP server standing in for one replica: answers `NAME BODY_BYTES`.
async fn replica(name: &'static str) -> (Upstream, tokio_util::sync::DropGuard) {
    let app = axum::Router::new()
        .fallback(move |body: axum::body::Bytes| async move { format!("{name} {}", body.len()) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .into_future(),
    );
    (
        Upstream::http(&addr.to_string()).unwrap(),
        cancel.drop_guard(),
    )
}

/// An address nothing listens on: it was free a moment ago.
fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn requests_are_spread_over_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (one, _one) = replica("one").await;
    let (two, _two) = replica("two").await;
    let gw = TestGateway::start(dir.path(), &[("alpha", one), ("alpha", two)]).await;
    let client = gw.client(&["alpha"]);
    let mut per_replica: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        let response = client.get(gw.url("alpha", "/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        let name = body.split_whitespace().next().unwrap().to_owned();
        *per_replica.entry(name).or_default() += 1;
    }
    println!("requests per replica: {per_replica:?}");
    // Sequential requests: nothing in flight, so the replicas take turns exactly.
    assert_eq!(
        per_replica,
        BTreeMap::from([("one".to_owned(), 10), ("two".to_owned(), 10)])
    );
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_refused_replica_is_skipped_and_its_requests_retried_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (live, _live) = replica("live").await;
    let dead = Upstream::http(&dead_address().to_string()).unwrap();
    let gw = TestGateway::start(dir.path(), &[("alpha", dead), ("alpha", live)]).await;
    let client = gw.client(&["alpha"]);
    let payload = "x".repeat(70_000);
    for i in 0..10 {
        let response = if i % 2 == 0 {
            client.get(gw.url("alpha", "/")).send().await.unwrap()
        } else {
            client
                .post(gw.url("alpha", "/v1/ingest"))
                .body(payload.clone())
                .send()
                .await
                .unwrap()
        };
        assert_eq!(response.status(), 200, "request {i}");
        let body = response.text().await.unwrap();
        let expected = if i % 2 == 0 {
            "live 0".to_owned()
        } else {
            // A retried POST arrives whole: its body was never read by the failed try.
            format!("live {}", payload.len())
        };
        assert_eq!(body, expected, "request {i}");
    }
    let metrics = gw.metrics_text();
    // One refused connection, then the replica is out for the ejection period: the
    // other nine requests never tried it.
    for needle in [
        r#"iafactory_appliance_gateway_upstream_connect_failures_total{tenant="alpha"} 1"#,
        r#"iafactory_appliance_gateway_retries_total{tenant="alpha"} 1"#,
        r#"iafactory_appliance_gateway_requests_total{tenant="alpha",code="200"} 10"#,
    ] {
        assert!(metrics.contains(needle), "{needle} in:\n{metrics}");
    }
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_tenant_whose_only_replica_refuses_gets_a_clear_502() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_address();
    let gw = TestGateway::start(
        dir.path(),
        &[("alpha", Upstream::http(&dead.to_string()).unwrap())],
    )
    .await;
    let response = gw
        .client(&["alpha"])
        .get(gw.url("alpha", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert!(
        body.contains(&dead.to_string()) && body.contains("unreachable"),
        "{body}"
    );
    assert!(
        !gw.metrics_text()
            .contains("iafactory_appliance_gateway_retries_total{"),
        "no other replica to retry on"
    );
    gw.gateway.shutdown().await;
}
