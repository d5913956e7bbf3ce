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

use std::collections::HashMap;
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
use crate::rag::generate::{ChatClient, Providers, ProvidersConfigError};

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

/// A change in an execution's event log, as announced by `NOTIFY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub tenant_id: Uuid,
    pub execution_id: Uuid,
}

/// The engine's shared state: one per process.
pub struct Workflows {
    /// The same providers, protocols and sovereignty rule as answers, over one pool of
    /// connections for every agent call.
    providers: Providers,
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
    #[error(transparent)]
    Providers(#[from] ProvidersConfigError),
    #[error("building the providers' HTTP client: {0}")]
    Http(String),
}

impl Workflows {
    pub fn new(config: &Config, metrics: WorkflowMetrics) -> Result<Self, WorkflowError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(config.workflow_concurrency)
            .build()
            .map_err(|e| WorkflowError::Http(e.to_string()))?;
        Ok(Self {
            providers: Providers::from_config(config, http)?,
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
        self.providers.check(provider).map_err(|e| e.to_string())
    }

    /// A client for one agent's call, in its provider's protocol, over the shared
    /// connection pool (the caller bounds the call with the agent's timeout). Checked
    /// again at run time: the configuration may have changed since the workflow was
    /// saved.
    pub fn client(&self, provider: &str, model: &str) -> Result<ChatClient, String> {
        self.providers
            .client(provider, model)
            .map_err(|e| e.to_string())
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
