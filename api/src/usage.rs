//! API usage: every authenticated request is counted against its key and logged in
//! `api_usage_logs`, off the request path. A bounded channel feeds a writer that
//! batches per tenant; a full channel drops events (and counts the drops) rather
//! than slowing requests down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::state::AppState;

#[derive(Debug, Clone)]
pub struct UsageEvent {
    pub tenant_id: Uuid,
    pub key_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub endpoint: String,
    pub method: String,
    pub status: u16,
    pub response_time_ms: i32,
}

enum Command {
    Record(UsageEvent),
    Flush(oneshot::Sender<()>),
}

/// Whose request it was: tenant, key (if any) and user.
#[derive(Clone, Copy, Debug)]
struct Caller {
    tenant_id: Uuid,
    key_id: Option<Uuid>,
    user_id: Uuid,
}

/// Who a request was for, filled in by the [`Auth`] extractor.
#[derive(Clone, Default)]
struct Attribution(Arc<Mutex<Option<Caller>>>);

#[derive(Clone)]
pub struct UsageRecorder {
    sender: mpsc::Sender<Command>,
    metrics: Metrics,
}

const CHANNEL_CAPACITY: usize = 10_000;
const BATCH: usize = 500;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

impl UsageRecorder {
    pub fn start(pool: PgPool, metrics: Metrics) -> Self {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(writer(pool, receiver));
        Self { sender, metrics }
    }

    /// Marks the request as made by `auth`, for the middleware to record.
    pub fn attribute(&self, parts: &Parts, auth: &Auth) {
        if let Some(attribution) = parts.extensions.get::<Attribution>() {
            let mut slot = attribution.0.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(Caller {
                tenant_id: auth.tenant_id,
                key_id: auth.key.as_ref().map(|k| k.id),
                user_id: auth.user_id,
            });
        }
    }

    fn record(&self, event: UsageEvent) {
        if self.sender.try_send(Command::Record(event)).is_err() {
            self.metrics.usage_events_dropped.inc();
        }
    }

    /// Writes everything recorded so far (tests, and graceful shutdown).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Command::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Middleware: times the request and records it when it was authenticated.
pub async fn record_usage(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let attribution = Attribution::default();
    request.extensions_mut().insert(attribution.clone());
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let who = *attribution.0.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(caller) = who {
        state.usage.record(UsageEvent {
            tenant_id: caller.tenant_id,
            key_id: caller.key_id,
            user_id: Some(caller.user_id),
            endpoint,
            method,
            status: response.status().as_u16(),
            response_time_ms: i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX),
        });
    }
    response
}

async fn writer(pool: PgPool, mut receiver: mpsc::Receiver<Command>) {
    let mut pending: Vec<UsageEvent> = Vec::new();
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            command = receiver.recv() => match command {
                Some(Command::Record(event)) => {
                    pending.push(event);
                    if pending.len() >= BATCH {
                        write(&pool, std::mem::take(&mut pending)).await;
                    }
                }
                Some(Command::Flush(done)) => {
                    write(&pool, std::mem::take(&mut pending)).await;
                    let _ = done.send(());
                }
                None => {
                    write(&pool, std::mem::take(&mut pending)).await;
                    return;
                }
            },
            _ = ticker.tick() => {
                if !pending.is_empty() {
                    write(&pool, std::mem::take(&mut pending)).await;
                }
            }
        }
    }
}

/// One transaction per tenant, under that tenant's RLS context like any request.
async fn write(pool: &PgPool, events: Vec<UsageEvent>) {
    let mut by_tenant: BTreeMap<Uuid, Vec<UsageEvent>> = BTreeMap::new();
    for event in events {
        by_tenant.entry(event.tenant_id).or_default().push(event);
    }
    for (tenant_id, events) in by_tenant {
        if let Err(error) = write_tenant(pool, tenant_id, &events).await {
            tracing::warn!(%error, %tenant_id, events = events.len(), "could not write API usage logs");
        }
    }
}

async fn write_tenant(
    pool: &PgPool,
    tenant_id: Uuid,
    events: &[UsageEvent],
) -> Result<(), sqlx::Error> {
    let mut tx = crate::db::tenant_tx(pool, tenant_id).await?;
    sqlx::query(
        "INSERT INTO api_usage_logs (tenant_id, key_id, user_id, endpoint, method, status, response_time_ms)
         SELECT $1, * FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::smallint[], $7::int[])",
    )
    .bind(tenant_id)
    .bind(events.iter().map(|e| e.key_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.user_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.endpoint.clone()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.method.clone()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.status as i16).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.response_time_ms).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    let mut per_key: BTreeMap<Uuid, i64> = BTreeMap::new();
    for key in events.iter().filter_map(|e| e.key_id) {
        *per_key.entry(key).or_default() += 1;
    }
    if !per_key.is_empty() {
        sqlx::query(
            "UPDATE api_keys SET usage_count = usage_count + u.n, last_used_at = now()
             FROM UNNEST($1::uuid[], $2::bigint[]) AS u(id, n) WHERE api_keys.id = u.id",
        )
        .bind(per_key.keys().copied().collect::<Vec<_>>())
        .bind(per_key.values().copied().collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
