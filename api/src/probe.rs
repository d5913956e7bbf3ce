//! Probes of the API's dependencies, exported as `iafactory_api_dependency_up`, so
//! alerts can tell which one is down rather than only that requests fail.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::DependencyLabels;
use crate::state::AppState;

/// How often the dependencies are probed.
pub const PROBE_PERIOD: Duration = Duration::from_secs(15);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Probes once and records the results: PostgreSQL, the vector store (pgvector inside
/// it, or Qdrant) and, when configured, the model server.
pub async fn probe_once(state: &AppState, http: &reqwest::Client) {
    let postgres = tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&state.db))
        .await
        .is_ok_and(|r| r.is_ok());
    let vector_store = if state.rag.store.kind() != "pgvector" {
        tokio::time::timeout(PROBE_TIMEOUT, state.rag.store.ready())
            .await
            .unwrap_or(false)
    } else {
        postgres
            && tokio::time::timeout(
                PROBE_TIMEOUT,
                sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')",
                )
                .fetch_one(&state.db),
            )
            .await
            .is_ok_and(|r| r.unwrap_or(false))
    };
    let set = |dependency: &'static str, up: bool| {
        state
            .metrics
            .dependency_up
            .get_or_create(&DependencyLabels { dependency })
            .set(i64::from(up));
    };
    set("postgres", postgres);
    set("vector_store", vector_store);
    if let Some(url) = state
        .config
        .llm_base_url
        .as_deref()
        .filter(|u| !u.is_empty())
    {
        // Any answer below 500 means the server is up; OpenAI-compatible servers list
        // their models there.
        let ollama = http
            .get(format!("{}/models", url.trim_end_matches('/')))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() < 500);
        set("ollama", ollama);
    }
}

/// Probes every [`PROBE_PERIOD`] until `stop`.
pub fn spawn(state: AppState, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut interval = tokio::time::interval(PROBE_PERIOD);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => probe_once(&state, &http).await,
            }
        }
    })
}
