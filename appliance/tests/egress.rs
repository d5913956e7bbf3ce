//! Egress of open tenants, from inside the containers `iafactory serve` runs on the real
//! Docker Engine: an open tenant's API reaches its declared provider (a scripted server
//! on the host's loopback) through the tenant's egress proxy, and nothing else (another
//! port of the same host, an undeclared host, a declared name that resolves to a
//! loopback address); a strict tenant gets no proxy, and the open tenant's proxy turns
//! it away. The traffic stays on 127.0.0.1 and on the networks this test creates.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::{TestAppliance, docker, docker_ok, free_port, get, random_suffix, wait_for};

/// A scripted provider on the host's loopback: answers every request with its name and
/// path, and counts them.
async fn scripted(name: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            format!("{name} answered {uri}\n")
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, hits)
}

/// Runs a shell line in `container` with its static busybox; stdout and stderr.
fn sh(container: &str, line: &str) -> String {
    let output = docker(&["exec", container, "/bin/busybox", "sh", "-c", line]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `wget URL` inside `container`, which uses the container's `http_proxy` if it has one.
/// (This static busybox's `wget -T` crashes: `timeout` bounds it instead.)
fn wget(container: &str, url: &str) -> String {
    sh(
        container,
        &format!("/bin/busybox timeout 8 /bin/busybox wget -q -O - {url}"),
    )
}

/// `CONNECT target` to the proxy at `proxy` (host:port), then a GET through the tunnel.
/// nc's input stays open a while: at its end nc half-closes the connection, the tunnel
/// passes that on, and the provider's HTTP server would drop the request unanswered.
fn connect(container: &str, proxy: &str, target: &str) -> String {
    let (host, port) = proxy.rsplit_once(':').unwrap();
    sh(
        container,
        &format!(
            "(printf 'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\nGET /tunnel HTTP/1.0\\r\\nHost: {target}\\r\\n\\r\\n'; /bin/busybox sleep 3) | /bin/busybox timeout 8 /bin/busybox nc {host} {port}"
        ),
    )
}

fn api_of(box_: &TestAppliance, tenant: &str) -> Option<String> {
    box_.containers()
        .into_iter()
        .find(|n| n.starts_with(&format!("iaf-{tenant}-api-")))
}

fn gateway_of(tenant: &str) -> String {
    docker_ok(&[
        "network",
        "inspect",
        &format!("iaf-{tenant}"),
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
    ])
}

fn env_of(container: &str) -> String {
    docker_ok(&["inspect", container, "--format", "{{json .Config.Env}}"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tenant_reaches_its_declared_provider_only_and_a_strict_one_nothing() {
    let (provider_port, provider_hits) = scripted("provider").await;
    let (other_port, other_hits) = scripted("other").await;
    let box_ = TestAppliance::new();
    let serve_port = free_port();
    box_.set_serve(serve_port, 2);
    let open = format!("o{}", random_suffix());
    let strict = format!("s{}", random_suffix());
    let app = box_.app().await;
    // `scripted` at 127.0.0.1 (the plan opens 127.0.0.1/32 for it); `byname` is the
    // same server by a name, with no cidrs: a name may reach public addresses only.
    let open_file = box_.tenant_file(
        &open,
        &format!(
            "  sovereignty: open\n  llmProviders:\n  - name: scripted\n    kind: openai-compatible\n    baseUrl: http://127.0.0.1:{provider_port}/v1\n    secretRef: {{name: provider-key, key: apiKey}}\n  - name: byname\n    kind: openai-compatible\n    baseUrl: http://localhost:{provider_port}/v1\n    secretRef: {{name: provider-key, key: apiKey}}\n"
        ),
    );
    app.store
        .set_user_secret(&open, "provider-key", "apiKey", "sk-test")
        .unwrap();
    app.apply(&[open_file, box_.tenant_file(&strict, "")])
        .unwrap();
    let (daemon, log) = box_.spawn_serve_logged();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Through the proxy its environment names, the open tenant's API reaches the
    // scripted provider on the host.
    let mut answer = String::new();
    wait_for("the open tenant's API reaches its provider", 180, || {
        answer = api_of(&box_, &open)
            .map(|api| wget(&api, &format!("http://127.0.0.1:{provider_port}/v1/models")))
            .unwrap_or_default();
        let done = answer.contains("provider answered /v1/models");
        async move { done }
    })
    .await;
    let open_api = api_of(&box_, &open).unwrap();
    let env = env_of(&open_api);
    assert!(
        env.contains("\"HTTPS_PROXY=http://iaf-egress:3128\"")
            && env.contains("\"HTTP_PROXY=http://iaf-egress:3128\"")
            && env.contains("NO_PROXY=postgres,api,"),
        "{env}"
    );
    let gateway = gateway_of(&open);
    assert!(
        sh(&open_api, "/bin/busybox cat /etc/hosts").contains(&format!("{gateway}\tiaf-egress")),
        "the proxy's name is the network's gateway {gateway}"
    );
    let proxy = format!("{gateway}:3128");
    let before = provider_hits.load(Ordering::SeqCst);

    // CONNECT (what HTTPS providers use) to the declared host:port: a working tunnel.
    let tunnel = connect(&open_api, &proxy, &format!("127.0.0.1:{provider_port}"));
    assert!(
        tunnel.starts_with("HTTP/1.1 200") && tunnel.contains("provider answered /tunnel"),
        "{tunnel}"
    );
    assert_eq!(provider_hits.load(Ordering::SeqCst), before + 1);

    // Another port of the same host, by plain HTTP and by CONNECT: refused, never reached.
    let refused = wget(&open_api, &format!("http://127.0.0.1:{other_port}/"));
    assert!(refused.contains("403"), "{refused}");
    let refused = connect(&open_api, &proxy, &format!("127.0.0.1:{other_port}"));
    assert!(
        refused.starts_with("HTTP/1.1 403") && !refused.contains("answered"),
        "{refused}"
    );
    // The declared host on the declared port, but the name of another host.
    let refused = connect(&open_api, &proxy, &format!("127.0.0.2:{provider_port}"));
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    // A host nobody declared: refused without being looked up.
    let refused = wget(&open_api, "http://provider.example.invalid/");
    assert!(refused.contains("403"), "{refused}");
    // A declared name with no cidrs that resolves to loopback (what a DNS rebinding
    // does): refused, the address is not one a name may reach.
    let refused = wget(&open_api, &format!("http://localhost:{provider_port}/"));
    assert!(refused.contains("403"), "{refused}");
    assert!(
        log_text().contains("none of which provider \"byname\" may have"),
        "{}",
        log_text()
    );
    assert_eq!(other_hits.load(Ordering::SeqCst), 0);
    assert_eq!(provider_hits.load(Ordering::SeqCst), before + 1);

    // The strict tenant: no proxy variables, no proxy name, no proxy on its gateway,
    // and the open tenant's proxy turns it away (it admits its own subnet only).
    let strict_api = api_of(&box_, &strict).expect("the strict tenant runs");
    let env = env_of(&strict_api);
    assert!(!env.to_ascii_uppercase().contains("PROXY"), "{env}");
    assert!(!sh(&strict_api, "/bin/busybox cat /etc/hosts").contains("iaf-egress"));
    let own = connect(
        &strict_api,
        &format!("{}:3128", gateway_of(&strict)),
        &format!("127.0.0.1:{provider_port}"),
    );
    assert!(!own.contains("HTTP/1.1"), "{own}");
    let borrowed = connect(&strict_api, &proxy, &format!("127.0.0.1:{provider_port}"));
    assert!(!borrowed.contains("answered"), "{borrowed}");
    // Docker 20.10 routes an internal network's packets to the host, so the open
    // tenant's proxy hears the strict tenant and refuses it; newer engines give an
    // internal network no default route, and the connection fails before.
    assert!(
        borrowed.is_empty() || borrowed.starts_with("HTTP/1.1 403"),
        "{borrowed}"
    );
    assert_eq!(provider_hits.load(Ordering::SeqCst), before + 1);

    // Each refusal is counted, by tenant and reason.
    let metrics = get(serve_port, "/metrics").await.unwrap();
    let count = |outcome: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("iafactory_appliance_egress_requests_total{")
                    && l.contains(&format!("tenant=\"{open}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("allowed") >= 2, "{metrics}");
    assert_eq!(count("refused_destination"), 4, "{metrics}");
    assert_eq!(count("refused_address"), 1, "{metrics}");
    if borrowed.starts_with("HTTP/1.1 403") {
        assert_eq!(count("refused_source"), 1, "{metrics}");
    }

    drop(daemon);
    let (report, result) = app.down(&|_| {}).await;
    result.unwrap_or_else(|e| panic!("{e}: {:?}", report.actions));
}
