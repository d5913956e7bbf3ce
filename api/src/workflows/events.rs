//! The execution event log: appended in order, announced with `NOTIFY`, replayed by
//! SSE and WebSocket clients from any replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Notice, Workflows};
use crate::db::tenant_tx;

/// `NOTIFY` channel of event-log changes (payload: `tenant_id/execution_id`).
pub const EVENTS_CHANNEL: &str = "iaf_workflow_events";
/// `NOTIFY` channel of cancellations (payload: the execution id).
pub const CANCEL_CHANNEL: &str = "iaf_workflow_cancel";

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ExecutionEvent {
    pub seq: i32,
    /// `execution.started`, `agent.started`, `agent.succeeded`,
    /// `agent.failed`, `agent.skipped`, `agent.cancelled`, `execution.finished`.
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    pub agent: Option<String>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl ExecutionEvent {
    pub fn is_terminal(&self) -> bool {
        self.kind == "execution.finished"
    }
}

/// Appends events of one execution, numbering them. One log has one writer: the
/// process that runs the execution.
pub struct EventLog {
    pool: PgPool,
    pub tenant_id: Uuid,
    pub execution_id: Uuid,
    next: AtomicI32,
}

impl EventLog {
    pub fn new(pool: PgPool, tenant_id: Uuid, execution_id: Uuid) -> Arc<Self> {
        Arc::new(Self {
            pool,
            tenant_id,
            execution_id,
            next: AtomicI32::new(1),
        })
    }

    /// Continues a log that already has events (after an error mid-run).
    pub async fn resume(
        pool: PgPool,
        tenant_id: Uuid,
        execution_id: Uuid,
    ) -> Result<Arc<Self>, sqlx::Error> {
        let mut tx = tenant_tx(&pool, tenant_id).await?;
        let last: i32 = sqlx::query_scalar(
            "SELECT coalesce(max(seq), 0) FROM workflow_events WHERE execution_id = $1",
        )
        .bind(execution_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let log = Self::new(pool, tenant_id, execution_id);
        log.next.store(last + 1, Ordering::SeqCst);
        Ok(log)
    }

    pub async fn append(
        &self,
        kind: &str,
        agent: Option<&str>,
        data: serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        let mut tx = tenant_tx(&self.pool, self.tenant_id).await?;
        self.append_in(&mut tx, kind, agent, data).await?;
        tx.commit().await
    }

    /// Appends within the caller's transaction, so that a step's new state and the
    /// event announcing it commit together (and cost one round trip).
    pub async fn append_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        kind: &str,
        agent: Option<&str>,
        data: serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        sqlx::query(
            "WITH event AS (
                 INSERT INTO workflow_events (tenant_id, execution_id, seq, type, agent, data)
                 VALUES ($1, $2, $3, $4, $5, $6))
             SELECT pg_notify($7, $8)",
        )
        .bind(self.tenant_id)
        .bind(self.execution_id)
        .bind(seq)
        .bind(kind)
        .bind(agent)
        .bind(data)
        .bind(EVENTS_CHANNEL)
        .bind(format!("{}/{}", self.tenant_id, self.execution_id))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Events of one execution after `after`, in order.
pub async fn events_after(
    pool: &PgPool,
    tenant_id: Uuid,
    execution_id: Uuid,
    after: i32,
) -> Result<Vec<ExecutionEvent>, sqlx::Error> {
    let mut tx = tenant_tx(pool, tenant_id).await?;
    let events = sqlx::query_as(
        "SELECT seq, type, agent, data, created_at FROM workflow_events
         WHERE execution_id = $1 AND seq > $2 ORDER BY seq",
    )
    .bind(execution_id)
    .bind(after)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(events)
}

fn parse_notice(payload: &str) -> Option<Notice> {
    let (tenant, execution) = payload.split_once('/')?;
    Some(Notice {
        tenant_id: tenant.parse().ok()?,
        execution_id: execution.parse().ok()?,
    })
}

/// Listens for event-log changes and cancellations from every replica, until `stop`.
/// A dropped connection is re-established; clients also poll, so a gap only delays.
pub fn spawn_listener(
    pool: PgPool,
    workflows: Arc<Workflows>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "workflow event listener cannot connect; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(2)) => continue,
                    }
                }
            };
            if let Err(error) = listener.listen_all([EVENTS_CHANNEL, CANCEL_CHANNEL]).await {
                tracing::warn!(%error, "LISTEN failed; retrying");
                continue;
            }
            loop {
                let notification = tokio::select! {
                    () = stop.cancelled() => return,
                    n = listener.recv() => n,
                };
                match notification {
                    Ok(n) if n.channel() == EVENTS_CHANNEL => {
                        if let Some(notice) = parse_notice(n.payload()) {
                            // No subscriber is fine: nobody is watching.
                            let _ = workflows.notices.send(notice);
                        }
                    }
                    Ok(n) => {
                        if let Ok(id) = n.payload().parse::<Uuid>() {
                            workflows.cancel_local(id);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "workflow event listener lost its connection");
                        break;
                    }
                }
            }
        }
    })
}
