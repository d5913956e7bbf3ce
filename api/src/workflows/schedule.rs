//! Cron triggers. Every replica runs the scheduler; each tick of each workflow is
//! claimed by inserting one row keyed by (workflow, tick), so exactly one replica
//! starts the execution. A claim row is stronger than an advisory lock here: it also
//! remembers that the tick fired, so a replica that comes late does not fire it again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use iafactory_crds::WorkflowSpec;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::engine::{self, ExecutionRequest};
use crate::db::tenant_tx;
use crate::state::AppState;

/// The latest tick of `schedule` at or before `now`, if it is recent enough to fire:
/// ticks missed for longer than `window` (the API was down) are not replayed.
pub fn due_tick(
    schedule: &str,
    timezone: Tz,
    now: DateTime<Utc>,
    window: Duration,
) -> Option<DateTime<Utc>> {
    let cron: Cron = schedule.parse().ok()?;
    let local = now.with_timezone(&timezone);
    let tick = cron
        .find_previous_occurrence(&local, true)
        .ok()?
        .with_timezone(&Utc);
    let age = now.signed_duration_since(tick).to_std().ok()?;
    (age <= window).then_some(tick)
}

#[derive(Debug, sqlx::FromRow)]
struct Scheduled {
    tenant_id: Uuid,
    workflow_id: Uuid,
    schedule: String,
}

/// Fires every workflow whose tick at `now` is due and unclaimed. Returns the
/// executions this call started.
pub async fn fire_due(
    state: &AppState,
    now: DateTime<Utc>,
    window: Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let timezone: Tz = state
        .config
        .timezone
        .parse()
        .unwrap_or(chrono_tz::Africa::Algiers);
    let scheduled: Vec<Scheduled> =
        sqlx::query_as("SELECT tenant_id, workflow_id, schedule FROM scheduled_workflows()")
            .fetch_all(&state.db)
            .await?;
    let mut started = Vec::new();
    for workflow in scheduled {
        let Some(tick) = due_tick(&workflow.schedule, timezone, now, window) else {
            continue;
        };
        let mut tx = tenant_tx(&state.db, workflow.tenant_id).await?;
        let claimed: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO workflow_schedule_fires (tenant_id, workflow_id, fire_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING RETURNING workflow_id",
        )
        .bind(workflow.tenant_id)
        .bind(workflow.workflow_id)
        .bind(tick)
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_none() {
            continue;
        }
        let definition: serde_json::Value =
            sqlx::query_scalar("SELECT definition FROM workflows WHERE id = $1")
                .bind(workflow.workflow_id)
                .fetch_one(&mut *tx)
                .await?;
        let Ok(spec) = serde_json::from_value::<WorkflowSpec>(definition) else {
            tracing::warn!(workflow = %workflow.workflow_id, "a scheduled workflow's definition no longer parses; skipping its tick");
            tx.commit().await?;
            continue;
        };
        let request = ExecutionRequest {
            tenant_id: workflow.tenant_id,
            workflow_id: workflow.workflow_id,
            spec,
            input: format!(
                "scheduled run of {}",
                tick.with_timezone(&timezone).to_rfc3339()
            ),
            trigger: "schedule",
            key: None,
        };
        let execution_id = engine::create(&mut tx, &request).await?;
        sqlx::query("UPDATE workflow_schedule_fires SET execution_id = $3 WHERE workflow_id = $1 AND fire_at = $2")
            .bind(workflow.workflow_id)
            .bind(tick)
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
        // The claim and the execution commit together: a crash between them fires nothing.
        tx.commit().await?;
        engine::spawn(state.clone(), request, execution_id);
        started.push(execution_id);
    }
    Ok(started)
}

/// The scheduler loop of this process, until `stop`.
pub fn spawn_scheduler(
    state: AppState,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let tick = state.config.workflow_scheduler_tick_seconds;
    if tick == 0 {
        return None;
    }
    let period = Duration::from_secs(tick);
    // A tick is fired by the first scheduler pass after it, within two periods.
    let window = period * 2 + Duration::from_secs(5);
    Some(tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Err(error) = engine::expire_abandoned(&state).await {
                tracing::warn!(%error, "expiring abandoned workflow executions failed");
            }
            match fire_due(&state, Utc::now(), window).await {
                Ok(started) if !started.is_empty() => {
                    tracing::info!(count = started.len(), "scheduled workflows started")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "the workflow scheduler failed this tick"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(hour: u32, minute: u32, second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, hour, minute, second)
            .unwrap()
    }

    #[test]
    fn the_latest_tick_fires_within_the_window_only() {
        let window = Duration::from_secs(35);
        let algiers = chrono_tz::Africa::Algiers;
        // Every minute: the tick at 10:05:00 is due at 10:05:20, gone by 10:05:40.
        assert_eq!(
            due_tick("* * * * *", algiers, at(10, 5, 20), window),
            Some(at(10, 5, 0))
        );
        assert_eq!(
            due_tick("* * * * *", algiers, at(10, 5, 0), window),
            Some(at(10, 5, 0))
        );
        assert_eq!(due_tick("* * * * *", algiers, at(10, 5, 40), window), None);
        // 02:30 in Algiers (UTC+1) is 01:30 UTC.
        assert_eq!(
            due_tick("30 2 * * *", algiers, at(1, 30, 10), window),
            Some(at(1, 30, 0))
        );
        assert_eq!(due_tick("30 2 * * *", algiers, at(2, 30, 10), window), None);
        assert_eq!(
            due_tick("not a schedule", algiers, at(1, 0, 0), window),
            None
        );
    }
}
