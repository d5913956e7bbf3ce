//! The TLS gateway against real upstream HTTP servers and real TLS clients: routing by
//! host, tenant isolation per connection, errors, streaming, the HTTP listener, and
//! certificate hot-swap.

mod gateway_support;

use std::time::Duration;

use futures::StreamExt;
use gateway_support::*;
use iafactory_appliance::gateway::{Gateway, GatewayError, RouteTable, Upstream};

#[tokio::test]
async fn each_tenant_reaches_only_its_own_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta) = (
        TestUpstream::start("alpha").await,
        TestUpstream::start("beta").await,
    );
    let gw = TestGateway::start(
        dir.path(),
        &[("alpha", alpha.upstream()), ("beta", beta.upstream())],
    )
    .await;
    let client = gw.client(&["alpha", "beta"]);

    for (tenant, expected) in [("alpha", "alpha"), ("beta", "beta"), ("alpha", "alpha")] {
        let response = client
            .get(gw.url(tenant, "/v1/ask?q=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let echo: serde_json::Value = response.json().await.unwrap();
        assert_eq!(echo["upstream"], expected);
        assert_eq!(echo["path"], "/v1/ask?q=1");
        let host = format!("{tenant}.{DOMAIN}:{}", gw.gateway.https_addr().port());
        assert_eq!(echo["host"], host.as_str());
        assert_eq!(echo["x_forwarded_host"], host.as_str());
        assert_eq!(echo["x_forwarded_proto"], "https");
        assert_eq!(echo["x_forwarded_for"], "127.0.0.1");
    }
    assert_eq!((alpha.hits(), beta.hits()), (2, 1));

    // A client cannot choose its own X-Forwarded-For.
    let echo: serde_json::Value = client
        .get(gw.url("beta", "/"))
        .header("x-forwarded-for", "10.6.6.6")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["x_forwarded_for"], "127.0.0.1");

    let metrics = gw.metrics_text();
    assert!(
        metrics
            .contains(r#"iafactory_appliance_gateway_requests_total{tenant="alpha",code="200"} 2"#),
        "{metrics}"
    );
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_connection_opened_for_one_tenant_never_carries_requests_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta) = (
        TestUpstream::start("alpha").await,
        TestUpstream::start("beta").await,
    );
    let gw = TestGateway::start(
        dir.path(),
        &[("alpha", alpha.upstream()), ("beta", beta.upstream())],
    )
    .await;
    let addr = gw.gateway.https_addr();

    // TLS for beta, then a request that claims to be for alpha, and the other way round.
    let mut on_beta = http1(
        tls_connect(&gw.ca_pem, "beta.example.test", addr)
            .await
            .unwrap(),
    )
    .await;
    let (status, body) = get_on(&mut on_beta, "alpha.example.test", "/secret").await;
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("opened for beta.example.test"), "{body}");
    let mut on_alpha = http1(
        tls_connect(&gw.ca_pem, "alpha.example.test", addr)
            .await
            .unwrap(),
    )
    .await;
    let (status, _) = get_on(&mut on_alpha, "beta.example.test", "/secret").await;
    assert_eq!(status, 421);
    assert_eq!(
        (alpha.hits(), beta.hits()),
        (0, 0),
        "a misdirected request reached an upstream"
    );

    // The same connections still serve their own tenant.
    let (status, body) = get_on(&mut on_beta, "beta.example.test", "/").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""upstream":"beta""#), "{body}");
    assert_eq!((alpha.hits(), beta.hits()), (0, 1));
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn http2_clients_are_routed_by_authority_and_held_to_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta) = (
        TestUpstream::start("alpha").await,
        TestUpstream::start("beta").await,
    );
    let gw = TestGateway::start(
        dir.path(),
        &[("alpha", alpha.upstream()), ("beta", beta.upstream())],
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(gw.gateway.https_addr())
        .await
        .unwrap();
    let tls = tls_connector_with_alpn(&gw.ca_pem, vec![b"h2".to_vec()])
        .connect("alpha.example.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let get = |uri: &str| {
        http::Request::get(uri)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let response = sender
        .send_request(get("https://alpha.example.test/v1/h2"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["upstream"], "alpha");
    assert_eq!(echo["host"], "alpha.example.test");
    assert_eq!(echo["path"], "/v1/h2");

    let response = sender
        .send_request(get("https://beta.example.test/v1/h2"))
        .await
        .unwrap();
    assert_eq!(response.status(), 421);
    assert_eq!((alpha.hits(), beta.hits()), (1, 0));
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn unknown_names_and_dead_upstreams_get_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    let alpha = TestUpstream::start("alpha").await;
    // A port that was free a moment ago: nothing listens there.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let gw = TestGateway::start(
        dir.path(),
        &[
            ("alpha", alpha.upstream()),
            ("down", Upstream::http(&dead.to_string()).unwrap()),
        ],
    )
    .await;
    let addr = gw.gateway.https_addr();

    // No certificate for this name: rustls refuses the handshake with a fatal alert,
    // and nothing is proxied.
    let err = tls_connect(&gw.ca_pem, "gamma.example.test", addr)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fatal alert"), "{err}");
    assert_eq!(alpha.hits(), 0);
    // The server counts the failure just after sending the alert.
    wait_for(
        Duration::from_secs(30),
        "the handshake failure to be counted",
        || async {
            gw.metrics_text()
                .contains("iafactory_appliance_gateway_tls_handshake_failures_total 1")
        },
    )
    .await;

    let response = gw
        .client(&["down"])
        .get(gw.url("down", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert!(
        body.contains(r#"tenant "down""#) && body.contains("unreachable"),
        "{body}"
    );
    assert!(body.contains(&dead.to_string()), "{body}");

    // A tenant removed from the routes while its certificate is still served: 404.
    gw.routes
        .replace(RouteTable::new(DOMAIN).with_tenant("alpha", alpha.upstream()));
    let response = gw
        .client(&["down"])
        .get(gw.url("down", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains(r#"no tenant "down""#)
    );
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn server_sent_events_pass_through_as_they_are_produced() {
    let dir = tempfile::tempdir().unwrap();
    let alpha = TestUpstream::start("alpha").await;
    let gw = TestGateway::start(dir.path(), &[("alpha", alpha.upstream())]).await;
    let response = gw
        .client(&["alpha"])
        .get(gw.url("alpha", "/sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    // The upstream holds back the second event until we have read the first: a gateway
    // that buffered the body would never deliver it.
    let mut received = Vec::new();
    while !received.ends_with(b"data: first\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the first event did not arrive while the stream was open")
            .unwrap()
            .unwrap();
        received.extend_from_slice(&chunk);
    }
    assert!(!String::from_utf8_lossy(&received).contains("second"));
    alpha.release_second_event.notify_one();
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(received, b"data: first\n\ndata: second\n\n");
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn plain_http_answers_acme_challenges_and_redirects_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let alpha = TestUpstream::start("alpha").await;
    let gw = TestGateway::start(dir.path(), &[("alpha", alpha.upstream())]).await;
    gw.challenges.insert("tok-123", "tok-123.thumbprint");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://{}", gw.gateway.http_addr());

    let response = client
        .get(format!("{base}/.well-known/acme-challenge/tok-123"))
        .header("host", "alpha.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "tok-123.thumbprint");
    let response = client
        .get(format!("{base}/.well-known/acme-challenge/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let response = client
        .post(format!("{base}/v1/ask?lang=ar"))
        .header("host", "alpha.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!(
            "https://alpha.example.test:{}/v1/ask?lang=ar",
            gw.gateway.https_addr().port()
        )
        .as_str()
    );
    let response = client
        .get(format!("{base}/"))
        .header("host", "evil.test/@x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(alpha.hits(), 0, "plain HTTP must never reach a tenant");
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_open_stream_finish_and_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let alpha = TestUpstream::start("alpha").await;
    let gw = TestGateway::start(dir.path(), &[("alpha", alpha.upstream())]).await;
    let client = gw.client(&["alpha"]);
    let url = gw.url("alpha", "/sse");
    let https_addr = gw.gateway.https_addr();
    let mut stream = client.get(&url).send().await.unwrap().bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: first"));

    let shutdown = tokio::spawn(gw.gateway.shutdown());
    wait_for(
        Duration::from_secs(30),
        "the listener to close",
        || async move { tokio::net::TcpStream::connect(https_addr).await.is_err() },
    )
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the open stream"
    );

    alpha.release_second_event.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&rest).contains("data: second"));
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown did not finish once the stream ended")
        .unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_handshakes_and_spares_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let alpha = TestUpstream::start("alpha").await;
    let gw = TestGateway::start(dir.path(), &[("alpha", alpha.upstream())]).await;
    let addr = gw.gateway.https_addr();
    let host = "alpha.example.test";

    let tls = tls_connect(&gw.ca_pem, host, addr).await.unwrap();
    let old_leaf = peer_leaf(&tls);
    let mut long_lived = http1(tls).await;
    assert_eq!(get_on(&mut long_lived, host, "/before").await.0, 200);

    // Renew: a certificate inside the renewal window is replaced by the manager.
    let ca = gw.manager.local_ca().unwrap();
    let (chain, key) = ca.issue(host, Duration::from_secs(5 * 86_400)).unwrap();
    gw.manager.store().save(host, &chain, &key).unwrap();
    let outcome = gw.manager.ensure(host).await.unwrap();
    assert!(
        matches!(
            outcome,
            iafactory_appliance::certs::CertOutcome::Issued { .. }
        ),
        "{outcome:?}"
    );

    // The connection opened before the swap carries on.
    assert_eq!(get_on(&mut long_lived, host, "/after").await.0, 200);
    // A new handshake gets the new certificate.
    let fresh = tls_connect(&gw.ca_pem, host, addr).await.unwrap();
    let new_leaf = peer_leaf(&fresh);
    assert_ne!(new_leaf, old_leaf);
    let served = gw.manager.store().load(host).unwrap().unwrap();
    assert_eq!(served.certified_key.cert[0], new_leaf);
    assert_eq!(alpha.hits(), 2);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let mut settings = local_settings();
    settings.http_listen = address;
    let err = Gateway::start(
        settings,
        iafactory_appliance::gateway::SharedRoutes::new(RouteTable::new(DOMAIN)),
        Default::default(),
        Default::default(),
        &mut Default::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, GatewayError::Bind { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&address.to_string()) && message.contains("HTTP"),
        "{message}"
    );
}
