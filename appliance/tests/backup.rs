//! Backup and restore with the real PostgreSQL + pgvector image: rows and vectors
//! written before the backup are back, and searchable, on a fresh appliance.

mod support;

use support::{TestAppliance, docker, random_suffix, stderr, stdout};

fn psql(container: &str, sql: &str) -> String {
    let output = docker(&[
        "exec",
        container,
        "psql",
        "-v",
        "ON_ERROR_STOP=1",
        "-At",
        "-h",
        "/var/run/postgresql",
        "-U",
        "iafactory",
        "-d",
        "iafactory",
        "-c",
        sql,
    ]);
    assert!(output.status.success(), "{sql}: {}", stderr(&output));
    stdout(&output).trim().to_owned()
}

#[test]
fn a_backup_restores_onto_a_fresh_box_with_its_documents_searchable() {
    let first = TestAppliance::with_real_database();
    let tenant = format!("bk{}", random_suffix());
    let manifest = first.tenant_file(&tenant, "  retention: Delete\n");
    let output = first.iafactory(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let database = format!("iaf-{tenant}-postgres");
    psql(
        &database,
        "CREATE TABLE chunks (id int PRIMARY KEY, body text, embedding vector(3)); \
         INSERT INTO chunks VALUES (1, 'قانون الجامعة', '[1,0,0]'), (2, 'règlement intérieur', '[0,1,0]'), (3, 'bylaws', '[0,0,1]');",
    );

    let backups = tempfile::tempdir().unwrap();
    let output = first.iafactory(&["backup", &tenant, "--to", backups.path().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let dump = std::fs::read_to_string(backups.path().join(&tenant).join("postgres.sql")).unwrap();
    assert!(
        dump.contains("règlement intérieur"),
        "the dump holds the rows"
    );
    // The first box goes away entirely (retention: Delete drops the volume too).
    let output = first.iafactory(&["delete", &tenant]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(first.volumes().is_empty());

    let fresh = TestAppliance::with_real_database();
    let output = fresh.iafactory(&[
        "restore",
        &tenant,
        "--from",
        backups.path().to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        fresh
            .data_dir()
            .join("manifests/tenants")
            .join(format!("{tenant}.yaml"))
            .exists()
    );
    assert_eq!(
        psql(
            &database,
            "SELECT body FROM chunks ORDER BY embedding <-> '[0.1,0.9,0]' LIMIT 1"
        ),
        "règlement intérieur"
    );
    assert_eq!(psql(&database, "SELECT count(*) FROM chunks"), "3");
    let status = fresh.iafactory(&["status", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json[0]["healthy"], true, "{json}");

    // A second restore refuses to overwrite; a corrupt backup is refused.
    let output = fresh.iafactory(&[
        "restore",
        &tenant,
        "--from",
        backups.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("already exists"),
        "{}",
        stderr(&output)
    );
    let other = TestAppliance::with_real_database();
    let dump_path = backups.path().join(&tenant).join("postgres.sql");
    std::fs::write(&dump_path, dump.replace("bylaws", "bylawz")).unwrap();
    let output = other.iafactory(&[
        "restore",
        &tenant,
        "--from",
        backups.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("postgres.sql is corrupt"),
        "{}",
        stderr(&output)
    );
    assert!(other.containers().is_empty(), "nothing was restored");
}
