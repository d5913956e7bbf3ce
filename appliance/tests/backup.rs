//! Backup and restore with the real PostgreSQL + pgvector image: rows and vectors
//! written before the backup are back, and searchable, on a fresh appliance. For a
//! Qdrant tenant, the points written through qdrant-client (into the Qdrant test server,
//! packaged as the tenant's qdrant image) come back with the same vectors and payloads.

mod support;

use std::collections::HashMap;

use sha2::Digest;

use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    CountPointsBuilder, CreateCollectionBuilder, Distance, PointStruct, QueryPointsBuilder,
    SearchParamsBuilder, UpsertPointsBuilder, Value, VectorParamsBuilder, point_id,
};
use support::{TestAppliance, docker_ok, psql, qdrant_config, random_suffix, stderr, stdout};

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
    let backup = backups.path().join(&tenant);
    // gzip, as `zcat postgres.sql.gz | psql` reads it.
    let mut dump = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(
            std::fs::File::open(backup.join("postgres.sql.gz")).unwrap(),
        ),
        &mut dump,
    )
    .unwrap();
    assert!(
        dump.starts_with("--\n-- PostgreSQL database dump") && dump.contains("règlement intérieur"),
        "the dump holds the rows"
    );
    // The first box goes away entirely (retention: Delete drops the volume too).
    let output = first.iafactory(&["delete", &tenant]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(first.volumes().is_empty());

    let fresh = TestAppliance::with_real_database();
    let output = fresh.restore(&tenant, backups.path().to_str().unwrap());
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
    let output = fresh.restore(&tenant, backups.path().to_str().unwrap());
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("already exists"),
        "{}",
        stderr(&output)
    );
    let other = TestAppliance::with_real_database();
    let compressed = std::fs::read(backup.join("postgres.sql.gz")).unwrap();
    let mut flipped = compressed.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    std::fs::write(backup.join("postgres.sql.gz"), &flipped).unwrap();
    let output = other.restore(&tenant, backups.path().to_str().unwrap());
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("postgres.sql.gz is corrupt"),
        "{}",
        stderr(&output)
    );
    assert!(other.containers().is_empty(), "nothing was restored");

    // A backup made before dumps were compressed (an uncompressed postgres.sql in the
    // index) still restores, and is still checked.
    let output = fresh.iafactory(&["delete", &tenant]);
    assert!(output.status.success(), "{}", stderr(&output));
    std::fs::remove_file(backup.join("postgres.sql.gz")).unwrap();
    let index_path = backup.join("backup.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let files = index["files"].as_object_mut().unwrap();
    files.remove("postgres.sql.gz");
    files.insert(
        "postgres.sql".into(),
        hex::encode(sha2::Sha256::digest(dump.as_bytes())).into(),
    );
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    std::fs::write(
        backup.join("postgres.sql"),
        dump.replace("bylaws", "bylawz"),
    )
    .unwrap();
    let output = other.restore(&tenant, backups.path().to_str().unwrap());
    assert!(
        stderr(&output).contains("postgres.sql is corrupt"),
        "{}",
        stderr(&output)
    );
    std::fs::write(backup.join("postgres.sql"), &dump).unwrap();
    let output = other.restore(&tenant, backups.path().to_str().unwrap());
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(psql(&database, "SELECT count(*) FROM chunks"), "3");
}

/// A client for the tenant's Qdrant, from the host (which reaches the tenant's internal
/// network), with the API key the appliance generated for it.
fn qdrant_client(tenant: &str) -> Qdrant {
    let container = format!("iaf-{tenant}-qdrant");
    let ip = docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &container,
    ]);
    let env: Vec<String> = serde_json::from_str(&docker_ok(&[
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        &container,
    ]))
    .unwrap();
    let key = env
        .iter()
        .find_map(|e| e.strip_prefix("QDRANT__SERVICE__API_KEY="))
        .expect("the appliance gives Qdrant an API key")
        .to_owned();
    Qdrant::from_url(&format!("http://{ip}:6334"))
        .api_key(key)
        .skip_compatibility_check()
        .build()
        .unwrap()
}

const COLLECTION: &str = "chunks";

/// (id, vector, payload): one chunk per language.
fn points() -> Vec<(u64, Vec<f32>, HashMap<&'static str, Value>)> {
    vec![
        (
            1,
            vec![1.0, 0.25, 0.0],
            HashMap::from([("text", "قانون الجامعة".into()), ("lang", "ar".into())]),
        ),
        (
            2,
            vec![0.0, 1.0, 0.5],
            HashMap::from([
                ("text", "règlement intérieur".into()),
                ("lang", "fr".into()),
            ]),
        ),
        (
            3,
            vec![0.125, 0.0, 1.0],
            HashMap::from([
                ("text", "bylaws".into()),
                ("lang", "en".into()),
                ("page", 7.into()),
            ]),
        ),
    ]
}

/// Every point is found by its own vector at Euclidean distance 0 (so the vector is
/// the same), with its payload.
async fn assert_points(client: &Qdrant) {
    let count = client
        .count(CountPointsBuilder::new(COLLECTION).exact(true))
        .await
        .unwrap();
    assert_eq!(count.result.unwrap().count, points().len() as u64);
    for (id, vector, payload) in points() {
        let hits = client
            .query(
                QueryPointsBuilder::new(COLLECTION)
                    .query(vector)
                    .params(SearchParamsBuilder::default().exact(true))
                    .with_payload(true)
                    .limit(1),
            )
            .await
            .unwrap()
            .result;
        assert_eq!(hits.len(), 1);
        let hit = &hits[0];
        assert_eq!(
            hit.id.clone().and_then(|id| id.point_id_options),
            Some(point_id::PointIdOptions::Num(id))
        );
        assert!(hit.score.abs() < 1e-6, "point {id}: distance {}", hit.score);
        let expected: HashMap<String, Value> = payload
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(hit.payload, expected, "point {id}");
    }
}

#[tokio::test]
async fn a_qdrant_tenant_restores_onto_a_fresh_box_with_its_points_and_payloads() {
    let with_qdrant = || {
        let appliance = TestAppliance::with_real_database();
        let config = std::fs::read_to_string(&appliance.config_file).unwrap() + &qdrant_config();
        std::fs::write(&appliance.config_file, config).unwrap();
        appliance
    };
    let first = with_qdrant();
    let tenant = format!("bq{}", random_suffix());
    let manifest = first.tenant_file(
        &tenant,
        "    vectorStore: {kind: qdrant}\n  retention: Delete\n",
    );
    let output = first.iafactory(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );

    let client = qdrant_client(&tenant);
    client
        .create_collection(
            CreateCollectionBuilder::new(COLLECTION)
                .vectors_config(VectorParamsBuilder::new(3, Distance::Euclid)),
        )
        .await
        .unwrap();
    let structs: Vec<PointStruct> = points()
        .into_iter()
        .map(|(id, vector, payload)| PointStruct::new(id, vector, payload))
        .collect();
    client
        .upsert_points(UpsertPointsBuilder::new(COLLECTION, structs).wait(true))
        .await
        .unwrap();
    assert_points(&client).await;

    let backups = tempfile::tempdir().unwrap();
    let output = first.iafactory(&["backup", &tenant, "--to", backups.path().to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let printed = stdout(&output) + &stderr(&output);
    assert!(
        printed.contains("the vector store was down for"),
        "{printed}"
    );
    // The backup's own account of Qdrant's downtime (`-- --nocapture` shows it).
    println!("{printed}");
    let dir = backups.path().join(&tenant);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("backup.json")).unwrap()).unwrap();
    let archive = dir.join("qdrant-storage.tar");
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(
        index["files"]["qdrant-storage.tar"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Qdrant is back after the copy, with everything.
    assert_points(&qdrant_client(&tenant)).await;

    let output = first.iafactory(&["delete", &tenant]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(first.volumes().is_empty());

    let fresh = with_qdrant();
    let output = fresh.restore(&tenant, backups.path().to_str().unwrap());
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert_points(&qdrant_client(&tenant)).await;
    let status = fresh.iafactory(&["status", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json[0]["healthy"], true, "{json}");

    // Deleted under retention: Retain, its volumes stay: a restore does not write over
    // them, and says so.
    let retained = fresh.tenant_file(
        &tenant,
        "    vectorStore: {kind: qdrant}\n  retention: Retain\n",
    );
    let output = fresh.iafactory(&["apply", "--no-up", "-f", retained.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = fresh.iafactory(&["delete", &tenant]);
    assert!(output.status.success(), "{}", stderr(&output));
    let kept = fresh.volumes();
    assert!(!kept.is_empty());
    let output = fresh.restore(&tenant, backups.path().to_str().unwrap());
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("already exists on this box")
            && stderr(&output).contains("docker volume rm"),
        "{}",
        stderr(&output)
    );
    assert!(fresh.containers().is_empty(), "nothing was restored");
    assert_eq!(fresh.volumes(), kept);

    // A vector-store archive that does not match its checksum is refused before
    // anything is created.
    let other = with_qdrant();
    let mut corrupt = bytes.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    std::fs::write(&archive, corrupt).unwrap();
    let output = other.restore(&tenant, backups.path().to_str().unwrap());
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("qdrant-storage.tar is corrupt"),
        "{}",
        stderr(&output)
    );
    assert!(other.containers().is_empty(), "nothing was restored");
    assert!(other.volumes().is_empty(), "nothing was restored");

    // A Qdrant tenant's backup without its vector store's data is no backup of it.
    std::fs::write(&archive, &bytes).unwrap();
    let mut stripped = index.clone();
    stripped["files"]
        .as_object_mut()
        .unwrap()
        .remove("qdrant-storage.tar");
    std::fs::write(
        dir.join("backup.json"),
        serde_json::to_vec_pretty(&stripped).unwrap(),
    )
    .unwrap();
    let output = other.restore(&tenant, backups.path().to_str().unwrap());
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output)
            .contains("the tenant uses Qdrant but the backup holds no qdrant-storage.tar"),
        "{}",
        stderr(&output)
    );
    assert!(other.containers().is_empty(), "nothing was restored");
    assert!(
        !other
            .data_dir()
            .join("manifests/tenants")
            .join(format!("{tenant}.yaml"))
            .exists(),
        "nothing was stored"
    );
}
