//! Runs one execution. Agents start as soon as their dependencies succeeded; a
//! failure skips everything downstream of it while independent branches finish; the
//! whole run has a deadline and can be cancelled. Every transition is written to
//! `workflow_steps` and appended to the event log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use iafactory_crds::WorkflowSpec;
use iafactory_crds::workflow::AgentSpec;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::StatusLabel;
use super::events::EventLog;
use super::template::render;
use crate::auth::{Auth, KeyIdentity, Role, Scope};
use crate::db::tenant_tx;
use crate::error::ApiError;
use crate::rag::generate::{GenerateError, Message};
use crate::rag::routes::{citations, retrieve};
use crate::rag::search::SearchFilters;
use crate::state::AppState;

/// Passages an agent with a knowledge base reads.
const AGENT_PASSAGES: usize = 5;
/// How long an abandoned run (its replica gone) stays open past its deadline.
pub const ABANDON_GRACE_SECONDS: i32 = 30;

/// What to run.
#[derive(Clone, Debug)]
pub struct ExecutionRequest {
    pub tenant_id: Uuid,
    pub workflow_id: Uuid,
    pub spec: WorkflowSpec,
    pub input: String,
    /// `manual`, `schedule` or `api`.
    pub trigger: &'static str,
    /// The API key that started the run, if one did: its agents search only the
    /// knowledge bases the key may use (see [`check_knowledge_bases`]).
    pub key: Option<KeyIdentity>,
}

/// The first agent whose knowledge base is outside `allowed` (a key's restriction), by
/// agent and knowledge-base name; a name that resolves to no knowledge base is outside.
pub async fn knowledge_base_outside(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    spec: &WorkflowSpec,
    allowed: &[Uuid],
) -> Result<Option<(String, String)>, sqlx::Error> {
    let names: Vec<String> = spec
        .agents
        .iter()
        .filter_map(|a| a.knowledge_base.clone())
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    let ids: HashMap<String, Uuid> = sqlx::query_as::<_, (String, Uuid)>(
        "SELECT name, id FROM knowledge_bases WHERE name = ANY($1)",
    )
    .bind(&names)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    Ok(spec.agents.iter().find_map(|agent| {
        let name = agent.knowledge_base.as_ref()?;
        let inside = ids.get(name).is_some_and(|id| allowed.contains(id));
        (!inside).then(|| (agent.name.clone(), name.clone()))
    }))
}

/// Records a new execution with a pending step per agent. The caller starts it with
/// [`spawn`], after any claim it must commit together with the row.
pub async fn create(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    request: &ExecutionRequest,
) -> Result<Uuid, sqlx::Error> {
    let execution_id: Uuid = sqlx::query_scalar(
        "INSERT INTO workflow_executions (tenant_id, workflow_id, status, input, trigger, deadline_at)
         VALUES ($1, $2, 'pending', $3, $4, now() + make_interval(secs => $5)) RETURNING id",
    )
    .bind(request.tenant_id)
    .bind(request.workflow_id)
    .bind(&request.input)
    .bind(request.trigger)
    .bind(f64::from(request.spec.timeout_seconds))
    .fetch_one(&mut **tx)
    .await?;
    let agents: Vec<String> = request.spec.agents.iter().map(|a| a.name.clone()).collect();
    sqlx::query(
        "INSERT INTO workflow_steps (tenant_id, execution_id, agent) SELECT $1, $2, unnest($3::text[])",
    )
    .bind(request.tenant_id)
    .bind(execution_id)
    .bind(&agents)
    .execute(&mut **tx)
    .await?;
    Ok(execution_id)
}

/// Runs a recorded execution in the background.
pub fn spawn(state: AppState, request: ExecutionRequest, execution_id: Uuid) {
    let token = state.workflows.track(execution_id);
    tokio::spawn(async move {
        let started = Instant::now();
        let status = match run(&state, &request, execution_id, token).await {
            Ok(status) => status,
            Err(error) => {
                tracing::error!(%error, %execution_id, "a workflow execution could not be recorded");
                if let Ok(log) =
                    EventLog::resume(state.db.clone(), request.tenant_id, execution_id).await
                {
                    let message = format!("internal error: {error}");
                    let _ = finish(&state, &log, "failed", None, Some(&message), None).await;
                }
                "failed"
            }
        };
        let label = StatusLabel {
            status: status.to_owned(),
        };
        state
            .workflows
            .metrics
            .executions
            .get_or_create(&label)
            .inc();
        state
            .workflows
            .metrics
            .workflow_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        state.workflows.untrack(execution_id);
    });
}

enum AgentOutcome {
    Succeeded(String),
    Failed(String),
    Cancelled,
}

/// Which agents depend on which: the reverse edges.
fn dependents(agents: &[AgentSpec]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for agent in agents {
        for dependency in &agent.depends_on {
            map.entry(dependency.clone())
                .or_default()
                .push(agent.name.clone());
        }
    }
    map
}

/// Everything downstream of `agent`.
fn downstream(agent: &str, dependents: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut queue = vec![agent.to_owned()];
    while let Some(next) = queue.pop() {
        for child in dependents.get(&next).into_iter().flatten() {
            if found.insert(child.clone()) {
                queue.push(child.clone());
            }
        }
    }
    found
}

async fn set_step(
    state: &AppState,
    tenant_id: Uuid,
    execution_id: Uuid,
    agent: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    sqlx::query(
        "UPDATE workflow_steps SET status = $3, error = coalesce($4, error),
             finished_at = CASE WHEN $3 IN ('skipped', 'cancelled', 'failed') AND finished_at IS NULL AND started_at IS NOT NULL THEN now() ELSE finished_at END
         WHERE execution_id = $1 AND agent = $2",
    )
    .bind(execution_id)
    .bind(agent)
    .bind(status)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Records the end of a run and its `execution.finished` event, together.
async fn finish(
    state: &AppState,
    log: &EventLog,
    status: &str,
    output: Option<&str>,
    error: Option<&str>,
    failed_agent: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut tx = tenant_tx(&state.db, log.tenant_id).await?;
    sqlx::query(
        "UPDATE workflow_executions e SET status = $2, output = $3, error = $4, failed_agent = $5, finished_at = now(),
             prompt_tokens = (SELECT coalesce(sum(prompt_tokens), 0) FROM workflow_steps s WHERE s.execution_id = e.id),
             completion_tokens = (SELECT coalesce(sum(completion_tokens), 0) FROM workflow_steps s WHERE s.execution_id = e.id)
         WHERE id = $1",
    )
    .bind(log.execution_id)
    .bind(status)
    .bind(output)
    .bind(error)
    .bind(failed_agent)
    .execute(&mut *tx)
    .await?;
    log.append_in(
        &mut tx,
        "execution.finished",
        None,
        json!({ "status": status, "error": error, "failedAgent": failed_agent }),
    )
    .await?;
    tx.commit().await
}

/// The execution itself; returns its final status.
async fn run(
    state: &AppState,
    request: &ExecutionRequest,
    execution_id: Uuid,
    token: CancellationToken,
) -> Result<&'static str, sqlx::Error> {
    let tenant_id = request.tenant_id;
    let log = EventLog::new(state.db.clone(), tenant_id, execution_id);
    {
        let mut tx = tenant_tx(&state.db, tenant_id).await?;
        sqlx::query(
            "UPDATE workflow_executions SET status = 'running', started_at = now() WHERE id = $1",
        )
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
        log.append_in(
            &mut tx,
            "execution.started",
            None,
            json!({ "agents": request.spec.agents.len() }),
        )
        .await?;
        tx.commit().await?;
    }

    let knowledge_bases = knowledge_base_ids(state, tenant_id, &request.spec).await?;
    let agents: BTreeMap<String, AgentSpec> = request
        .spec
        .agents
        .iter()
        .map(|a| (a.name.clone(), a.clone()))
        .collect();
    let dependents = dependents(&request.spec.agents);
    let mut waiting_on: BTreeMap<String, usize> = agents
        .values()
        .map(|a| (a.name.clone(), a.depends_on.len()))
        .collect();
    let mut outputs: HashMap<String, String> = HashMap::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut skipped: BTreeSet<String> = BTreeSet::new();
    let mut running = JoinSet::new();
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(u64::try_from(request.spec.timeout_seconds).unwrap_or(900));

    let start_agent = |running: &mut JoinSet<(String, AgentOutcome)>,
                       name: &str,
                       outputs: &HashMap<String, String>| {
        let agent = agents[name].clone();
        let context = AgentContext {
            state: state.clone(),
            tenant_id,
            execution_id,
            input: request.input.clone(),
            outputs: outputs.clone(),
            knowledge_base: agent
                .knowledge_base
                .as_ref()
                .map(|kb| knowledge_bases.get(kb).copied()),
            key: request.key.clone(),
            log: log.clone(),
            token: token.child_token(),
        };
        running.spawn(async move {
            let name = agent.name.clone();
            (name, run_agent(context, agent).await)
        });
    };
    for (name, count) in &waiting_on {
        if *count == 0 {
            start_agent(&mut running, name, &outputs);
        }
    }

    let mut timed_out = false;
    while !running.is_empty() {
        let joined = tokio::select! {
            joined = running.join_next() => joined,
            () = tokio::time::sleep_until(deadline), if !timed_out => {
                timed_out = true;
                token.cancel();
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (name, outcome) = match joined {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(%error, "an agent task panicked");
                continue;
            }
        };
        match outcome {
            AgentOutcome::Succeeded(output) => {
                outputs.insert(name.clone(), output);
                for child in dependents.get(&name).into_iter().flatten() {
                    let count = waiting_on
                        .get_mut(child)
                        .expect("every dependent is an agent");
                    *count -= 1;
                    if *count == 0 && !skipped.contains(child) && !token.is_cancelled() {
                        start_agent(&mut running, child, &outputs);
                    }
                }
            }
            AgentOutcome::Failed(error) => {
                for child in downstream(&name, &dependents) {
                    if skipped.insert(child.clone()) {
                        set_step(
                            state,
                            tenant_id,
                            execution_id,
                            &child,
                            "skipped",
                            Some(&format!("{name:?} failed")),
                        )
                        .await?;
                        log.append("agent.skipped", Some(&child), json!({ "because": name }))
                            .await?;
                    }
                }
                failed.push((name, error));
            }
            AgentOutcome::Cancelled => {}
        }
    }

    // Agents that never started (cancelled or timed out before their turn).
    let never_ran: Vec<String> = agents
        .keys()
        .filter(|n| {
            !outputs.contains_key(*n)
                && !skipped.contains(*n)
                && !failed.iter().any(|(f, _)| f == *n)
        })
        .cloned()
        .collect();
    let cancelled = token.is_cancelled() && !timed_out;
    let (status, error, failed_agent) = if cancelled {
        ("cancelled", Some("cancelled on request".to_owned()), None)
    } else if timed_out {
        (
            "failed",
            Some(format!(
                "the workflow timed out after {} s",
                request.spec.timeout_seconds
            )),
            failed.first().map(|(n, _)| n.clone()),
        )
    } else if let Some((agent, error)) = failed.first() {
        (
            "failed",
            Some(format!("agent {agent:?} failed: {error}")),
            Some(agent.clone()),
        )
    } else {
        ("succeeded", None, None)
    };
    for name in never_ran.iter().filter(|n| !outputs.contains_key(*n)) {
        let step_status = if cancelled || timed_out {
            "cancelled"
        } else {
            "skipped"
        };
        set_step(state, tenant_id, execution_id, name, step_status, None).await?;
    }
    let output =
        (status == "succeeded").then(|| final_output(&request.spec.agents, &dependents, &outputs));
    finish(
        state,
        &log,
        status,
        output.as_deref(),
        error.as_deref(),
        failed_agent.as_deref(),
    )
    .await?;
    Ok(status)
}

/// The result of a run: what its last agents wrote (one sink: its output as is).
fn final_output(
    agents: &[AgentSpec],
    dependents: &BTreeMap<String, Vec<String>>,
    outputs: &HashMap<String, String>,
) -> String {
    let sinks: Vec<&AgentSpec> = agents
        .iter()
        .filter(|a| !dependents.contains_key(&a.name))
        .collect();
    if let [only] = sinks.as_slice() {
        return outputs.get(&only.name).cloned().unwrap_or_default();
    }
    sinks
        .iter()
        .map(|a| {
            format!(
                "## {}\n\n{}",
                a.name,
                outputs.get(&a.name).map_or("", String::as_str)
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

async fn knowledge_base_ids(
    state: &AppState,
    tenant_id: Uuid,
    spec: &WorkflowSpec,
) -> Result<HashMap<String, Uuid>, sqlx::Error> {
    let names: Vec<String> = spec
        .agents
        .iter()
        .filter_map(|a| a.knowledge_base.clone())
        .collect();
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    let rows: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT name, id FROM knowledge_bases WHERE name = ANY($1)")
            .bind(&names)
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(rows.into_iter().collect())
}

struct AgentContext {
    state: AppState,
    tenant_id: Uuid,
    execution_id: Uuid,
    input: String,
    outputs: HashMap<String, String>,
    /// `Some(None)`: the agent names a knowledge base that does not exist (any more).
    knowledge_base: Option<Option<Uuid>>,
    /// The key that started the run: retrieval keeps its knowledge-base restriction.
    key: Option<KeyIdentity>,
    log: Arc<EventLog>,
    token: CancellationToken,
}

/// Why one attempt of an agent's call failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Provider(#[from] GenerateError),
    #[error("no answer within {0} s")]
    Timeout(u64),
}

impl CallError {
    fn is_transient(&self) -> bool {
        matches!(self, CallError::Provider(e) if e.is_transient())
    }
}

async fn run_agent(context: AgentContext, agent: AgentSpec) -> AgentOutcome {
    match run_agent_inner(&context, &agent).await {
        Ok(outcome) => outcome,
        Err(error) => AgentOutcome::Failed(format!("recording the step failed: {error}")),
    }
}

async fn run_agent_inner(
    context: &AgentContext,
    agent: &AgentSpec,
) -> Result<AgentOutcome, sqlx::Error> {
    let state = &context.state;
    let workflows = &state.workflows;
    // The permit bounds calls in flight; waiting for one is not the agent's time.
    let permit = tokio::select! {
        permit = workflows.permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        () = context.token.cancelled() => return Ok(AgentOutcome::Cancelled),
    };
    let started = Instant::now();
    {
        let mut tx = tenant_tx(&state.db, context.tenant_id).await?;
        sqlx::query("UPDATE workflow_steps SET status = 'running', started_at = now() WHERE execution_id = $1 AND agent = $2")
            .bind(context.execution_id)
            .bind(&agent.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    context
        .log
        .append(
            "agent.started",
            Some(&agent.name),
            json!({ "role": agent.role, "provider": agent.provider, "model": agent.model }),
        )
        .await?;

    let result = tokio::select! {
        result = call_agent(context, agent) => result,
        () = context.token.cancelled() => Err(AgentFailure::Cancelled),
    };
    drop(permit);
    let elapsed = started.elapsed();
    let duration_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
    let (status, outcome) = match result {
        Ok(answer) => {
            let mut tx = tenant_tx(&state.db, context.tenant_id).await?;
            sqlx::query(
                "UPDATE workflow_steps SET status = 'succeeded', input = $3, output = $4, attempts = $5, prompt_tokens = $6,
                     completion_tokens = $7, citations = $8, finished_at = now(), duration_ms = $9
                 WHERE execution_id = $1 AND agent = $2",
            )
            .bind(context.execution_id)
            .bind(&agent.name)
            .bind(&answer.prompt)
            .bind(&answer.output)
            .bind(answer.attempts)
            .bind(i64::try_from(answer.prompt_tokens).unwrap_or(i64::MAX))
            .bind(i64::try_from(answer.completion_tokens).unwrap_or(i64::MAX))
            .bind(&answer.citations)
            .bind(duration_ms)
            .execute(&mut *tx)
            .await?;
            context
                .log
                .append_in(
                    &mut tx,
                    "agent.succeeded",
                    Some(&agent.name),
                    json!({ "durationMs": duration_ms, "attempts": answer.attempts, "completionTokens": answer.completion_tokens }),
                )
                .await?;
            tx.commit().await?;
            ("succeeded", AgentOutcome::Succeeded(answer.output))
        }
        Err(AgentFailure::Cancelled) => {
            let mut tx = tenant_tx(&state.db, context.tenant_id).await?;
            sqlx::query(
                "UPDATE workflow_steps SET status = 'cancelled', finished_at = now(), duration_ms = $3 WHERE execution_id = $1 AND agent = $2",
            )
            .bind(context.execution_id)
            .bind(&agent.name)
            .bind(duration_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            context
                .log
                .append("agent.cancelled", Some(&agent.name), json!({}))
                .await?;
            ("cancelled", AgentOutcome::Cancelled)
        }
        Err(AgentFailure::Failed { error, attempts }) => {
            let mut tx = tenant_tx(&state.db, context.tenant_id).await?;
            sqlx::query(
                "UPDATE workflow_steps SET status = 'failed', error = $3, attempts = $4, finished_at = now(), duration_ms = $5
                 WHERE execution_id = $1 AND agent = $2",
            )
            .bind(context.execution_id)
            .bind(&agent.name)
            .bind(&error)
            .bind(attempts)
            .bind(duration_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            context
                .log
                .append(
                    "agent.failed",
                    Some(&agent.name),
                    json!({ "error": error, "attempts": attempts }),
                )
                .await?;
            ("failed", AgentOutcome::Failed(error))
        }
    };
    workflows
        .metrics
        .step_duration
        .get_or_create(&StatusLabel {
            status: status.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
    Ok(outcome)
}

struct AgentAnswer {
    prompt: String,
    output: String,
    attempts: i32,
    prompt_tokens: u64,
    completion_tokens: u64,
    citations: serde_json::Value,
}

enum AgentFailure {
    Cancelled,
    Failed { error: String, attempts: i32 },
}

fn failed(error: impl Into<String>, attempts: i32) -> AgentFailure {
    AgentFailure::Failed {
        error: error.into(),
        attempts,
    }
}

/// The tenant acting through a run: it may search its own knowledge bases, nothing
/// more, and only those of the API key that started it, if one did. (Checked at start
/// too; kept here because names resolve again when the agent runs.)
fn workflow_principal(tenant_id: Uuid, key: Option<KeyIdentity>) -> Auth {
    Auth {
        tenant_id,
        user_id: Uuid::nil(),
        role: Role::User,
        scopes: vec![Scope::Query],
        key,
    }
}

async fn call_agent(
    context: &AgentContext,
    agent: &AgentSpec,
) -> Result<AgentAnswer, AgentFailure> {
    let workflows = &context.state.workflows;
    let prompt = render(&agent.prompt, &context.input, &context.outputs);
    let mut system = format!(
        "You are the {} agent of a multi-agent workflow. Do your part of the task thoroughly and concisely, in the language of the task.",
        agent.role
    );
    let mut cited = serde_json::Value::Array(Vec::new());
    match context.knowledge_base {
        Some(Some(kb)) => {
            let query: String = prompt.chars().take(2000).collect();
            let retrieved = retrieve(
                &context.state,
                &workflow_principal(context.tenant_id, context.key.clone()),
                &query,
                &[kb],
                Some(AGENT_PASSAGES),
                &SearchFilters::default(),
            )
            .await
            .map_err(|e: ApiError| failed(format!("searching the knowledge base: {e}"), 0))?;
            if !retrieved.results.is_empty() {
                system.push_str("\n\nUse these numbered passages from the tenant's documents, and cite them as [n]:\n");
                for (i, passage) in retrieved.results.iter().enumerate() {
                    system.push_str(&format!(
                        "\n[{}] {}: {}\n",
                        i + 1,
                        passage.title,
                        passage.content
                    ));
                }
            }
            cited = serde_json::to_value(citations(&retrieved.results)).unwrap_or_default();
        }
        Some(None) => {
            return Err(failed(
                format!(
                    "knowledge base {:?} does not exist",
                    agent.knowledge_base.as_deref().unwrap_or_default()
                ),
                0,
            ));
        }
        None => {}
    }
    let timeout = agent
        .timeout_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(workflows.agent_timeout, Duration::from_secs);
    let client = workflows
        .client(&agent.provider, &agent.model)
        .map_err(|e| failed(e, 0))?;
    let messages = vec![
        Message {
            role: "system".into(),
            content: system,
        },
        Message {
            role: "user".into(),
            content: prompt.clone(),
        },
    ];
    let attempts = std::sync::atomic::AtomicI32::new(0);
    let call = || async {
        attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match tokio::time::timeout(timeout, client.complete(&messages, workflows.max_tokens)).await
        {
            Ok(answer) => answer.map_err(CallError::from),
            Err(_) => Err(CallError::Timeout(timeout.as_secs())),
        }
    };
    let result = call
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(workflows.agent_retries)
                .with_jitter(),
        )
        .when(CallError::is_transient)
        .notify(|error, delay| {
            tracing::info!(agent = %agent.name, %error, ?delay, "retrying the agent's call");
        })
        .await;
    let attempts = attempts.load(std::sync::atomic::Ordering::SeqCst);
    match result {
        Ok((output, usage)) => Ok(AgentAnswer {
            prompt,
            output,
            attempts,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            citations: cited,
        }),
        Err(error) => Err(failed(error.to_string(), attempts)),
    }
}

/// Marks executions whose replica stopped as failed.
pub async fn expire_abandoned(state: &AppState) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT expire_workflow_executions($1)")
        .bind(ABANDON_GRACE_SECONDS)
        .fetch_one(&state.db)
        .await
}
