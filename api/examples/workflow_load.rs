//! Load generator for the workflow engine, against the real PostgreSQL, with a
//! provider that answers at once: what remains is the engine's own cost (scheduling,
//! persistence of every step and event, notifications).
//!
//! 1. Sequential: `SEQUENTIAL` runs of a 4-agent chain; per-step overhead is the run's
//!    wall time (from the database's own timestamps) divided by its 4 steps.
//! 2. Concurrent: `CONCURRENT` 4-agent diamonds started at once; every one must
//!    succeed.
//!
//! Run it with `scripts/bench-workflows` (release build, engines started).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body_util::BodyExt;
use iafactory_api::config::{Config, Secret};
use iafactory_api::workflows::engine::{self, ExecutionRequest};
use iafactory_crds::WorkflowSpec;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const SEQUENTIAL: usize = 200;
const CONCURRENT: usize = 100;

async fn instant_provider() -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            axum::Json(json!({
                "choices": [{"message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{address}/v1"))
}

fn agent(name: &str, depends_on: &[&str]) -> Value {
    json!({"name": name, "role": "worker", "provider": "ollama", "model": "instant", "prompt": "{{input}}", "dependsOn": depends_on})
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body.to_string()))?)
        .await?;
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}

/// Waits until the runs finished; returns (status, wall seconds from start to finish).
async fn wait_all(pool: &sqlx::PgPool, ids: &[Uuid]) -> anyhow::Result<Vec<(String, f64)>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // The owner's connection: the benchmark reads across RLS.
        let rows: Vec<(String, Option<f64>)> = sqlx::query_as(
            "SELECT status, extract(epoch FROM finished_at - created_at)::float8 FROM workflow_executions WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(pool)
        .await?;
        if rows.len() == ids.len()
            && rows
                .iter()
                .all(|(s, _)| !matches!(s.as_str(), "pending" | "running"))
        {
            return Ok(rows
                .into_iter()
                .map(|(s, t)| (s, t.unwrap_or(0.0)))
                .collect());
        }
        if Instant::now() > deadline {
            bail!("runs still unfinished after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("IAF_TEST_DATABASE_URL")
        .context("IAF_TEST_DATABASE_URL is unset: run scripts/bench-workflows")?;
    let database = format!("iaf_bench_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await?;
    let url = format!(
        "{}/{database}",
        admin_url.rsplit_once('/').context("a database URL")?.0
    );

    let config = Config {
        database_url: url.clone(),
        jwt_secret: Secret("bench-secret-bench-secret-bench-secret-00".into()),
        llm_base_url: Some(instant_provider().await?),
        workflow_concurrency: 64,
        workflow_scheduler_tick_seconds: 0,
        database_max_connections: 32,
        ..Config::default()
    };
    let state = iafactory_api::server::prepare(config).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    iafactory_api::workflows::events::spawn_listener(
        state.db.clone(),
        state.workflows.clone(),
        stop.clone(),
    );
    let router = iafactory_api::app::app(state.clone()).layer(axum::Extension(ConnectInfo(
        SocketAddr::from(([10, 0, 0, 1], 1)),
    )));
    let registered = call(
        &router,
        "POST",
        "/api/auth/register",
        None,
        json!({"tenant_name": "Bench", "tenant_slug": "bench", "email": "a@bench.dz", "password": "a long enough password"}),
    )
    .await?;
    let token = registered["data"]["access_token"]
        .as_str()
        .context("registered")?
        .to_owned();
    let tenant_id: Uuid = registered["data"]["user"]["tenant_id"]
        .as_str()
        .context("a tenant")?
        .parse()?;
    let owner = sqlx::PgPool::connect(&url).await?;

    let mut workflows = Vec::new();
    for (name, agents) in [
        (
            "chain",
            vec![
                agent("a", &[]),
                agent("b", &["a"]),
                agent("c", &["b"]),
                agent("d", &["c"]),
            ],
        ),
        (
            "diamond",
            vec![
                agent("a", &[]),
                agent("b", &["a"]),
                agent("c", &["a"]),
                agent("d", &["b", "c"]),
            ],
        ),
    ] {
        let created = call(
            &router,
            "POST",
            "/api/workflows",
            Some(&token),
            json!({"name": name, "agents": agents}),
        )
        .await?;
        let id: Uuid = created["data"]["id"]
            .as_str()
            .with_context(|| format!("created: {created}"))?
            .parse()?;
        let spec: WorkflowSpec =
            serde_json::from_value(json!({"agents": created["data"]["agents"]}))?;
        workflows.push((id, spec));
    }
    let start = |workflow: usize| {
        let (workflow_id, spec) = workflows[workflow].clone();
        let state = state.clone();
        async move {
            let request = ExecutionRequest {
                tenant_id,
                workflow_id,
                spec,
                input: "go".into(),
                trigger: "api",
                key: None,
            };
            let mut tx = iafactory_api::db::tenant_tx(&state.db, tenant_id).await?;
            let id = engine::create(&mut tx, &request).await?;
            tx.commit().await?;
            engine::spawn(state, request, id);
            anyhow::Ok(id)
        }
    };

    // 1. One at a time: the engine's cost per step.
    let mut per_step = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let id = start(0).await?;
        let done = wait_all(&owner, &[id]).await?;
        if done[0].0 != "succeeded" {
            bail!("a chain run ended {}", done[0].0);
        }
        let wall: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM finished_at - started_at)::float8 FROM workflow_executions WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&owner)
        .await?;
        per_step.push(wall * 1000.0 / 4.0);
    }
    per_step.sort_by(f64::total_cmp);
    println!(
        "sequential 4-agent chains: {SEQUENTIAL} runs; engine overhead per step p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        percentile(&per_step, 0.5),
        percentile(&per_step, 0.9),
        percentile(&per_step, 0.99)
    );

    // 2. All at once.
    let began = Instant::now();
    let ids = futures::future::try_join_all((0..CONCURRENT).map(|_| start(1))).await?;
    let done = wait_all(&owner, &ids).await?;
    let wall = began.elapsed();
    let failed = done.iter().filter(|(s, _)| s != "succeeded").count();
    let mut latencies: Vec<f64> = done.iter().map(|(_, t)| t * 1000.0).collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "{CONCURRENT} concurrent 4-agent diamonds: all finished in {:.2} s, {failed} failed; run latency p50 {:.0} ms, p99 {:.0} ms",
        wall.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    stop.cancel();
    owner.close().await;
    state.db.close().await;
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    if failed > 0 {
        bail!("{failed} runs failed");
    }
    Ok(())
}
