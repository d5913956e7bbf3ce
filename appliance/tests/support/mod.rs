//! What the appliance tests share: a stand-in image built from busybox (FROM scratch,
//! cached by content), a per-test appliance (its own data directory and instance, so
//! parallel tests never touch each other's objects), and cleanup by label.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use iafactory_appliance::app::App;
use iafactory_appliance::settings::Config;
use sha2::{Digest, Sha256};

const DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY entrypoint.sh /entrypoint.sh\nCOPY www/ /www/\nCOPY --chown=999:999 pgdata/ /var/lib/postgresql/data/\nENTRYPOINT [\"/bin/busybox\", \"sh\", \"/entrypoint.sh\"]\n";

/// The stand-in runs its arguments as a busybox applet, like `ENTRYPOINT busybox`, and
/// stands in for the API's `migrate` step (run before the API starts; a stand-in API
/// has no schema to migrate) by succeeding.
const ENTRYPOINT: &str = "case \"$1\" in\n  migrate) echo 'stand-in: nothing to migrate'; exit 0 ;;\n  *) exec /bin/busybox \"$@\" ;;\nesac\n";

const STANDIN_METRICS: &str = "# TYPE standin_up gauge\nstandin_up 1\n";

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs (scripts/engines.sh up docker)")
}

/// `iafactory-test/<name>:<first 12 hex of hash>`, and whether that image exists
/// already: the test images are built once per content.
fn content_tag(name: &str, hash: Sha256) -> (String, bool) {
    let tag = format!(
        "iafactory-test/{name}:{}",
        &hex::encode(hash.finalize())[..12]
    );
    let built = docker(&["image", "inspect", &tag]).status.success();
    (tag, built)
}

/// psql as the database owner in `container`, unaligned, tuples only: the result,
/// trimmed.
pub fn psql(container: &str, sql: &str) -> String {
    docker_ok(&[
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
    ])
}

pub fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `iafactory-test/standin:<hash>`: busybox serving HTTP, built once per content.
pub fn standin_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let busybox = std::env::var("IAF_TEST_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
        let binary = std::fs::read(&busybox)
            .unwrap_or_else(|e| panic!("{busybox}: {e}; run scripts/engines.sh up busybox"));
        let mut hash = Sha256::new();
        hash.update(&binary);
        hash.update(DOCKERFILE);
        hash.update(ENTRYPOINT);
        hash.update(STANDIN_METRICS);
        let (tag, built) = content_tag("standin", hash);
        if built {
            return tag;
        }
        let context = tempfile::tempdir().unwrap();
        std::fs::write(context.path().join("busybox"), &binary).unwrap();
        std::fs::write(context.path().join("Dockerfile"), DOCKERFILE).unwrap();
        std::fs::write(context.path().join("entrypoint.sh"), ENTRYPOINT).unwrap();
        std::fs::create_dir_all(context.path().join("www")).unwrap();
        std::fs::write(context.path().join("www/index.html"), "ok\n").unwrap();
        // What Prometheus scrapes from a stand-in API (tests/monitoring.rs).
        std::fs::write(context.path().join("www/metrics"), STANDIN_METRICS).unwrap();
        std::fs::create_dir_all(context.path().join("pgdata")).unwrap();
        std::fs::write(context.path().join("pgdata/.keep"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            context.path().join("busybox"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let output = Command::new("docker")
            .args(["build", "-q", "-t", &tag, context.path().to_str().unwrap()])
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "building the stand-in image: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        tag
    })
}

/// Runs `images/<name>/build.sh` (each skips its build when an image of the same
/// content exists) and returns what it printed on stdout.
pub fn run_image_build(name: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../images/{name}/build.sh"));
    let output = Command::new(&script).output().unwrap();
    assert!(
        output.status.success(),
        "{} (its engines: scripts/engines.sh up ...): {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// `iafactory/postgres-pgvector:18`, built by images/postgres/build.sh.
pub fn postgres_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        run_image_build("postgres");
        "iafactory/postgres-pgvector:18".to_owned()
    })
}

/// `iafactory/api:<version>`, the real platform API, built by images/build.sh (a musl
/// compile, incremental in target/, with the test embedding model inside as
/// scripts/checks/30-images.sh puts it). IAF_TEST_API_IMAGE names an image to use
/// instead, already built.
pub fn api_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Ok(image) = std::env::var("IAF_TEST_API_IMAGE") {
            return image;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/build.sh");
        let mut command = Command::new(&script);
        command.arg("api");
        if let Ok(model) = std::env::var("IAF_TEST_EMBEDDING_MODEL_DIR") {
            command.env("IAF_IMAGE_EMBEDDING_MODEL_DIR", model);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        format!("iafactory/api:{}", env!("CARGO_PKG_VERSION"))
    })
}

const QDRANT_DOCKERFILE: &str = "FROM scratch\nCOPY rootfs/ /\nCOPY --chown=1000:1000 storage/ /qdrant/storage/\nENTRYPOINT [\"/qdrant-testserver\", \"--listen\", \"0.0.0.0:6334\", \"--storage\", \"/qdrant/storage\"]\n";

/// `iafactory-test/qdrant:<hash>`: tests/qdrant-testserver (Qdrant's gRPC API over
/// Qdrant's own engine; no Qdrant image can be built here) FROM scratch, with the
/// libraries it links (from `ldd`) and busybox for the healthcheck; its storage
/// directory is owned by uid 1000, so the appliance's fresh volume is too. Built once per
/// content.
pub fn qdrant_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let server = std::env::var("IAF_TEST_QDRANT_SERVER").unwrap_or_else(|_| {
            panic!("IAF_TEST_QDRANT_SERVER is not set: run scripts/engines.sh up qdrant")
        });
        let busybox = std::env::var("IAF_TEST_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
        let ldd = Command::new("ldd").arg(&server).output().unwrap();
        assert!(ldd.status.success(), "ldd {server}: {}", stderr(&ldd));
        let libraries: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|word| word.starts_with('/'))
            .map(PathBuf::from)
            .collect();
        let mut hash = Sha256::new();
        hash.update(QDRANT_DOCKERFILE);
        for file in std::iter::once(&PathBuf::from(&server))
            .chain(std::iter::once(&PathBuf::from(&busybox)))
            .chain(&libraries)
        {
            hash.update(file.as_os_str().as_encoded_bytes());
            hash.update(std::fs::read(file).unwrap());
        }
        let (tag, built) = content_tag("qdrant", hash);
        if built {
            return tag;
        }
        let context = tempfile::tempdir().unwrap();
        let rootfs = context.path().join("rootfs");
        let copy = |from: &Path, to: &Path| {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from, to).unwrap();
        };
        copy(Path::new(&server), &rootfs.join("qdrant-testserver"));
        copy(Path::new(&busybox), &rootfs.join("bin/busybox"));
        for library in &libraries {
            copy(library, &rootfs.join(library.strip_prefix("/").unwrap()));
        }
        std::fs::create_dir_all(context.path().join("storage")).unwrap();
        std::fs::write(context.path().join("Dockerfile"), QDRANT_DOCKERFILE).unwrap();
        let output = Command::new("docker")
            .args(["build", "-q", "-t", &tag, context.path().to_str().unwrap()])
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "building the Qdrant test image: {}",
            stderr(&output)
        );
        tag
    })
}

/// The `[images.qdrant]` table for [`qdrant_image`]: healthy once it accepts
/// connections on its gRPC port.
pub fn qdrant_config() -> String {
    format!(
        "\n[images.qdrant]\nimage = \"{}\"\nuid = 1000\nhealthcheck = [\"/bin/busybox\", \"sh\", \"-c\", \"echo | /bin/busybox nc 127.0.0.1 6334\"]\n",
        qdrant_image()
    )
}

pub fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    hex::encode(bytes)
}

/// One appliance for one test; removes every Docker object it owns when dropped.
pub struct TestAppliance {
    pub dir: tempfile::TempDir,
    pub instance: String,
    pub config_file: PathBuf,
}

impl TestAppliance {
    pub fn new() -> Self {
        Self::with_extra("")
    }

    /// `extra` is appended to the configuration (more TOML tables).
    /// With the real PostgreSQL + pgvector image (images/postgres/build.sh).
    pub fn with_real_database() -> Self {
        let appliance = Self::with_extra("");
        appliance.write_config_with("", true);
        appliance
    }

    /// With the real PostgreSQL image and the real platform API ([`api_image`]); the
    /// model server is the stand-in (an HTTP server on Ollama's port).
    pub fn with_real_api() -> Self {
        Self::with_real_api_and("")
    }

    /// [`Self::with_real_api`], with `extra` lines (`api.NAME = "value"`: environment).
    pub fn with_real_api_and(extra: &str) -> Self {
        let appliance = Self::with_extra(extra);
        appliance.write_config_images(extra, true, true);
        appliance
    }

    pub fn with_extra(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let instance = format!("test-{}", random_suffix());
        let config_file = dir.path().join("iafactory.toml");
        let appliance = Self {
            dir,
            instance,
            config_file,
        };
        appliance.write_config(extra);
        appliance
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// (Re)writes the configuration: stand-in images, fast healthchecks, and `extra`.
    pub fn write_config(&self, extra: &str) {
        self.write_config_with(extra, false)
    }

    pub fn write_config_with(&self, extra: &str, real_database: bool) {
        self.write_config_images(extra, real_database, false)
    }

    fn write_config_images(&self, extra: &str, real_database: bool, real_api: bool) {
        let image = standin_image();
        let api = if real_api {
            format!(
                "image = \"{}\"\nuid = 65532\nhealthcheck = [\"/usr/local/bin/iafactory-api\", \"healthcheck\"]\n{}\n\n[images.ollama]\nimage = \"{image}\"\nuid = 1000\nargs = [\"httpd\", \"-f\", \"-p\", \"11434\", \"-h\", \"/www\"]\nhealthcheck = [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:11434/\"]\n\n[ollama]\npull_models = false",
                api_image(),
                extra_table(extra, "api"),
            )
        } else {
            // `-Y off`: an open tenant's API is given `http_proxy` (its egress proxy),
            // and busybox's wget knows no `no_proxy`. It serves both of the API's
            // listeners: the public one (8180) and the internal one (9180, scraped).
            format!(
                "image = \"{image}\"\nuid = 65532\nargs = [\"sh\", \"-c\", \"/bin/busybox httpd -p 9180 -h /www && exec /bin/busybox httpd -f -p 8180 -h /www\"]\nhealthcheck = [\"/bin/busybox\", \"wget\", \"-Y\", \"off\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8180/\"]"
            )
        };
        let postgres = if real_database {
            format!(
                "image = \"{}\"\nuid = 999\nhealthcheck = [\"pg_isready\", \"-h\", \"127.0.0.1\", \"-U\", \"iafactory\", \"-d\", \"iafactory\"]",
                postgres_image()
            )
        } else {
            format!(
                "image = \"{image}\"\nuid = 999\nargs = [\"sh\", \"-c\", \"mkdir -p $PGDATA && touch $PGDATA/ready && exec /bin/busybox httpd -f -p 5432 -h /www\"]\nhealthcheck = [\"/bin/busybox\", \"test\", \"-f\", \"/var/lib/postgresql/data/pgdata/ready\"]"
            )
        };
        let text = format!(
            r#"[appliance]
data_dir = "{data}"
instance = "{instance}"
health_timeout_seconds = 90
healthcheck_interval_ms = 500

# Off in tests, so that they do not pay for Prometheus and Grafana (and never clash
# on their ports); tests/monitoring.rs turns it on.
[appliance.monitoring]
enabled = false

[appliance.gateway]
# Any free port: tests never need 443/80, and parallel daemons never clash.
https_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"

[images.postgres]
{postgres}
{postgres_env}

[images.api]
{api}
{api_env}
"#,
            // The real API's table is followed by others: its environment is inside.
            api_env = if real_api {
                String::new()
            } else {
                extra_table(extra, "api")
            },
            data = self.data_dir().display(),
            instance = self.instance,
            postgres_env = extra_table(extra, "postgres"),
        );
        std::fs::write(&self.config_file, text).unwrap();
    }

    pub fn config(&self) -> Config {
        Config::load(Some(&self.config_file)).unwrap()
    }

    pub async fn app(&self) -> App {
        App::open(self.config()).await.unwrap()
    }

    /// Writes a Tenant manifest for `name` (no Ollama: the stand-ins are postgres and
    /// api) with `spec_extra` lines under `spec:`, and returns its path.
    pub fn tenant_file(&self, name: &str, spec_extra: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata:\n  name: {name}\nspec:\n  components:\n    ollama: {{enabled: false}}\n{spec_extra}"
            ),
        )
        .unwrap();
        path
    }

    /// Runs the real binary with this appliance's configuration.
    pub fn iafactory(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_iafactory"))
            .arg("--config")
            .arg(&self.config_file)
            .args(args)
            .output()
            .expect("the iafactory binary runs")
    }

    /// `iafactory restore TENANT --from DIR`.
    pub fn restore(&self, tenant: &str, from: &str) -> Output {
        self.iafactory(&["restore", tenant, "--from", from])
    }

    /// Container names of this appliance, sorted.
    pub fn containers(&self) -> Vec<String> {
        self.listed(&["ps", "-a", "--format", "{{.Names}}"])
    }

    pub fn container_ids(&self) -> Vec<String> {
        self.listed(&["ps", "-aq", "--no-trunc"])
    }

    pub fn volumes(&self) -> Vec<String> {
        self.listed(&["volume", "ls", "-q"])
    }

    /// The lines of a docker listing (`args`) of this appliance's objects, sorted.
    fn listed(&self, args: &[&str]) -> Vec<String> {
        let filter = format!("label=iafactory.dz/appliance={}", self.instance);
        let mut command = args.to_vec();
        command.extend(["--filter", &filter]);
        let mut lines: Vec<String> = docker_ok(&command).lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }
}

fn extra_table(extra: &str, component: &str) -> String {
    extra
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{component}.")))
        .map(|l| format!("env = {{ {l} }}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for TestAppliance {
    fn drop(&mut self) {
        let label = format!("label=iafactory.dz/appliance={}", self.instance);
        let ids = docker(&["ps", "-aq", "--filter", &label]);
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            docker(&["rm", "-f", "-v", id]);
        }
        let networks = docker(&["network", "ls", "-q", "--filter", &label]);
        for id in String::from_utf8_lossy(&networks.stdout).lines() {
            docker(&["network", "rm", id]);
        }
        let volumes = docker(&["volume", "ls", "-q", "--filter", &label]);
        for name in String::from_utf8_lossy(&volumes.stdout).lines() {
            docker(&["volume", "rm", "-f", name]);
        }
    }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

impl TestAppliance {
    /// Points `serve`'s localhost listener (/healthz, /status, /metrics) at `port`, with
    /// a reconcile every `interval_seconds`.
    pub fn set_serve(&self, port: u16, interval_seconds: u64) {
        let config = std::fs::read_to_string(&self.config_file).unwrap().replace(
            "[appliance]\n",
            &format!(
                "[appliance]\nlisten = \"127.0.0.1:{port}\"\nreconcile_interval_seconds = {interval_seconds}\n"
            ),
        );
        std::fs::write(&self.config_file, config).unwrap();
    }

    /// Serves tenants as `<tenant>.<domain>` on these gateway ports of 127.0.0.1.
    pub fn set_gateway(&self, domain: &str, https_port: u16, http_port: u16) {
        let config = std::fs::read_to_string(&self.config_file)
            .unwrap()
            .replace("[appliance]\n", &format!("domain = \"{domain}\"\n[appliance]\n"))
            .replace(
                "https_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"",
                &format!(
                    "https_listen = \"127.0.0.1:{https_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\""
                ),
            );
        assert!(
            config.contains(&format!("127.0.0.1:{https_port}")),
            "{config}"
        );
        std::fs::write(&self.config_file, config).unwrap();
    }

    /// The appliance's local CA, which signs every tenant's certificate by default.
    pub fn local_ca(&self) -> Vec<u8> {
        let path = self.data_dir().join("certs/local-ca/ca.pem");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Starts `iafactory serve` logging at info into `serve.log` in the test's directory
    /// (for failure messages), without waiting for it; returns the log's path.
    pub fn spawn_serve_logged(&self) -> (Daemon, PathBuf) {
        let log = self.dir.path().join("serve.log");
        let daemon = Daemon(
            Command::new(env!("CARGO_BIN_EXE_iafactory"))
                .args(["--config", self.config_file.to_str().unwrap(), "serve"])
                .env("IAF_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        (daemon, log)
    }

    /// Starts `iafactory serve` (its output discarded: the tests look at what it does)
    /// and waits until it answers /healthz on `port`.
    pub async fn serve(&self, port: u16) -> Daemon {
        let daemon = Daemon(
            Command::new(env!("CARGO_BIN_EXE_iafactory"))
                .args(["--config", self.config_file.to_str().unwrap(), "serve"])
                .env("IAF_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for("serve answers /healthz", 60, || async {
            get(port, "/healthz").await.is_some()
        })
        .await;
        daemon
    }
}

/// A container's address on its (single) network.
pub fn ip_of(container: &str) -> String {
    docker_ok(&[
        "inspect",
        container,
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    ])
}

/// The address `name` resolves to inside `from`'s network. (The static busybox's own
/// resolver: its wget, built on static glibc, cannot resolve names itself.)
pub fn resolve(from: &str, name: &str) -> Option<String> {
    let output = docker(&["exec", from, "/bin/busybox", "nslookup", name, "127.0.0.11"]);
    // The first address is the DNS server's own (127.0.0.11:53); answers follow.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(str::trim)
        .find(|a| !a.ends_with(":53"))
        .map(str::to_owned)
}

/// A running `iafactory serve`, killed when the test ends, whatever its outcome.
pub struct Daemon(pub Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_for<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until `serve` (its status listener on `status_port`) answers, then until it
/// reports `count` tenants, every one healthy.
pub async fn wait_tenants_healthy(status_port: u16, count: usize, seconds: u64) {
    wait_for("serve answers /healthz", 60, || async {
        get(status_port, "/healthz").await.is_some()
    })
    .await;
    wait_for("serve converges the tenants", seconds, || async {
        get(status_port, "/status").await.is_some_and(|body| {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            json.as_array().is_some_and(|tenants| {
                tenants.len() == count && tenants.iter().all(|t| t["healthy"] == true)
            })
        })
    })
    .await;
}

/// The body of a successful GET on 127.0.0.1:PORT, or None.
pub async fn get(port: u16, path: &str) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    response.status().is_success().then_some(())?;
    response.text().await.ok()
}
