//! The monitoring assets against the real binaries and the real Prometheus:
//!
//! - every metric that a Prometheus rule (config/prometheus/*rules*.yml) or a Grafana
//!   panel (config/grafana/dashboards/*.json) names is one that `iafactory-operator` or
//!   `iafactory-api` exports, scraped from their `/metrics`; or a metric of another
//!   exporter, named below; or one of `iafactory serve`'s, listed below and asserted on
//!   a real `serve` by the appliance's own tests.
//! - every metric the binaries export is on a dashboard;
//! - Prometheus 2.42 scrapes a running `iafactory-api` and evaluates every rule.
//!
//! The operator needs a Kubernetes API that has our CRDs before it serves `/metrics`: a
//! stand-in here answers the start-up check and refuses everything else (the controllers
//! back off). The API runs against the real PostgreSQL, in a database of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Metrics of other exporters, and which exporter.
const EXTERNAL: &[(&str, &str)] = &[
    ("kubelet_volume_stats_available_bytes", "the kubelet"),
    ("kubelet_volume_stats_capacity_bytes", "the kubelet"),
    // TenantBackupLate reads the backup CronJob's state.
    (
        "kube_cronjob_status_last_successful_time",
        "kube-state-metrics",
    ),
    ("kube_cronjob_created", "kube-state-metrics"),
    ("kube_cronjob_next_schedule_time", "kube-state-metrics"),
    (
        "kube_cronjob_status_last_schedule_time",
        "kube-state-metrics",
    ),
];

/// Metrics the rules and dashboards use that `iafactory serve` exports. Scraping it
/// needs the Docker Engine and tenants running, so this test takes their names from
/// here, and the appliance's own tests assert each one on a real `serve`'s /metrics:
/// appliance/tests/serve.rs (containers, volumes) and serve_gateway.rs (certificates).
const APPLIANCE: &[(&str, &str)] = &[
    ("iafactory_appliance_container_running", "iafactory serve"),
    ("iafactory_appliance_container_healthy", "iafactory serve"),
    (
        "iafactory_appliance_certificate_expiry_timestamp_seconds",
        "iafactory serve",
    ),
    (
        "iafactory_appliance_volume_available_bytes",
        "iafactory serve",
    ),
    (
        "iafactory_appliance_volume_capacity_bytes",
        "iafactory serve",
    ),
    // Asserted by appliance/tests/backup_schedule.rs on the scheduler's registry, which
    // `serve` registers into its /metrics.
    (
        "iafactory_appliance_backup_failures_total",
        "iafactory serve",
    ),
];

use iafactory_e2e::{root, workspace_binary};

fn engine(variable: &str, engine: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run scripts/test, or scripts/engines.sh up {engine} && source /tmp/iafactory-engines/env")
    })
}

// ---------------------------------------------------------------------------------
// What the rules and dashboards reference.

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN",
];
/// Followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Skips from an opening delimiter at `i` to just past its match, minding strings.
fn skip_group(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == open => {
                depth += 1;
                i += 1;
            }
            c if c == close => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    i
}

fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The metric names a PromQL expression selects.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            // A Grafana variable.
            i += 1;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration.
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let followed_by_paren = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if followed_by_paren {
                    i = skip_group(&chars, next, '(', ')');
                }
            } else if followed_by_paren
                || AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.as_str())
            {
                // A function, an aggregation or an operator.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// `iafactory_*` words in prose (alert descriptions, panel descriptions).
fn mentioned_metrics(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("iafactory_"))
        .map(str::to_owned)
        .collect()
}

#[derive(Default)]
struct References {
    /// Metric names in queries, with where they are used.
    selected: BTreeMap<String, BTreeSet<String>>,
    /// Metric names in prose.
    mentioned: BTreeMap<String, BTreeSet<String>>,
}

impl References {
    fn query(&mut self, expr: &str, place: &str) {
        for name in metric_names(expr) {
            self.selected
                .entry(name)
                .or_default()
                .insert(place.to_owned());
        }
    }
    fn prose(&mut self, text: &str, place: &str) {
        for name in mentioned_metrics(text) {
            self.mentioned
                .entry(name)
                .or_default()
                .insert(place.to_owned());
        }
    }
}

fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| keep(p.file_name().unwrap().to_str().unwrap()))
        .collect();
    found.sort();
    found
}

fn rule_files() -> Vec<PathBuf> {
    files(&root().join("config/prometheus"), |n| {
        n.contains("rules") && n.ends_with(".yml")
    })
}

fn rule_references(references: &mut References) {
    let files = rule_files();
    assert!(!files.is_empty(), "no rules in config/prometheus");
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let value: Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for group in value["groups"].as_array().expect("groups") {
            for rule in group["rules"].as_array().expect("rules") {
                let id = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
                let place = format!("{name}: {id}");
                references.query(rule["expr"].as_str().expect("an expr"), &place);
                if let Some(annotations) = rule["annotations"].as_object() {
                    for text in annotations.values() {
                        references.prose(text.as_str().unwrap_or_default(), &place);
                    }
                }
            }
        }
    }
}

fn dashboard_references(references: &mut References) -> BTreeSet<String> {
    let files = files(&root().join("config/grafana/dashboards"), |n| {
        n.ends_with(".json")
    });
    assert!(
        !files.is_empty(),
        "no dashboards in config/grafana/dashboards"
    );
    let mut on_dashboards = BTreeSet::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let board: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        for key in ["uid", "title", "panels", "schemaVersion"] {
            assert!(!board[key].is_null(), "{name} has no {key}");
        }
        let mut panels: Vec<&Value> = board["panels"].as_array().unwrap().iter().collect();
        while let Some(panel) = panels.pop() {
            if let Some(nested) = panel["panels"].as_array() {
                panels.extend(nested);
            }
            let place = format!("{name}: {}", panel["title"].as_str().unwrap_or("?"));
            references.prose(panel["description"].as_str().unwrap_or_default(), &place);
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a Prometheus target");
                references.query(expr, &place);
                on_dashboards.extend(metric_names(expr));
            }
        }
        // Template variables: label_values(metric, label).
        for variable in board["templating"]["list"].as_array().into_iter().flatten() {
            let query = variable["query"]["query"]
                .as_str()
                .or(variable["query"].as_str())
                .unwrap_or_default();
            if let Some(inner) = query
                .strip_prefix("label_values(")
                .and_then(|q| q.split(',').next())
            {
                let place = format!("{name}: variable {}", variable["name"]);
                references.query(inner, &place);
            }
        }
    }
    on_dashboards
}

// ---------------------------------------------------------------------------------
// What the binaries export.

/// Sample names and family names of an OpenMetrics exposition.
fn exported(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            families.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            for suffix in suffixes {
                samples.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            samples.insert(name.to_owned());
        }
    }
    (samples, families)
}

/// A minimal HTTP/1.0 GET: (status, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn wait_for(what: &str, seconds: u64, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {seconds}s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed when dropped; its output goes to a log file shown on failure.
struct Process {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Process {
    fn start(name: &'static str, mut command: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Process { child, name, log }
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}):\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in Kubernetes API, enough for the operator to reconcile one Tenant for real
/// (and so to fill each of its metric families, since prometheus-client leaves empty
/// ones out): it has our CRDs and one Tenant (config/samples, with the finalizer already
/// set), lists everything else as empty, holds watches open, accepts every write by
/// echoing it, and refuses the Tenant's status, so that a reconcile also fails.
fn fake_kubernetes_api() -> u16 {
    let mut crds = BTreeMap::new();
    for file in files(&root().join("crds"), |n| n.ends_with(".yaml")) {
        let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        crds.insert(
            crd["metadata"]["name"].as_str().unwrap().to_owned(),
            serde_json::to_string(&crd).unwrap(),
        );
    }
    let mut tenant: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("config/samples/tenant-small-firm.yaml")).unwrap(),
    )
    .unwrap();
    let metadata = tenant["metadata"].as_object_mut().unwrap();
    metadata.insert("uid".into(), "5b1f6a8e-0000-4000-8000-000000000001".into());
    metadata.insert("resourceVersion".into(), "1".into());
    metadata.insert("generation".into(), 1.into());
    metadata.insert("creationTimestamp".into(), "2025-01-01T00:00:00Z".into());
    metadata.insert(
        "finalizers".into(),
        serde_json::json!(["iafactory.dz/cleanup"]),
    );
    let tenants = serde_json::json!({
        "apiVersion": "iafactory.dz/v1alpha1", "kind": "TenantList",
        "metadata": {"resourceVersion": "1"}, "items": [tenant],
    })
    .to_string();
    let crds = std::sync::Arc::new(crds);
    let tenants = std::sync::Arc::new(tenants);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (crds, tenants) = (crds.clone(), tenants.clone());
            std::thread::spawn(move || answer_kubernetes(stream, &crds, &tenants));
        }
    });
    port
}

fn answer_kubernetes(mut stream: TcpStream, crds: &BTreeMap<String, String>, tenants: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) <= 2 {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // What follows /api/v1 or /apis/<group>/<version>.
    let rest: &[&str] = match segments.first() {
        Some(&"api") if segments.len() >= 2 => &segments[2..],
        Some(&"apis") if segments.len() >= 3 => &segments[3..],
        _ => &[],
    };
    let is_list = rest.len() == 1 || (rest.len() == 3 && rest[0] == "namespaces");
    let not_found = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#;
    let (status, reply) = match method {
        "GET" if query.split('&').any(|p| p == "watch=true" || p == "watch=1") => {
            // Hold the watch open, with no event, until the test ends.
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            std::thread::sleep(Duration::from_secs(600));
            return;
        }
        "GET" if path.starts_with("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/") => {
            match crds.get(*segments.last().unwrap()) {
                Some(crd) => ("200 OK", crd.clone()),
                None => ("404 Not Found", not_found.to_owned()),
            }
        }
        "GET" if path == "/apis/iafactory.dz/v1alpha1/tenants" => ("200 OK", tenants.to_owned()),
        "GET" if is_list => (
            "200 OK",
            r#"{"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":"1"},"items":[]}"#
                .to_owned(),
        ),
        "GET" => ("404 Not Found", not_found.to_owned()),
        "PATCH" if path.ends_with("/status") => (
            "500 Internal Server Error",
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"InternalError","code":500}"#
                .to_owned(),
        ),
        "PATCH" | "PUT" => ("200 OK", String::from_utf8_lossy(&body).into_owned()),
        "POST" => ("201 Created", String::from_utf8_lossy(&body).into_owned()),
        "DELETE" => (
            "200 OK",
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success"}"#.to_owned(),
        ),
        _ => ("404 Not Found", not_found.to_owned()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

fn scrape_operator(dir: &Path) -> String {
    let api = fake_kubernetes_api();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{api}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut command = Command::new(workspace_binary(
        "iafactory-operator",
        &["operator/src", "crds/src"],
    ));
    command
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .arg("--no-leader-election");
    let mut operator = Process::start("iafactory-operator", command, dir);
    wait_for("the operator serves /healthz", 30, || {
        operator.assert_running();
        http_get(port, "/healthz").is_ok_and(|(status, _)| status == 200)
    });
    // Wait for a reconcile that wrote and then failed.
    let mut body = String::new();
    wait_for(
        "the operator reconciles the Tenant, writes and fails",
        60,
        || {
            operator.assert_running();
            body = http_get(port, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            [
                "reconcile_runs",
                "reconcile_failures",
                "reconcile_duration_seconds",
                "writes",
            ]
            .iter()
            .all(|family| body.contains(&format!("# TYPE iafactory_operator_{family} ")))
        },
    );
    body
}

/// The API's metric families with one series each. prometheus-client leaves a family
/// with no series out of `/metrics`, and the running API only has series for what it
/// served (no rate limit hit, no document ingested, no RAG query, no workflow run here):
/// these come from the API's own registration (`Metrics::new` extended by
/// `RagMetrics::register` and `WorkflowMetrics::register`, as `AppState` does), each
/// touched once.
fn api_registered_families() -> String {
    use iafactory_api::metrics::{Metrics, PoolLabels};
    use iafactory_api::rag::RagMetrics;
    use iafactory_api::rag::ingest::StatusLabel;
    use iafactory_api::workflows::WorkflowMetrics;
    let (mut rag, mut workflows) = (None, None);
    let metrics = Metrics::new(|registry| {
        rag = Some(RagMetrics::register(registry));
        workflows = Some(WorkflowMetrics::register(registry));
    });
    let rag = rag.expect("Metrics::new calls its extension");
    let workflows = workflows.expect("Metrics::new calls its extension");
    let elapsed = Duration::from_millis(3);
    metrics.observe_request("GET", "/api/auth/me", 200, elapsed);
    metrics.rate_limited("ip");
    metrics.rate_limiter_errors.inc();
    metrics
        .db_pool_connections
        .get_or_create(&PoolLabels {
            state: "idle".into(),
        })
        .set(1);
    metrics.db_pool_max_connections.set(1);
    metrics.usage_events_dropped.inc();
    rag.stage("search", elapsed);
    rag.documents_ingested
        .get_or_create(&StatusLabel {
            status: "ready".into(),
        })
        .inc();
    rag.ingestion_duration.observe(0.5);
    rag.ingestion_stage("parse", elapsed);
    rag.queue_depth.set(1);
    rag.extractive_answers.inc();
    let done = iafactory_api::workflows::StatusLabel {
        status: "succeeded".into(),
    };
    workflows.executions.get_or_create(&done).inc();
    workflows.step_duration.get_or_create(&done).observe(0.5);
    workflows
        .workflow_duration
        .get_or_create(&done)
        .observe(1.5);
    metrics.requests_in_flight.set(1);
    metrics.encode()
}

/// A database of its own on the test PostgreSQL, dropped at the end.
struct Database {
    admin: String,
    name: String,
    psql: PathBuf,
}

impl Database {
    fn create() -> Self {
        let admin = engine("IAF_TEST_DATABASE_URL", "postgres");
        let psql = PathBuf::from(engine("IAF_TEST_PG_BIN", "postgres")).join("psql");
        let name = format!(
            "iaf_monitoring_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let database = Database { admin, name, psql };
        database.sql(&format!("CREATE DATABASE {}", database.name));
        database
    }

    fn sql(&self, statement: &str) {
        let output = Command::new(&self.psql)
            .args([&self.admin, "-v", "ON_ERROR_STOP=1", "-qc", statement])
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn url(&self) -> String {
        let (base, _) = self
            .admin
            .rsplit_once('/')
            .expect("the URL names a database");
        format!("{base}/{}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new(&self.psql)
            .args([
                &self.admin,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// A running `iafactory-api` on its own database: (process, database, the port of its
/// internal listener, where `/metrics` is served).
fn start_api(dir: &Path) -> (Process, Database, u16) {
    let database = Database::create();
    let (public, port) = (free_port(), free_port());
    let mut command = Command::new(workspace_binary("iafactory-api", &["api/src", "crds/src"]));
    command
        .env_clear()
        .env("IAF_DATABASE_URL", database.url())
        .env("IAF_DATABASE_APP_PASSWORD", "app-password-for-tests")
        .env("IAF_JWT_SECRET", "monitoring-test-secret-0123456789abcdef")
        .env("IAF_LISTEN", format!("127.0.0.1:{public}"))
        .env("IAF_INTERNAL_LISTEN", format!("127.0.0.1:{port}"))
        .env("IAF_LOG", "warn");
    let mut api = Process::start("iafactory-api", command, dir);
    wait_for("the API answers /readyz", 60, || {
        api.assert_running();
        http_get(port, "/readyz").is_ok_and(|(status, _)| status == 200)
    });
    (api, database, port)
}

#[test]
fn promql_metric_names_are_extracted() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (namespace, le) (rate(a_bucket{route!~"/api/{x}|b", s="5.."}[$__rate_interval]))) > 0.5"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("(x - time()) < 14 * 86400 unless on (tenant) max without (pod) (y offset 5m) == 1"),
        ["x", "y"]
    );
    assert_eq!(
        names("sum(rate(a_total[1h])) / ignoring(le) group_left(b) c and bool d or vector(0)"),
        ["a_total", "c", "d"]
    );
    assert_eq!(names(r#"count(up{job="x"} == 0) or 1e3"#), ["up"]);
}

#[test]
fn every_metric_referenced_is_exported_and_every_export_is_on_a_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let mut references = References::default();
    rule_references(&mut references);
    let on_dashboards = dashboard_references(&mut references);

    let operator = scrape_operator(dir.path());
    let (_api, _database, api_port) = start_api(dir.path());
    // The dependency probe runs in the background from the start: wait for its first pass.
    let mut api = String::new();
    wait_for("the API's first dependency probe", 30, || {
        let (status, body) = http_get(api_port, "/metrics").unwrap_or_default();
        api = body;
        status == 200 && api.contains("iafactory_api_dependency_up{")
    });

    // The running API exports what it has served; its registration, the rest.
    let (served, _) = exported(&api);
    for name in [
        "iafactory_api_http_requests_total",
        "iafactory_api_db_pool_max_connections",
    ] {
        assert!(
            served.contains(name),
            "the running API exports {name}:\n{api}"
        );
    }
    let api = format!("{api}\n{}", api_registered_families());

    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for (binary, text, prefix) in [
        ("iafactory-operator", &operator, "iafactory_operator_"),
        ("iafactory-api", &api, "iafactory_api_"),
    ] {
        let (s, f) = exported(text);
        assert!(
            f.iter().any(|name| name.starts_with(prefix)),
            "{binary} exports no {prefix}* metric:\n{text}"
        );
        // Every exported family is on a dashboard.
        for family in f.iter().filter(|name| name.starts_with(prefix)) {
            assert!(
                on_dashboards
                    .iter()
                    .any(
                        |used| used.strip_prefix(family.as_str()).is_some_and(|rest| {
                            ["", "_total", "_bucket", "_sum", "_count"].contains(&rest)
                        })
                    ),
                "{binary} exports {family}, which no dashboard shows"
            );
        }
        samples.extend(s);
        families.extend(f);
    }

    let external: BTreeMap<&str, &str> = EXTERNAL.iter().copied().collect();
    let appliance: BTreeMap<&str, &str> = APPLIANCE.iter().copied().collect();
    let mut unknown = Vec::new();
    for (name, places) in &references.selected {
        if !samples.contains(name)
            && !external.contains_key(name.as_str())
            && !appliance.contains_key(name.as_str())
        {
            unknown.push(format!("{name} (in {places:?})"));
        }
    }
    for (name, places) in &references.mentioned {
        let family_of_appliance = appliance.keys().any(|r| r.starts_with(name.as_str()));
        if !samples.contains(name) && !families.contains(name) && !family_of_appliance {
            unknown.push(format!("{name} (named in the text of {places:?})"));
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics nobody exports:\n  {}",
        unknown.join("\n  ")
    );

    for (name, binary) in APPLIANCE {
        assert!(
            !samples.contains(*name),
            "{name} is exported by a scraped binary, not only {binary}: remove it from APPLIANCE"
        );
        assert!(
            references.selected.contains_key(*name),
            "{name} is in APPLIANCE but nothing uses it"
        );
    }
    for (name, _) in EXTERNAL {
        assert!(
            references.selected.contains_key(*name),
            "{name} is in EXTERNAL but nothing uses it"
        );
    }
}

#[test]
fn prometheus_scrapes_the_api_and_evaluates_every_rule() {
    let prometheus = engine("IAF_TEST_PROMETHEUS", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let (_api, _database, api_port) = start_api(dir.path());

    // What the appliance's generated scrape configuration holds for one tenant: its
    // API's /metrics, labelled with the tenant.
    let rules: Vec<String> = rule_files()
        .iter()
        .map(|p| format!("  - {}\n", p.display()))
        .collect();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}scrape_configs:\n  - job_name: iafactory-api\n    static_configs:\n      - targets: ['127.0.0.1:{api_port}']\n        labels:\n          tenant: demo\n",
            rules.concat()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut command = Command::new(prometheus);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let mut server = Process::start("prometheus", command, dir.path());

    let query = |path: &str| -> Option<Value> {
        let (status, body) = http_get(port, path).ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    };
    wait_for("Prometheus scrapes the API and finds it up", 60, || {
        server.assert_running();
        query("/api/v1/targets").is_some_and(|targets| {
            targets["data"]["activeTargets"]
                .as_array()
                .is_some_and(|t| t.len() == 1 && t[0]["health"] == "up")
        })
    });
    wait_for("every rule group is evaluated without error", 60, || {
        query("/api/v1/rules").is_some_and(|rules| {
            let groups = rules["data"]["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let evaluated: Vec<&Value> = groups
                .iter()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            !evaluated.is_empty()
                && evaluated.iter().all(|rule| {
                    rule["health"] == "ok"
                        && !rule["lastEvaluation"]
                            .as_str()
                            .unwrap_or("0001")
                            .starts_with("0001")
                })
        })
    });
    // The scraped series carry the tenant label the rules aggregate by.
    let result =
        query("/api/v1/query?query=iafactory_api_db_pool_max_connections%7Btenant%3D%22demo%22%7D")
            .expect("the query answers");
    let value = &result["data"]["result"][0]["value"][1];
    assert!(
        value
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0),
        "the pool size is scraped: {result}"
    );
}
