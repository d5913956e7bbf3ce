//! The execution event log: appended in order, announced with `NOTIFY`, replayed by
//! SSE and WebSocket clients from any replica.
//!
//! # Followers
//! A follower (one SSE stream, or one WebSocket subscription) reads the log once, then
//! again only when the `NOTIFY` stream (one `LISTEN` connection per process,
//! [`spawn_listener`]) announces its execution, when the listener reconnected (it may
//! have missed announcements), or every [`SAFETY_RECHECK`] (an execution whose replica
//! died without its final event). Reads of all followers of a process share
//! [`FOLLOWER_READS`] permits, so followers never hold more of the database pool than
//! that, however many there are.
//!
//! # WebSocket limits
//! - [`MAX_SUBSCRIPTIONS_PER_SOCKET`] subscriptions per socket: one more is answered
//!   `{"type":"error","code":"subscription_limit",...}` and not followed.
//! - [`MAX_SOCKETS_PER_USER`] sockets per user on one replica: one more is refused
//!   before the upgrade, `429` with code `too_many_sockets`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Notice, Workflows};
use crate::db::tenant_tx;
use crate::state::AppState;

/// Subscriptions one WebSocket may hold.
pub const MAX_SUBSCRIPTIONS_PER_SOCKET: usize = 32;
/// WebSockets one user may hold open on one replica.
pub const MAX_SOCKETS_PER_USER: usize = 8;
/// Event-log reads all followers of a process may run at once.
pub const FOLLOWER_READS: usize = 4;
/// How often a quiet follower looks at the log unprompted.
pub const SAFETY_RECHECK: Duration = Duration::from_secs(30);

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
/// A dropped connection is re-established, then followers are told to read again.
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
            // Announcements made while this connection was down are lost: followers
            // read their logs once more.
            let _ = workflows.notices.send(RESYNC);
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

/// The notice that tells every follower to read its log again (nil ids).
const RESYNC: Notice = Notice {
    tenant_id: Uuid::nil(),
    execution_id: Uuid::nil(),
};

fn is_resync(notice: &Notice) -> bool {
    notice.execution_id.is_nil()
}

fn follower_reads() -> &'static Semaphore {
    static READS: OnceLock<Semaphore> = OnceLock::new();
    READS.get_or_init(|| Semaphore::new(FOLLOWER_READS))
}

/// Feeds `sender` with the execution's events, from the first, until it finishes or
/// the client leaves. Wakes on the execution's `NOTIFY`, a resync, or
/// [`SAFETY_RECHECK`]; never polls faster.
pub async fn follow(
    state: AppState,
    tenant_id: Uuid,
    execution_id: Uuid,
    sender: mpsc::Sender<ExecutionEvent>,
) {
    // Subscribed before the first read: an event appended meanwhile is announced here.
    let mut notices = state.workflows.notices.subscribe();
    let mut last = 0;
    loop {
        let read = async {
            let _permit = follower_reads().acquire().await;
            let events = events_after(&state.db, tenant_id, execution_id, last).await?;
            let ended = if events.is_empty() {
                abandoned(&state.db, tenant_id, execution_id).await?
            } else {
                false
            };
            Ok::<_, sqlx::Error>((events, ended))
        };
        let (events, ended) = tokio::select! {
            read = read => match read {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%error, "reading workflow events failed");
                    return;
                }
            },
            () = sender.closed() => return,
        };
        if ended {
            return;
        }
        for event in events {
            last = event.seq;
            let terminal = event.is_terminal();
            if sender.send(event).await.is_err() || terminal {
                return;
            }
        }
        let announced = async {
            loop {
                match notices.recv().await {
                    Ok(notice) if notice.execution_id == execution_id || is_resync(&notice) => {
                        return;
                    }
                    Ok(_) => {}
                    // Lagged: look at the log anyway.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        tokio::select! {
            () = announced => {}
            () = tokio::time::sleep(SAFETY_RECHECK) => {}
            () = sender.closed() => return,
        }
    }
}

/// Whether the execution ended without its final event (its replica stopped), or does
/// not exist: nothing more will come.
async fn abandoned(
    pool: &PgPool,
    tenant_id: Uuid,
    execution_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let mut tx = tenant_tx(pool, tenant_id).await?;
    let (status, has_final): (Option<String>, bool) = sqlx::query_as(
        "SELECT (SELECT status FROM workflow_executions WHERE id = $1),
                EXISTS (SELECT 1 FROM workflow_events WHERE execution_id = $1 AND type = 'execution.finished')",
    )
    .bind(execution_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(matches!(
        status.as_deref(),
        Some("failed" | "succeeded" | "cancelled") | None
    ) && !has_final)
}

fn open_sockets() -> &'static Mutex<HashMap<Uuid, usize>> {
    static OPEN: OnceLock<Mutex<HashMap<Uuid, usize>>> = OnceLock::new();
    OPEN.get_or_init(Mutex::default)
}

/// One of a user's WebSockets on this replica; dropping it frees the place.
#[derive(Debug)]
pub struct SocketSlot {
    user_id: Uuid,
}

impl SocketSlot {
    /// A place for one more socket of `user_id`, or the refusal.
    pub fn acquire(user_id: Uuid) -> Result<Self, TooManySockets> {
        let mut open = open_sockets()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(user_id).or_insert(0);
        if *count >= MAX_SOCKETS_PER_USER {
            return Err(TooManySockets);
        }
        *count += 1;
        Ok(Self { user_id })
    }
}

/// A user at [`MAX_SOCKETS_PER_USER`]: answered `429`, code `too_many_sockets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySockets;

impl IntoResponse for TooManySockets {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "status": "error",
            "error": {
                "code": "too_many_sockets",
                "message": format!("this user already has {MAX_SOCKETS_PER_USER} WebSockets open; close one (one socket carries up to {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions)"),
            },
        });
        (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response()
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = open_sockets()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user_id);
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct Subscribe {
    #[serde(rename = "type")]
    kind: String,
    channel: String,
    /// One execution, replayed from its start; without it, every execution of the
    /// tenant from now on.
    execution_id: Option<Uuid>,
}

/// `/ws` after the upgrade: `{"type":"subscribe","channel":"agent_status"}`, then
/// `{"type":"agent_status","execution_id":...,"event":{...}}` for each transition.
pub async fn serve_socket(
    state: AppState,
    tenant_id: Uuid,
    slot: SocketSlot,
    mut socket: WebSocket,
) {
    let (sender, mut events) = mpsc::channel::<(Uuid, ExecutionEvent)>(256);
    let mut tasks = tokio::task::JoinSet::new();
    let mut subscriptions = 0usize;
    loop {
        tokio::select! {
            message = socket.recv() => {
                let Some(Ok(message)) = message else { break };
                let WsMessage::Text(text) = message else { continue };
                let reply = match serde_json::from_str::<Subscribe>(&text) {
                    Ok(sub) if sub.kind == "subscribe" && sub.channel == "agent_status" => {
                        if subscriptions >= MAX_SUBSCRIPTIONS_PER_SOCKET {
                            serde_json::json!({
                                "type": "error",
                                "code": "subscription_limit",
                                "message": format!("this socket already has {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions, the most one socket may hold; this one was not made"),
                            })
                        } else {
                            subscriptions += 1;
                            let state = state.clone();
                            let sender = sender.clone();
                            match sub.execution_id {
                                Some(execution_id) => {
                                    tasks.spawn(follow_into(state, tenant_id, execution_id, sender));
                                }
                                None => {
                                    tasks.spawn(follow_tenant(state, tenant_id, sender));
                                }
                            }
                            serde_json::json!({ "type": "subscribed", "channel": "agent_status" })
                        }
                    }
                    _ => serde_json::json!({ "type": "error", "code": "bad_message", "message": "send {\"type\":\"subscribe\",\"channel\":\"agent_status\"}, optionally with \"execution_id\"" }),
                };
                if socket.send(WsMessage::Text(reply.to_string().into())).await.is_err() {
                    break;
                }
            }
            Some((execution_id, event)) = events.recv() => {
                let message = serde_json::json!({ "type": "agent_status", "execution_id": execution_id, "event": event });
                if socket.send(WsMessage::Text(message.to_string().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    tasks.abort_all();
    drop(slot);
}

async fn follow_into(
    state: AppState,
    tenant_id: Uuid,
    execution_id: Uuid,
    out: mpsc::Sender<(Uuid, ExecutionEvent)>,
) {
    let (sender, mut receiver) = mpsc::channel(64);
    // Ends with its receiver: when this task is aborted (the socket closed), so is it.
    let follower = tokio::spawn(follow(state, tenant_id, execution_id, sender));
    let _stop = AbortOnDrop(follower);
    while let Some(event) = receiver.recv().await {
        if out.send((execution_id, event)).await.is_err() {
            return;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every execution of the tenant that changes from now on, each from its first event.
async fn follow_tenant(
    state: AppState,
    tenant_id: Uuid,
    out: mpsc::Sender<(Uuid, ExecutionEvent)>,
) {
    let mut notices = state.workflows.notices.subscribe();
    let mut followed = HashSet::new();
    let mut followers = tokio::task::JoinSet::new();
    loop {
        match notices.recv().await {
            Ok(notice) if notice.tenant_id == tenant_id => {
                if followed.insert(notice.execution_id) {
                    followers.spawn(follow_into(
                        state.clone(),
                        tenant_id,
                        notice.execution_id,
                        out.clone(),
                    ));
                }
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
        while followers.try_join_next().is_some() {}
        if out.is_closed() {
            return;
        }
    }
}
