//! The engine against the real Docker Engine: `up` brings tenants to healthy, a second
//! `up` changes nothing, drift and loss are repaired, data survives replacement and
//! `down`.

mod support;

use iafactory_appliance::app::App;
use support::{TestAppliance, docker, docker_ok, random_suffix, stderr, stdout};

fn quiet(_: &str) {}

async fn up(app: &App) -> Vec<String> {
    let (report, result) = app.up(&quiet).await;
    result.unwrap_or_else(|e| panic!("up failed: {e}\nchanged: {:?}", report.actions));
    report.actions
}

async fn assert_healthy(app: &App, tenant: &str) {
    let statuses = app.status().await.unwrap();
    let status = statuses.iter().find(|s| s.tenant == tenant).unwrap();
    assert!(status.healthy, "{status:#?}");
}

fn exec(container: &str, command: &str) -> std::process::Output {
    docker(&["exec", container, "/bin/busybox", "sh", "-c", command])
}

#[tokio::test]
async fn up_reaches_healthy_and_a_second_up_makes_no_mutating_call() {
    let box_ = TestAppliance::new();
    let tenant = format!("c{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[box_.tenant_file(&tenant, "")]).unwrap();

    let actions = up(&app).await;
    assert!(
        actions.iter().any(|a| a.contains("created network iaf-")),
        "{actions:?}"
    );
    assert_healthy(&app, &tenant).await;
    let names = box_.containers();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&format!("iaf-{tenant}-postgres")));
    // Labels, limits, restart policy, internal network, as the issue asks.
    let inspected = docker_ok(&[
        "inspect",
        &format!("iaf-{tenant}-postgres"),
        "--format",
        "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.ReadonlyRootfs}} {{index .Config.Labels \"iafactory.dz/managed-by\"}} {{index .Config.Labels \"iafactory.dz/component\"}}",
    ]);
    let fields: Vec<&str> = inspected.split(' ').collect();
    assert_eq!(fields[0], "unless-stopped");
    assert!(fields[1].parse::<i64>().unwrap() > 0 && fields[2].parse::<i64>().unwrap() > 0);
    assert_eq!(&fields[3..], ["true", "iafactory-appliance", "postgres"]);
    assert_eq!(
        docker_ok(&[
            "network",
            "inspect",
            &format!("iaf-{tenant}"),
            "--format",
            "{{.Internal}}"
        ]),
        "true"
    );

    let before = app.engine.mutations();
    let ids = box_.container_ids();
    let again = up(&app).await;
    assert_eq!(
        app.engine.mutations(),
        before,
        "a converged box: zero mutating calls"
    );
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(box_.container_ids(), ids);

    // The CLI says the same.
    let output = box_.iafactory(&["up"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("up: 0 change(s)"),
        "{}",
        stdout(&output)
    );
    let status = box_.iafactory(&["status", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json[0]["tenant"], tenant.as_str());
    assert_eq!(json[0]["healthy"], true);
}

#[tokio::test]
async fn a_removed_or_stopped_container_is_restored() {
    let box_ = TestAppliance::new();
    let tenant = format!("r{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[box_.tenant_file(&tenant, "")]).unwrap();
    up(&app).await;
    let api = box_
        .containers()
        .into_iter()
        .find(|n| n.contains("-api-"))
        .unwrap();
    docker_ok(&["rm", "-f", &api]);
    docker_ok(&["stop", "-t", "1", &format!("iaf-{tenant}-postgres")]);

    let actions = up(&app).await;
    assert!(
        actions.iter().any(|a| a.contains("started iaf-")),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| a.contains(&format!("created {api}"))),
        "{actions:?}"
    );
    assert_healthy(&app, &tenant).await;
}

#[tokio::test]
async fn a_changed_spec_replaces_containers_and_the_data_survives() {
    let box_ = TestAppliance::new();
    let tenant = format!("s{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[box_.tenant_file(&tenant, "")]).unwrap();
    up(&app).await;
    let database = format!("iaf-{tenant}-postgres");
    let written = exec(
        &database,
        "echo before-upgrade > /var/lib/postgresql/data/pgdata/mark",
    );
    assert!(written.status.success(), "{}", stderr(&written));
    let old_ids = box_.container_ids();
    let old_api: Vec<String> = box_
        .containers()
        .into_iter()
        .filter(|n| n.contains("-api-"))
        .collect();

    // A new setting for both components: each spec hash changes.
    box_.write_config("postgres.IAF_REVISION = \"2\"\napi.IAF_REVISION = \"2\"");
    let app = box_.app().await;
    let actions = up(&app).await;
    assert!(
        actions
            .iter()
            .any(|a| a.contains(&format!("replaced {database}"))),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a.contains("(replaced)")),
        "{actions:?}"
    );
    assert_healthy(&app, &tenant).await;
    let new_ids = box_.container_ids();
    assert!(
        new_ids.iter().all(|id| !old_ids.contains(id)),
        "every container is new"
    );
    let names = box_.containers();
    assert_eq!(names.len(), 2, "the old API container is gone: {names:?}");
    assert!(!names.contains(&old_api[0]));
    let read = exec(&database, "cat /var/lib/postgresql/data/pgdata/mark");
    assert_eq!(stdout(&read).trim(), "before-upgrade");
    let env = docker_ok(&["inspect", &database, "--format", "{{json .Config.Env}}"]);
    assert!(env.contains("IAF_REVISION=2"), "{env}");
}

#[tokio::test]
async fn down_keeps_the_data_and_up_brings_it_back() {
    let box_ = TestAppliance::new();
    let tenant = format!("d{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[box_.tenant_file(&tenant, "")]).unwrap();
    up(&app).await;
    let database = format!("iaf-{tenant}-postgres");
    assert!(
        exec(
            &database,
            "echo kept > /var/lib/postgresql/data/pgdata/mark"
        )
        .status
        .success()
    );

    let output = box_.iafactory(&["down"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(box_.containers().is_empty());
    assert_eq!(box_.volumes(), vec![format!("iaf-{tenant}-postgres-data")]);
    assert!(
        !docker(&["network", "inspect", &format!("iaf-{tenant}")])
            .status
            .success()
    );

    let output = box_.iafactory(&["up"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&exec(&database, "cat /var/lib/postgresql/data/pgdata/mark")).trim(),
        "kept"
    );
    assert_healthy(&app, &tenant).await;
}

#[tokio::test]
async fn delete_honours_retention() {
    let box_ = TestAppliance::new();
    let kept = format!("k{}", random_suffix());
    let gone = format!("g{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[
        box_.tenant_file(&kept, ""),
        box_.tenant_file(&gone, "  retention: Delete\n"),
    ])
    .unwrap();
    up(&app).await;
    assert_eq!(box_.volumes().len(), 2);

    let output = box_.iafactory(&["delete", &kept]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("were kept"), "{}", stdout(&output));
    let output = box_.iafactory(&["delete", &gone]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("were deleted"),
        "{}",
        stdout(&output)
    );
    assert!(box_.containers().is_empty());
    assert_eq!(box_.volumes(), vec![format!("iaf-{kept}-postgres-data")]);
}

#[tokio::test]
async fn an_up_killed_midway_is_finished_by_the_next() {
    let box_ = TestAppliance::new();
    let tenant = format!("k{}", random_suffix());
    let file = box_.tenant_file(&tenant, "");
    let output = box_.iafactory(&["apply", "--no-up", "-f", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_iafactory"))
        .args(["--config", box_.config_file.to_str().unwrap(), "up"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed as soon as it has created something, before the tenant is complete.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while box_.containers().is_empty() {
        assert!(std::time::Instant::now() < deadline, "up created nothing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        box_.containers().len() < 2,
        "killed midway: {:?}",
        box_.containers()
    );

    let app = box_.app().await;
    let actions = up(&app).await;
    assert!(!actions.is_empty());
    assert_healthy(&app, &tenant).await;
    assert_eq!(box_.containers().len(), 2);
    let before = app.engine.mutations();
    assert!(up(&app).await.is_empty());
    assert_eq!(app.engine.mutations(), before);
}

/// What backup and restore rely on: a dump passes through exec in chunks, both ways,
/// byte for byte, and a failing command's exit code and the end of its stderr come back.
#[tokio::test]
async fn exec_streams_stdin_and_stdout_through_a_container_byte_for_byte() {
    use iafactory_appliance::engine::Target;
    use iafactory_appliance::engine::docker::STDERR_KEPT;
    use rand::RngCore;

    let box_ = TestAppliance::new();
    let tenant = format!("x{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[box_.tenant_file(&tenant, "")]).unwrap();
    up(&app).await;
    let container = format!("iaf-{tenant}-postgres");
    let target = Target::component(&tenant, "postgres");
    let command = |script: &str| -> Vec<String> {
        ["/bin/busybox", "sh", "-c", script]
            .map(str::to_owned)
            .to_vec()
    };

    // Larger than any single chunk Docker's stream carries.
    let mut input = vec![0u8; 24 << 20];
    rand::rng().fill_bytes(&mut input);
    let mut output = Vec::new();
    let finished = app
        .engine
        .exec_streaming(
            &target,
            &container,
            &command("/bin/busybox cat"),
            Some(input.as_slice()),
            &mut output,
        )
        .await
        .unwrap();
    assert_eq!(
        finished.code,
        0,
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    assert_eq!(output.len(), input.len());
    assert!(output == input, "cat's output differs from its input");

    // 200 000 bytes of stderr ending in a marker: the end is kept, bounded.
    let mut output = Vec::new();
    let finished = app
        .engine
        .exec_streaming(
            &target,
            &container,
            &command(
                "/bin/busybox yes 'noise' | /bin/busybox head -c 200000 >&2; echo 'the real error' >&2; echo out; exit 3",
            ),
            None::<&[u8]>,
            &mut output,
        )
        .await
        .unwrap();
    assert_eq!(finished.code, 3);
    assert_eq!(output, b"out\n");
    assert_eq!(finished.stderr.len(), STDERR_KEPT);
    assert!(
        String::from_utf8_lossy(&finished.stderr).ends_with("the real error\n"),
        "the end of stderr was lost"
    );

    // A command that fails part-way through its input: its exit code and stderr, not
    // the broken pipe, come back; one that succeeds without reading it all is an error.
    let finished = app
        .engine
        .exec_streaming(
            &target,
            &container,
            &command("/bin/busybox head -c 1000 >/dev/null; echo 'syntax error' >&2; exit 4"),
            Some(input.as_slice()),
            &mut tokio::io::sink(),
        )
        .await
        .unwrap();
    assert_eq!(finished.code, 4);
    assert_eq!(finished.stderr, b"syntax error\n");
    let error = app
        .engine
        .exec_streaming(
            &target,
            &container,
            &command("/bin/busybox head -c 1000 >/dev/null"),
            Some(input.as_slice()),
            &mut tokio::io::sink(),
        )
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("before reading all of its input"),
        "{error}"
    );
}
