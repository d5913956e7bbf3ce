//! The backup CronJob's container, run for real: the command, environment and
//! security settings the build gives it, in the tenant's own database image
//! (images/postgres, built locally), on the real Docker Engine, against a real
//! PostgreSQL with pgvector reached as `postgres` on a network of the test's own. Its
//! dumps are restored with pg_restore and checked, and retention keeps the newest.
//!
//! Kubernetes' part is emulated as it would run: read-only root filesystem, all
//! capabilities dropped, no privilege escalation, the image's non-root user, an
//! emptyDir at /tmp, and the backup volume made writable by the pod's fsGroup (here,
//! chowned to it once, as the kubelet does).

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use iafactory_crds::PlatformConfig;
use serde_json::Value;

use common::{build_objects, sample_tenant};

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs (scripts/engines.sh up docker)")
}

fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes what the test created, by name, even when it fails.
struct Cleanup {
    containers: Vec<String>,
    volume: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = docker(&["rm", "-f", "-v", container]);
        }
        let _ = docker(&["volume", "rm", "-f", &self.volume]);
        let _ = docker(&["network", "rm", &self.network]);
    }
}

/// The CronJob's pod template, built from the sample with `retention: 2`.
fn backup_pod() -> (String, Value) {
    let mut tenant = sample_tenant("tenant-univ-tlemcen.yaml");
    tenant
        .spec
        .backup
        .as_mut()
        .expect("the sample has a backup")
        .retention = 2;
    let (plan, objects) = build_objects(&tenant, &PlatformConfig::default(), false);
    let cron_job = objects
        .all()
        .find(|c| c.resource.kind == "CronJob" && c.name() == "backup")
        .expect("a CronJob backup is built");
    let pod = cron_job
        .object
        .data
        .pointer("/spec/jobTemplate/spec/template/spec")
        .unwrap()
        .clone();
    (plan.namespace, pod)
}

#[test]
fn the_backup_command_dumps_a_real_database_that_restores_and_keeps_the_newest() {
    let (_, pod) = backup_pod();
    let container = &pod["containers"][0];
    let image = container["image"].as_str().unwrap().to_owned();
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let uid = pod["securityContext"]["runAsUser"]
        .as_i64()
        .unwrap()
        .to_string();
    let command: Vec<String> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(container.get("args").is_none());

    let suffix = format!("{:x}", std::process::id());
    let network = format!("iaf-bkjob-{suffix}");
    let database = format!("iaf-bkjob-{suffix}-postgres");
    let volume = format!("iaf-bkjob-{suffix}-backups");
    let password = "s3cret-for-the-test";
    let _cleanup = Cleanup {
        containers: vec![database.clone()],
        volume: volume.clone(),
        network: network.clone(),
    };
    docker_ok(&["network", "create", &network]);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &database,
        "--network",
        &network,
        "--network-alias",
        "postgres",
        "-e",
        "POSTGRES_USER=iafactory",
        "-e",
        &format!("POSTGRES_PASSWORD={password}"),
        "-e",
        "POSTGRES_DB=iafactory",
        &image,
    ]);
    let psql = |sql: &str| {
        docker_ok(&[
            "exec",
            &database,
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-qtA",
            "-h",
            "/var/run/postgresql",
            "-U",
            "iafactory",
            "-d",
            "iafactory",
            "-c",
            sql,
        ])
    };
    let started = std::time::Instant::now();
    while !docker(&[
        "exec",
        &database,
        "pg_isready",
        "-h",
        "127.0.0.1",
        "-U",
        "iafactory",
        "-d",
        "iafactory",
    ])
    .status
    .success()
    {
        assert!(
            started.elapsed().as_secs() < 60,
            "PostgreSQL did not start: {}",
            docker_ok(&["logs", &database])
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    psql(
        "CREATE EXTENSION IF NOT EXISTS vector; CREATE TABLE chunks (id int PRIMARY KEY, body text, embedding vector(3)); \
         INSERT INTO chunks VALUES (1, 'قانون الجامعة', '[1,0,0]'), (2, 'règlement intérieur', '[0,1,0]');",
    );

    // The volume, writable by the pod's fsGroup as the kubelet makes it.
    docker_ok(&["volume", "create", &volume]);
    docker_ok(&[
        "run",
        "--rm",
        "--user",
        "0",
        "--entrypoint",
        "/bin/busybox",
        "-v",
        &format!("{volume}:/backups"),
        &image,
        "chown",
        &format!("{uid}:{uid}"),
        "/backups",
    ]);

    // The container as the CronJob runs it; each secret reference is the password.
    let run_backup = || {
        let mut args: Vec<String> = [
            "run",
            "--rm",
            "--network",
            &network,
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--user",
            &format!("{uid}:{uid}"),
            "--tmpfs",
            "/tmp",
            "-v",
            &format!("{volume}:/backups"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut env = BTreeMap::new();
        for var in container["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            let value = match var.get("value") {
                Some(value) => value.as_str().unwrap().to_owned(),
                None => {
                    assert_eq!(
                        var["valueFrom"]["secretKeyRef"]["name"], "postgres-credentials",
                        "{var}"
                    );
                    password.to_owned()
                }
            };
            env.insert(name.to_owned(), value);
        }
        assert_eq!(env["PGHOST"], "postgres");
        assert_eq!(env["RETENTION"], "2");
        for (name, value) in &env {
            args.push("-e".into());
            args.push(format!("{name}={value}"));
        }
        args.push("--entrypoint".into());
        args.push(command[0].clone());
        args.push(image.clone());
        args.extend(command[1..].iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = docker(&refs);
        assert!(
            output.status.success(),
            "the backup failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let list = || -> Vec<String> {
        docker_ok(&[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/busybox",
            "-v",
            &format!("{volume}:/backups"),
            &image,
            "ls",
            "-1a",
            "/backups",
        ])
        .lines()
        .filter(|l| !l.starts_with('.'))
        .map(str::to_owned)
        .collect()
    };

    let first = run_backup();
    assert!(first.contains("wrote the backup /backups/"), "{first}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run_backup();
    assert_eq!(list().len(), 2);
    let oldest = list()[0].clone();
    // A row written after the second backup is only in the third.
    psql("INSERT INTO chunks VALUES (3, 'bylaws', '[0,0,1]')");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let third = run_backup();
    assert!(
        third.contains(&format!("removed the old backup {oldest}")),
        "{third}"
    );
    let kept = list();
    assert_eq!(kept.len(), 2, "retention 2 keeps two: {kept:?}");
    assert!(!kept.contains(&oldest), "the oldest went: {kept:?}");
    let newest = kept.last().unwrap();

    // The newest dump restores into an empty database, rows and vectors included.
    psql("CREATE DATABASE restored");
    docker_ok(&[
        "run",
        "--rm",
        "--network",
        &network,
        "-e",
        &format!("PGPASSWORD={password}"),
        "--entrypoint",
        "pg_restore",
        "-v",
        &format!("{volume}:/backups"),
        &image,
        "--no-owner",
        "-h",
        "postgres",
        "-U",
        "iafactory",
        "-d",
        "restored",
        &format!("/backups/{newest}/postgres.dump"),
    ]);
    let restored = docker_ok(&[
        "exec",
        &database,
        "psql",
        "-qtA",
        "-h",
        "/var/run/postgresql",
        "-U",
        "iafactory",
        "-d",
        "restored",
        "-c",
        "SELECT count(*) || ' ' || (SELECT body FROM chunks ORDER BY embedding <-> '[0.1,0.9,0]' LIMIT 1) FROM chunks",
    ]);
    assert_eq!(restored, "3 règlement intérieur");
}
