//! Load checks, ignored by default. Run them with
//! `cargo nextest run -p kube-testserver --release --test load --run-ignored only --no-capture`.
//! They assert the issue's floor (2,000 writes per second, 200 concurrent watches) and print
//! the measured figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_testserver::{Options, TestServer};
use serde_json::json;

const WRITERS: usize = 32;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"load": "1"}},
        "data": {"k": "v"}}))
    .unwrap()
}

/// Runs `total` writes over `WRITERS` tasks: half creates, half merge patches of the
/// created objects. Returns the elapsed time.
async fn write_burst(api: &Api<ConfigMap>, prefix: &str, total: usize) -> Duration {
    let per_task = total / WRITERS;
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|t| {
            let api = api.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                for i in 0..per_task / 2 {
                    let name = format!("{prefix}-{t}-{i}");
                    api.create(&PostParams::default(), &cm(&name))
                        .await
                        .unwrap();
                    api.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"data": {"k": format!("{i}")}})),
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load check: run explicitly, preferably with --release"]
async fn writes_per_second() {
    let server = TestServer::start(Options::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    write_burst(&api, "warm", 640).await;
    let total = 12_800;
    let elapsed = write_burst(&api, "w", total).await;
    let rate = total as f64 / elapsed.as_secs_f64();
    println!("writes: {total} in {elapsed:?} = {rate:.0} writes/s ({WRITERS} concurrent writers)");
    assert_eq!(server.counts().writes(), (total + 640) as u64);
    assert!(
        rate >= 2000.0,
        "{rate:.0} writes/s is under the 2,000 floor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load check: run explicitly, preferably with --release"]
async fn two_hundred_concurrent_watches() {
    const WATCHES: usize = 200;
    let server = TestServer::start(Options::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let rv = server.resource_version();
    let seen = Arc::new(AtomicU64::new(0));
    let total = 6_400;
    // The watchers count event lines without decoding them: this measures the server, not
    // 200 clients deserialising on the same two cores.
    let client = server.client();
    let mut watchers = Vec::new();
    for i in 0..WATCHES {
        // Half filter on a label, half watch everything.
        let selector = if i % 2 == 0 {
            "&labelSelector=load%3D1"
        } else {
            ""
        };
        let uri = format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}{selector}"
        );
        let req = http::Request::get(uri).body(Vec::new()).unwrap();
        let stream = client.request_stream(req).await.unwrap();
        let seen = seen.clone();
        watchers.push(tokio::spawn(async move {
            let mut lines = std::pin::pin!(stream.lines());
            let mut n = 0;
            while n < total {
                let line = lines.next().await.expect("the watch stays open").unwrap();
                if line.starts_with(r#"{"type":"ADDED""#)
                    || line.starts_with(r#"{"type":"MODIFIED""#)
                {
                    n += 1;
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    assert_eq!(server.counts().watch, WATCHES as u64);
    let elapsed = write_burst(&api, "w", total).await;
    let rate = total as f64 / elapsed.as_secs_f64();
    let start = Instant::now();
    for w in watchers {
        tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("every watch sees every write")
            .unwrap();
    }
    let drain = start.elapsed();
    let delivered = seen.load(Ordering::Relaxed);
    println!(
        "watches: {WATCHES} open; {total} writes in {elapsed:?} = {rate:.0} writes/s; \
         {delivered} events delivered, the last {drain:?} after the last write"
    );
    assert_eq!(delivered, (total * WATCHES) as u64);
    assert!(
        rate >= 2000.0,
        "{rate:.0} writes/s with {WATCHES} watches is under the floor"
    );
}
