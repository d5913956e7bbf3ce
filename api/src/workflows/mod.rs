//! Multi-agent workflows: a DAG of LLM agents, run by the API.
//!
//! - [`template`]: prompt templates (pure).
//! - [`engine`]: runs an execution: agents start as soon as their dependencies are
//!   done, within a concurrency limit, each with a timeout and retries on transient
//!   provider errors; a failure skips its dependents and lets independent branches
//!   finish.
//! - [`events`]: every transition is appended to an ordered log and announced with
//!   PostgreSQL `NOTIFY`, so SSE and WebSocket clients on any replica follow it.
//! - [`schedule`]: cron triggers; one execution per tick, however many replicas run.
//! - [`routes`]: the HTTP surface.

pub mod engine;
pub mod events;
pub mod routes;
pub mod schedule;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::rag::generate::ChatClient;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone)]
pub struct WorkflowMetrics {
    pub executions: Family<StatusLabel, Counter>,
    pub step_duration: Family<StatusLabel, Histogram>,
    pub workflow_duration: Family<StatusLabel, Histogram>,
}

impl WorkflowMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = WorkflowMetrics {
            executions: Family::default(),
            step_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 20))
            }),
            workflow_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 18))
            }),
        };
        registry.register(
            "workflow_executions",
            "Workflow executions finished, by status",
            metrics.executions.clone(),
        );
        registry.register(
            "workflow_step_duration_seconds",
            "Agent step durations, by status",
            metrics.step_duration.clone(),
        );
        registry.register(
            "workflow_duration_seconds",
            "Whole execution durations, by status",
            metrics.workflow_duration.clone(),
        );
        metrics
    }
}

/// A provider an agent may name: `ollama` (the tenant's own model server) or, under
/// open sovereignty, one of the configured external providers.
#[derive(Clone, Debug)]
struct Provider {
    base_url: String,
    api_key: Option<String>,
}

#[derive(serde::Deserialize)]
struct ExternalProvider {
    name: String,
    base_url: String,
    api_key_env: Option<String>,
}

/// A change in an execution's event log, as announced by `NOTIFY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub tenant_id: Uuid,
    pub execution_id: Uuid,
}

/// The engine's shared state: one per process.
pub struct Workflows {
    providers: BTreeMap<String, Provider>,
    /// One pool of connections to the providers for every agent call.
    http: reqwest::Client,
    open_sovereignty: bool,
    /// Bounds the agent calls in flight in this process, across executions.
    pub permits: Arc<Semaphore>,
    pub agent_retries: usize,
    pub agent_timeout: Duration,
    pub max_tokens: u32,
    /// Executions this process runs, to cancel them.
    running: Mutex<HashMap<Uuid, CancellationToken>>,
    /// Event-log changes, from this process and (through `LISTEN`) every other.
    pub notices: broadcast::Sender<Notice>,
    pub metrics: WorkflowMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("IAF_LLM_PROVIDERS is not valid JSON: {0}")]
    Providers(String),
    #[error("building the providers' HTTP client: {0}")]
    Http(String),
}

impl Workflows {
    pub fn new(config: &Config, metrics: WorkflowMetrics) -> Result<Self, WorkflowError> {
        let mut providers = BTreeMap::new();
        if let Some(url) = config.llm_base_url.as_deref().filter(|u| !u.is_empty()) {
            providers.insert(
                "ollama".to_owned(),
                Provider {
                    base_url: url.to_owned(),
                    api_key: None,
                },
            );
        }
        let open_sovereignty = config.sovereignty == "open";
        if let Some(json) = config
            .llm_providers
            .as_deref()
            .filter(|j| !j.trim().is_empty())
        {
            let external: Vec<ExternalProvider> =
                serde_json::from_str(json).map_err(|e| WorkflowError::Providers(e.to_string()))?;
            for provider in external {
                providers.insert(
                    provider.name,
                    Provider {
                        base_url: provider.base_url,
                        api_key: provider.api_key_env.and_then(|var| std::env::var(var).ok()),
                    },
                );
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(config.workflow_concurrency)
            .build()
            .map_err(|e| WorkflowError::Http(e.to_string()))?;
        Ok(Self {
            http,
            providers,
            open_sovereignty,
            permits: Arc::new(Semaphore::new(config.workflow_concurrency)),
            agent_retries: config.workflow_agent_retries,
            agent_timeout: Duration::from_secs(config.workflow_agent_timeout_seconds),
            max_tokens: config.workflow_max_tokens,
            running: Mutex::new(HashMap::new()),
            notices: broadcast::channel(1024).0,
            metrics,
        })
    }

    /// Whether an agent may call `provider`, and why not.
    pub fn check_provider(&self, provider: &str) -> Result<(), String> {
        if provider != "ollama" && !self.open_sovereignty {
            return Err(format!(
                "provider {provider:?} is external, and this tenant's sovereignty is strict: use \"ollama\""
            ));
        }
        if !self.providers.contains_key(provider) {
            let known: Vec<&str> = self.providers.keys().map(String::as_str).collect();
            return Err(format!(
                "provider {provider:?} is not configured (configured: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        }
        Ok(())
    }

    /// A client for one agent's call, over the shared connection pool (the caller
    /// bounds the call with the agent's timeout). Checked again at run time: the
    /// configuration may have changed since the workflow was saved.
    pub fn client(&self, provider: &str, model: &str) -> Result<ChatClient, String> {
        self.check_provider(provider)?;
        let provider = &self.providers[provider];
        Ok(ChatClient::with_client(
            self.http.clone(),
            &provider.base_url,
            model,
            provider.api_key.clone(),
        ))
    }

    fn track(&self, execution_id: Uuid) -> CancellationToken {
        let token = CancellationToken::new();
        self.running
            .lock()
            .expect("the running map is never poisoned")
            .insert(execution_id, token.clone());
        token
    }

    fn untrack(&self, execution_id: Uuid) {
        self.running
            .lock()
            .expect("the running map is never poisoned")
            .remove(&execution_id);
    }

    /// Cancels an execution if this process runs it.
    pub fn cancel_local(&self, execution_id: Uuid) -> bool {
        self.running
            .lock()
            .expect("the running map is never poisoned")
            .get(&execution_id)
            .map(CancellationToken::cancel)
            .is_some()
    }

    /// Cancels every execution of this process (shutdown); they are marked cancelled.
    pub fn cancel_all(&self) {
        for token in self
            .running
            .lock()
            .expect("the running map is never poisoned")
            .values()
        {
            token.cancel();
        }
    }

    pub fn running_count(&self) -> usize {
        self.running
            .lock()
            .expect("the running map is never poisoned")
            .len()
    }
}
