//! The operator at scale, against the in-memory API server: the operator runs as its
//! own process (so its memory is its own), the server and this load driver in this
//! one.
//!
//! 1. `FIRST` Tenants created at once; the time until every one is Ready.
//! 2. Steady state: every Tenant touched once (paced), forcing a full no-op reconcile; the
//!    reconcile duration percentiles from the operator's own histogram, and the writes
//!    (which must be none).
//! 3. `SECOND` more Tenants; the operator's resident memory with all of them Ready.
//!
//!   cargo build --release -p iafactory-operator
//!   cargo run --release -p iafactory-operator --example scale -- target/release/iafactory-operator
//!
//! (`scripts/bench-operator` does both.)

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use iafactory_crds::Tenant;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_testserver::{Options, TestServer};
use serde_json::json;

const FIRST: usize = 500;
const SECOND: usize = 500;

fn tenant(i: usize) -> anyhow::Result<Tenant> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "iafactory.dz/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": format!("tenant-{i:04}")},
        "spec": {"plan": "free", "languages": ["ar", "fr"]}
    }))?)
}

async fn create_all(client: &kube::Client, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    let api: Api<Tenant> = Api::all(client.clone());
    let creates = range.map(|i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &tenant(i)?)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        }
    });
    futures::future::try_join_all(creates).await?;
    Ok(())
}

fn ready_count(server: &TestServer) -> usize {
    server
        .list("iafactory.dz", "tenants", None)
        .iter()
        .filter(|t| {
            t["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count()
}

async fn wait_ready(server: &TestServer, want: usize, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let ready = ready_count(server);
        if ready >= want {
            return Ok(started.elapsed());
        }
        if reported.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {:>5.1} s: {ready}/{want} Ready",
                started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        if started.elapsed() > limit {
            bail!(
                "only {} of {want} Tenants Ready after {limit:?}",
                ready_count(server)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `(upper bound, cumulative count)` of the tenant controller's duration histogram.
async fn histogram(metrics: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    let text = reqwest::get(format!("{metrics}/metrics"))
        .await?
        .text()
        .await?;
    let mut buckets = Vec::new();
    for line in text.lines() {
        if !line.starts_with("iafactory_operator_reconcile_duration_seconds_bucket")
            || !line.contains("controller=\"tenant\"")
        {
            continue;
        }
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .context("a bucket bound")?;
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        let count: f64 = line.rsplit(' ').next().context("a count")?.parse()?;
        buckets.push((bound, count));
    }
    Ok(buckets)
}

fn percentile(before: &[(f64, f64)], after: &[(f64, f64)], p: f64) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, count)| {
            (
                *bound,
                count
                    - before
                        .iter()
                        .find(|(b, _)| b == bound)
                        .map_or(0.0, |(_, c)| *c),
            )
        })
        .collect();
    let total = delta.last().map_or(0.0, |(_, c)| *c);
    delta
        .iter()
        .find(|(_, c)| *c >= total * p)
        .map_or(f64::INFINITY, |(b, _)| *b)
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = std::env::args()
        .nth(1)
        .context("usage: scale PATH-TO-iafactory-operator")?;
    let server = TestServer::start(Options {
        ready_delay: Duration::from_millis(200),
        history_window: 200_000,
        ..Options::default()
    })
    .await?;
    let client = server.client();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for file in ["tenant", "knowledgebase", "workflow"] {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../crds/{file}.yaml"));
        let crd = serde_yaml::from_str(&std::fs::read_to_string(path)?)?;
        crds.create(&PostParams::default(), &crd).await?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let metrics = format!("http://127.0.0.1:{port}");
    let mut operator = tokio::process::Command::new(&binary)
        .args([
            "--no-leader-election",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--log",
            "warn",
            "--concurrency",
            "32",
        ])
        .env("KUBECONFIG", server.kubeconfig_path())
        .kill_on_drop(true)
        .spawn()?;
    let pid = operator.id().context("the operator runs")?;
    while reqwest::get(format!("{metrics}/readyz"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    create_all(&client, 0..FIRST).await?;
    let created = started.elapsed();
    wait_ready(&server, FIRST, Duration::from_secs(600)).await?;
    println!(
        "{FIRST} Tenants created at once (in {:.2} s): all Ready {:.2} s after the first create",
        created.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // Settle, then force one full reconcile per Tenant.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = histogram(&metrics).await?;
    let runs_before = before.last().map_or(0.0, |(_, c)| *c);
    server.reset_counts();
    let api: Api<Tenant> = Api::all(client.clone());
    let touch = json!({"metadata": {"annotations": {"bench/touch": "1"}}});
    // Paced, one every 5 ms: the cost of a reconcile, not the queue of 500 at once on
    // two cores.
    for i in 0..FIRST {
        api.patch(
            &format!("tenant-{i:04}"),
            &PatchParams::default(),
            &Patch::Merge(&touch),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        let after = histogram(&metrics).await?;
        if after.last().map_or(0.0, |(_, c)| *c) >= runs_before + FIRST as f64 {
            break after;
        }
        if Instant::now() > deadline {
            bail!("the touches did not all cause a reconcile");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let counts = server.counts();
    println!(
        "steady state: {FIRST} no-op reconciles; duration p50 <= {:.1} ms, p99 <= {:.1} ms (histogram bucket bounds); writes by the operator: {}",
        percentile(&before, &after, 0.5) * 1000.0,
        percentile(&before, &after, 0.99) * 1000.0,
        counts.writes() - FIRST as u64
    );

    create_all(&client, FIRST..FIRST + SECOND).await?;
    wait_ready(&server, FIRST + SECOND, Duration::from_secs(600)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "{} Tenants Ready: operator resident memory {:.0} MiB",
        FIRST + SECOND,
        rss_mib(pid)?
    );
    operator.kill().await?;
    Ok(())
}
