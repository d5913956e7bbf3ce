//! Scheduled backups on the appliance: a Tenant with a one-minute schedule gets a real
//! backup (pg_dump in the real PostgreSQL + pgvector image) at each tick, into
//! `<data_dir>/backups/<tenant>/<timestamp>`, and retention removes the oldest. The
//! scheduler's clock is injected ([`BackupScheduler::tick`] takes `now`), so three
//! minutes of schedule take seconds; the backups themselves are real.

mod support;

use chrono::{DateTime, Duration, Utc};
use iafactory_appliance::backup_schedule::{BackupMetrics, BackupScheduler, Outcome};
use prometheus_client::registry::Registry;
use support::{TestAppliance, psql, random_suffix, stderr, stdout};

fn backups_of(appliance: &TestAppliance, tenant: &str) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(appliance.data_dir().join("backups").join(tenant))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
    names.sort();
    names
}

fn backed(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Backed { dir, .. } => dir.file_name().unwrap().to_string_lossy().into_owned(),
            Outcome::Failed { tenant, error } => panic!("the backup of {tenant} failed: {error}"),
        })
        .collect()
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn a_one_minute_schedule_backs_up_at_each_tick_and_retention_removes_the_oldest() {
    let appliance = TestAppliance::with_real_database();
    let tenant = format!("sched{}", random_suffix());
    let manifest = appliance.tenant_file(
        &tenant,
        "  retention: Delete\n  backup: {schedule: \"* * * * *\", retention: 2}\n",
    );
    let output = appliance.iafactory(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let database = format!("iaf-{tenant}-postgres");
    psql(
        &database,
        "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'first');",
    );

    let app = appliance.app().await;
    let mut registry = Registry::default();
    let mut scheduler = BackupScheduler::new(BackupMetrics::register(&mut registry));
    // First seen at 10:00:30: nothing until the 10:01 tick.
    let start = at("2026-03-10T10:00:30Z");
    assert!(backed(&scheduler.tick(&app, start).await).is_empty());
    assert!(backed(&scheduler.tick(&app, start + Duration::seconds(20)).await).is_empty());

    let first = backed(&scheduler.tick(&app, at("2026-03-10T10:01:00Z")).await);
    assert_eq!(first, ["20260310T100100Z"]);
    // The same minute again: already done.
    assert!(backed(&scheduler.tick(&app, at("2026-03-10T10:01:20Z")).await).is_empty());
    psql(&database, "INSERT INTO notes VALUES (2, 'second')");
    let second = backed(&scheduler.tick(&app, at("2026-03-10T10:02:00Z")).await);
    assert_eq!(second, ["20260310T100200Z"]);
    assert_eq!(
        backups_of(&appliance, &tenant),
        ["20260310T100100Z", "20260310T100200Z"],
        "a one-minute schedule made two backups"
    );

    // The third, with retention 2, removes the oldest.
    let outcomes = scheduler.tick(&app, at("2026-03-10T10:03:05Z")).await;
    match outcomes.as_slice() {
        [Outcome::Backed { pruned, .. }] => {
            assert_eq!(pruned.len(), 1);
            assert!(pruned[0].ends_with("20260310T100100Z"), "{pruned:?}");
        }
        other => panic!("one backup was expected: {other:?}"),
    }
    assert_eq!(
        backups_of(&appliance, &tenant),
        ["20260310T100200Z", "20260310T100305Z"]
    );
    let newest = appliance
        .data_dir()
        .join("backups")
        .join(&tenant)
        .join("20260310T100305Z");
    for file in [
        "backup.json",
        "postgres.sql.gz",
        "tenant.yaml",
        "secrets.json",
    ] {
        assert!(newest.join(file).is_file(), "{file} is in the backup");
    }

    // `iafactory status` shows the last backup.
    let status = appliance.iafactory(&["status", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let entry = json
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == tenant.as_str())
        .unwrap();
    assert_eq!(entry["last_backup"], "2026-03-10T10:03:05Z", "{json}");
    let table = stdout(&appliance.iafactory(&["status"]));
    assert!(table.contains("LAST BACKUP"), "{table}");
    assert!(table.contains("2026-03-10T10:03:05Z"), "{table}");

    // The newest restores on a fresh box, with the row written before it.
    let output = appliance.iafactory(&["delete", &tenant]);
    assert!(output.status.success(), "{}", stderr(&output));
    let fresh = TestAppliance::with_real_database();
    let output = fresh.restore(&tenant, newest.to_str().unwrap());
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(psql(&database, "SELECT count(*) FROM notes"), "2");

    // A failed backup (the database is stopped) is counted and waits for the next tick.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(&format!(
            "iafactory_appliance_backup_last_success_timestamp_seconds{{tenant=\"{tenant}\"}} {}",
            at("2026-03-10T10:03:05Z").timestamp()
        )),
        "{text}"
    );
    let fresh_app = fresh.app().await;
    let mut failures = Registry::default();
    let mut scheduler = BackupScheduler::new(BackupMetrics::register(&mut failures));
    assert!(
        scheduler
            .tick(&fresh_app, at("2026-03-10T10:09:30Z"))
            .await
            .is_empty()
    );
    support::docker_ok(&["stop", &database]);
    let outcomes = scheduler.tick(&fresh_app, at("2026-03-10T10:10:00Z")).await;
    assert!(
        matches!(outcomes.as_slice(), [Outcome::Failed { .. }]),
        "{outcomes:?}"
    );
    // Retried at the next tick of the schedule, not at every tick of the daemon.
    assert!(
        scheduler
            .tick(&fresh_app, at("2026-03-10T10:10:20Z"))
            .await
            .is_empty()
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &failures).unwrap();
    assert!(
        text.contains(&format!(
            "iafactory_appliance_backup_failures_total{{tenant=\"{tenant}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        !fresh
            .data_dir()
            .join("backups")
            .join(&tenant)
            .join("20260310T101000Z")
            .exists(),
        "a failed backup leaves no backup behind"
    );
    let output = fresh.iafactory(&["delete", &tenant]);
    assert!(output.status.success(), "{}", stderr(&output));
}
