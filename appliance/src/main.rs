use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use iafactory_appliance::app::App;
use iafactory_appliance::cli::progress::Progress;
use iafactory_appliance::cli::{self, OutputFormat, StatusFormat};
use iafactory_appliance::engine::Target;
use iafactory_appliance::engine::converge::Report;
use iafactory_appliance::settings::{self, Config};
use iafactory_appliance::{backup, bundle};

/// IAFactory on one server: the sovereign AI platform, driven through Docker.
#[derive(Parser)]
#[command(name = "iafactory", version, about)]
struct Cli {
    /// Configuration file, instead of /etc/iafactory/iafactory.toml.
    #[arg(long, global = true, env = "IAF_CONFIG", alias = "platform-config")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented configuration file (to stdout, or --to FILE).
    Init {
        #[arg(long)]
        to: Option<PathBuf>,
        /// The data directory to write into it.
        #[arg(long, default_value = "/var/lib/iafactory")]
        data_dir: PathBuf,
    },
    /// Print what these manifests would run, decided by the shared pure plan.
    Plan {
        /// Manifest files or directories (multi-document YAML), or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Store these manifests (Tenants, KnowledgeBases, Workflows) as the desired state,
    /// then converge the tenants and register the rest with their tenant's API.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Only store them; `up` or `serve` converges and registers later.
        #[arg(long)]
        no_up: bool,
    },
    /// Converge Docker to every stored tenant.
    Up,
    /// The secrets a Tenant's `secretRef`s name (providers' API keys): `secret set
    /// TENANT NAME KEY` (value on stdin), `secret list [TENANT]`, `secret delete TENANT
    /// NAME [KEY]`.
    Secret {
        #[command(subcommand)]
        command: cli::secret::SecretCommand,
    },
    /// A tenant's language models, carried in on a disk (no registry to pull from).
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Set a tenant's administrator (its first user, or a lost password's reset)
    /// through its API; tenant APIs do not let strangers sign up.
    Admin {
        tenant: String,
        #[arg(long)]
        email: String,
        /// Read the password from stdin's first line; otherwise one is generated and
        /// printed once.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Upgrade: import a bundle's images (if given), then converge: each changed
    /// component is replaced (stateless ones new-before-old), data volumes are kept.
    /// Point the configuration's image tags at the new versions first.
    Upgrade {
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Load the bundle even if it is unsigned or signed by an untrusted key.
        #[arg(long, requires = "bundle")]
        allow_unsigned: bool,
    },
    /// The daemon: reconcile continuously, serve /metrics and /status on localhost.
    Serve,
    /// Stop and remove every container and network; volumes and manifests stay.
    Down,
    /// Each tenant's components and their health.
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: StatusFormat,
    },
    /// Remove a tenant (`delete TENANT`; its data goes too only under `retention:
    /// Delete`), or one of its knowledge bases or workflows, as kubectl would:
    /// `delete knowledgebase NAME -n TENANT`, `delete workflow NAME -n TENANT`.
    #[command(
        override_usage = "iafactory delete TENANT\n       iafactory delete KIND NAME -n TENANT"
    )]
    Delete {
        /// TENANT, or KIND NAME (KIND: tenant, knowledgebase/kb, workflow/wf).
        #[arg(num_args = 1..=2, required = true, value_name = "WHAT")]
        what: Vec<String>,
        /// The tenant of a knowledge base or workflow (`acme` or its namespace `iaf-acme`).
        #[arg(short = 'n', long = "namespace", alias = "tenant")]
        namespace: Option<String>,
    },
    /// Back a tenant up: a PostgreSQL dump, its manifest and secrets, into DIR/TENANT.
    Backup {
        tenant: String,
        #[arg(long)]
        to: PathBuf,
    },
    /// Bring a tenant back from a backup, on this box or a fresh one.
    Restore {
        tenant: String,
        #[arg(long)]
        from: PathBuf,
    },
    /// Offline bundles and locally built images.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// A tenant's container output.
    Logs {
        tenant: String,
        component: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long)]
        tail: Option<usize>,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Verify an Ollama models directory (manifests/ and blobs/, as `ollama pull` leaves
    /// ~/.ollama/models), then copy it into the tenant's model volume.
    Import { tenant: String, dir: PathBuf },
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Write the images into one bundle file (default: every image the stored tenants
    /// and the configuration use that is on this box).
    Export {
        #[arg(long)]
        to: PathBuf,
        /// Sign the bundle's index with this Ed25519 private key (PKCS#8 PEM, from
        /// `images keygen` or `openssl genpkey -algorithm ed25519`).
        #[arg(long, value_name = "KEYFILE")]
        sign: Option<PathBuf>,
        images: Vec<String>,
    },
    /// Verify a bundle (its signature against [appliance.bundles] trusted_keys, its
    /// checksums, the references each image carries), then load its images.
    #[command(alias = "load")]
    Import {
        bundle: PathBuf,
        /// Load it even if it is unsigned or signed by a key the site does not trust
        /// (a signature that does not match the bundle is refused all the same).
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Make an Ed25519 key pair for signing bundles: the private key goes to KEYFILE
    /// (0600, never overwritten); the public key is printed, for trusted_keys.
    Keygen {
        #[arg(long = "out", value_name = "KEYFILE")]
        out: PathBuf,
    },
    /// Build the platform's own images (static musl, FROM scratch) from a source tree.
    Build {
        /// The IAFactory source tree (default: the current directory).
        #[arg(long, env = "IAF_SOURCE_DIR")]
        source: Option<PathBuf>,
        /// Which images: our api, operator and appliance; the third-party postgres,
        /// prometheus and redis; the llama stand-in for Ollama. Default: all but llama.
        components: Vec<String>,
        #[arg(long)]
        release: bool,
    },
}

/// 20 characters from a 56-letter alphabet without look-alikes (about 116 bits), to be
/// read off a screen and typed.
fn generated_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rand::Rng::random_range(&mut rng, 0..ALPHABET.len())] as char)
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader left (`iafactory status | head`): like any Unix filter, stop quietly.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints what changed before the error, so a failure never hides a change.
fn conclude<T>(
    progress: &Progress,
    report: &Report,
    result: Result<T, iafactory_appliance::app::AppError>,
    done: &str,
) -> anyhow::Result<T> {
    match result {
        Ok(value) => {
            progress.finish(&format!("{done}: {} change(s)", report.actions.len()));
            Ok(value)
        }
        Err(error) => {
            progress.abandon();
            if !report.actions.is_empty() {
                eprintln!(
                    "changed before the failure:\n  {}",
                    report.actions.join("\n  ")
                );
            }
            Err(error.into())
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Init { to, data_dir } => {
            let text = settings::example_config(&data_dir);
            match to {
                Some(path) => {
                    if path.exists() {
                        anyhow::bail!(
                            "{} exists; not overwriting it (remove it first, or write elsewhere with --to)",
                            path.display()
                        );
                    }
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!("wrote {}", path.display());
                }
                None => print!("{text}"),
            }
        }
        Command::Plan { files, output } => {
            let plans = cli::plan::plan_files(&files, &config.platform)?;
            cli::plan::write_plans(&plans, output, std::io::stdout().lock())?;
        }
        Command::Apply { files, no_up } => {
            let app = App::open(config).await?;
            let applied = app.apply(&files)?;
            for a in &applied {
                let state = if a.changed { "stored" } else { "unchanged" };
                if a.kind == "tenant" {
                    println!("tenant/{} {state}", a.name);
                    // What the manifest asks that this appliance does not do, by field.
                    for warning in &a.warnings {
                        eprintln!("warning: tenant {}: {warning}", a.name);
                    }
                } else {
                    println!("{}/{} (tenant {}) {state}", a.kind, a.name, a.tenant);
                }
            }
            // A tenant whose secretRefs nobody set cannot start: stored, and said so,
            // rather than a failure of the `up` below.
            let missing = app.missing_secrets()?;
            for m in &missing {
                eprintln!(
                    "warning: tenant {} needs key {} of secret {}, which is not set: run `{}` with the value on stdin",
                    m.tenant,
                    m.key,
                    m.secret,
                    m.set_command()
                );
            }
            if !missing.is_empty() && !no_up {
                eprintln!(
                    "warning: not converged: set the secret(s) above, then run `iafactory up`"
                );
            } else if no_up {
                if applied.iter().any(|a| a.kind != "tenant") {
                    println!(
                        "not registered yet: `iafactory up` or `iafactory serve` registers them with the tenant's API"
                    );
                }
            } else {
                up(&app).await?;
            }
        }
        Command::Up => up(&App::open(config).await?).await?,
        Command::Secret { command } => {
            // The data directory alone: no Docker Engine needed to keep a secret.
            let store = iafactory_appliance::store::Store::open(&config.appliance.data_dir)?;
            cli::secret::run(
                &store,
                &config.platform,
                command,
                std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            )?;
        }
        Command::Upgrade {
            bundle: path,
            allow_unsigned,
        } => {
            if let Some(path) = path {
                images(
                    config.clone(),
                    ImagesCommand::Import {
                        bundle: path,
                        allow_unsigned,
                    },
                )
                .await?;
            }
            up(&App::open(config).await?).await?;
        }
        Command::Serve => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("IAF_LOG")
                        .unwrap_or_else(|_| "info".into()),
                )
                // Diagnostics go to stderr, as every other command's do (journald
                // takes both).
                .with_writer(std::io::stderr)
                .init();
            iafactory_appliance::serve::serve(App::open(config).await?).await?;
        }
        Command::Down => {
            let app = App::open(config).await?;
            let progress = Progress::start("stopping every tenant (data stays)");
            let step = |line: &str| progress.step(line);
            let (report, result) = app.down(&step).await;
            conclude(&progress, &report, result, "down")?;
        }
        Command::Models {
            command: ModelsCommand::Import { tenant, dir },
        } => {
            let app = App::open(config).await?;
            let progress = Progress::start(&format!(
                "verifying {} and copying it into tenant {tenant}'s model volume",
                dir.display()
            ));
            match app.import_models(&tenant, &dir).await {
                Ok(inventory) => progress.finish(&format!(
                    "imported {} ({} blobs, {} MB) into tenant {tenant}",
                    inventory.models.join(", "),
                    inventory.blobs,
                    inventory.bytes / 1_000_000
                )),
                Err(e) => {
                    progress.abandon();
                    return Err(e.into());
                }
            }
        }
        Command::Admin {
            tenant,
            email,
            password_stdin,
        } => {
            let (password, generated) = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                (line.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                (generated_password(), true)
            };
            let app = App::open(config).await?;
            let admin = app.set_administrator(&tenant, &email, &password).await?;
            println!(
                "tenant/{tenant}: {} is an administrator ({})",
                admin.email, admin.role
            );
            if generated {
                println!("password (shown once, keep it safe): {password}");
            }
        }
        Command::Status { output } => {
            let app = App::open(config).await?;
            let statuses = app.status().await?;
            // Written, not printed: a closed pipe is an error to stop on, not a panic.
            let mut out = std::io::stdout().lock();
            match output {
                StatusFormat::Json => {
                    writeln!(out, "{}", serde_json::to_string_pretty(&statuses)?)?;
                }
                StatusFormat::Table => {
                    writeln!(
                        out,
                        "{:<24} {:<10} {:<10} {:<9} IMAGE",
                        "TENANT", "COMPONENT", "HEALTH", "CURRENT"
                    )?;
                    // The shared stack is no tenant: shown in the table only, so
                    // the JSON stays one entry per tenant.
                    let stack = app.monitoring_status().await?.map(|mut stack| {
                        stack.tenant = format!("({})", stack.tenant);
                        stack
                    });
                    for tenant in statuses.iter().chain(&stack) {
                        for c in &tenant.components {
                            writeln!(
                                out,
                                "{:<24} {:<10} {:<10} {:<9} {}",
                                tenant.tenant,
                                c.component,
                                c.health,
                                if c.up_to_date { "yes" } else { "no" },
                                c.image
                            )?;
                        }
                    }
                    if let Some(line) = last_backups(&statuses) {
                        writeln!(out)?;
                        writeln!(out, "{line}")?;
                    }
                    if statuses.iter().any(|t| !t.registrations.is_empty()) {
                        writeln!(out)?;
                        writeln!(
                            out,
                            "{:<24} {:<30} TENANT API",
                            "TENANT", "KNOWLEDGE BASE / WORKFLOW"
                        )?;
                        for tenant in &statuses {
                            for r in &tenant.registrations {
                                writeln!(
                                    out,
                                    "{:<24} {:<30} {}",
                                    tenant.tenant,
                                    format!("{}/{}", r.kind.word(), r.name),
                                    r.summary()
                                )?;
                            }
                        }
                    }
                }
            }
        }
        Command::Delete { what, namespace } => {
            let target = cli::delete::target(&what, namespace.as_deref())?;
            let app = App::open(config).await?;
            match target {
                cli::delete::Target::Tenant(tenant) => delete_tenant(&app, &tenant).await?,
                cli::delete::Target::Registration { tenant, kind, name } => {
                    let stored = app.delete_registration(&tenant, kind, &name)?;
                    println!("{}/{name} (tenant {tenant}) deleted", kind.word());
                    report_registrations(&app.register_tenant(&stored).await?)?;
                }
            }
        }
        Command::Images { command } => images(config, command).await?,
        Command::Backup { tenant, to } => {
            let app = App::open(config).await?;
            let progress = Progress::start(&format!("backing up tenant {tenant}"));
            let step = |line: &str| progress.step(line);
            match backup::backup(&app, &tenant, &to, &step).await {
                Ok(dir) => progress.finish(&format!("backed up to {}", dir.display())),
                Err(e) => {
                    progress.abandon();
                    return Err(e.into());
                }
            }
        }
        Command::Restore { tenant, from } => {
            let app = App::open(config).await?;
            let progress = Progress::start(&format!("restoring tenant {tenant}"));
            let step = |line: &str| progress.step(line);
            match backup::restore(&app, &tenant, &from, &step).await {
                Ok(report) => progress.finish(&format!(
                    "restored tenant {tenant}: {} change(s)",
                    report.actions.len()
                )),
                Err(e) => {
                    progress.abandon();
                    return Err(e.into());
                }
            }
        }
        Command::Logs {
            tenant,
            component,
            follow,
            tail,
        } => {
            let app = App::open(config).await?;
            // `logs monitoring [prometheus|grafana]`: the shared stack, unless a
            // tenant took that name.
            let shared = tenant == iafactory_appliance::monitoring::STACK
                && app.store.tenant(&tenant)?.is_none();
            if !shared {
                app.require_tenant(&tenant)?;
            }
            let mut labels =
                iafactory_appliance::engine::desired::instance_labels(&app.render_settings());
            if shared {
                labels.insert(
                    iafactory_appliance::engine::desired::LABEL_STACK.into(),
                    tenant.clone(),
                );
            } else {
                labels.insert(iafactory_crds::plan::LABEL_TENANT.into(), tenant.clone());
            }
            if let Some(component) = &component {
                labels.insert(
                    iafactory_crds::plan::LABEL_COMPONENT.into(),
                    component.clone(),
                );
            }
            let containers = app.engine.containers(&labels).await?;
            if containers.is_empty() {
                anyhow::bail!(
                    "tenant {tenant:?} has no {}container running; `iafactory up` starts it",
                    component.map(|c| format!("{c} ")).unwrap_or_default()
                );
            }
            let streams = containers.iter().map(|c| {
                let prefix = format!("{}: ", c.component);
                app.engine
                    .logs(
                        &Target::component(&tenant, &c.component),
                        &c.name,
                        follow,
                        tail,
                    )
                    .map(move |line| line.map(|l| format!("{prefix}{l}")))
                    .boxed()
            });
            let mut merged = futures::stream::select_all(streams);
            let mut out = std::io::stdout();
            while let Some(line) = merged.next().await {
                out.write_all(line?.as_bytes())?;
            }
        }
    }
    Ok(())
}

/// Converges every tenant, then registers their KnowledgeBases and Workflows.
async fn up(app: &App) -> anyhow::Result<()> {
    let progress = Progress::start("converging every tenant");
    let step = |line: &str| progress.step(line);
    let (report, result) = app.up(&step).await;
    conclude(&progress, &report, result, "up")?;
    report_registrations(&app.register_all().await?)
}

/// `iafactory status`'s backup lines: each tenant's newest scheduled backup, for the
/// tenants that have one.
fn last_backups(statuses: &[iafactory_appliance::app::TenantStatus]) -> Option<String> {
    let lines: Vec<String> = statuses
        .iter()
        .filter_map(|t| {
            t.last_backup.map(|time| {
                format!(
                    "{:<24} {}",
                    t.tenant,
                    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
        })
        .collect();
    (!lines.is_empty()).then(|| format!("{:<24} LAST BACKUP\n{}", "TENANT", lines.join("\n")))
}

/// One line per KnowledgeBase or Workflow; a tenant API that is not healthy yet is no
/// failure (the next reconcile registers them), a refusal is.
fn report_registrations(
    registrations: &[iafactory_appliance::registrations::Registration],
) -> anyhow::Result<()> {
    use iafactory_appliance::registrations::Outcome;
    for registration in registrations {
        println!("{registration}");
    }
    let rejected = registrations
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Rejected { .. }))
        .count();
    if rejected > 0 {
        anyhow::bail!(
            "the tenant's API rejected {rejected} object(s), see above; fix their manifests and apply them again"
        );
    }
    Ok(())
}

async fn delete_tenant(app: &App, tenant: &str) -> anyhow::Result<()> {
    let progress = Progress::start(&format!("deleting tenant {tenant}"));
    let step = |line: &str| progress.step(line);
    let (report, result) = app.delete(tenant, &step).await;
    let retention = conclude(&progress, &report, result, "deleted")?;
    println!(
        "retention {retention:?}: {}",
        match retention {
            iafactory_crds::tenant::Retention::Delete =>
                "its volumes, secrets, knowledge bases and workflows were deleted",
            iafactory_crds::tenant::Retention::Retain =>
                "its volumes, secrets, knowledge bases and workflows were kept; re-apply the tenant to get it back",
        }
    );
    Ok(())
}

async fn images(config: Config, command: ImagesCommand) -> anyhow::Result<()> {
    match command {
        ImagesCommand::Export { to, sign, images } => {
            // Read the key first: a wrong path fails before minutes of exporting.
            let key = sign.as_deref().map(bundle::read_signing_key).transpose()?;
            let app = App::open(config).await?;
            let images = if images.is_empty() {
                app.wanted_images().await?
            } else {
                images
            };
            let progress = Progress::start(&format!(
                "exporting {} image(s) to {}",
                images.len(),
                to.display()
            ));
            let step = |line: &str| progress.step(line);
            match bundle::export(&app.engine, &images, &to, key.as_ref(), &step).await {
                Ok(manifest) => progress.finish(&format!(
                    "wrote {} with {} image(s){}; carry it in and run `iafactory images import {}`",
                    to.display(),
                    manifest.images.len(),
                    match &key {
                        Some(key) => format!(
                            ", signed by {}",
                            bundle::public_key_text(&key.verifying_key())
                        ),
                        None => " (unsigned)".to_owned(),
                    },
                    to.file_name().unwrap_or_default().to_string_lossy()
                )),
                Err(e) => {
                    progress.abandon();
                    return Err(e.into());
                }
            }
        }
        ImagesCommand::Import {
            bundle: path,
            allow_unsigned,
        } => {
            let trust =
                bundle::Trust::from_texts(&config.appliance.bundles.trusted_keys, allow_unsigned)?;
            let path = if path.exists() || path.components().count() > 1 {
                path
            } else {
                config.appliance.bundle_dir.join(path)
            };
            let app = App::open(config).await?;
            let progress = Progress::start(&format!("importing {}", path.display()));
            let step = |line: &str| progress.step(line);
            match bundle::import(&app.engine, &path, &trust, &step).await {
                Ok((manifest, _)) => progress.finish(&format!(
                    "loaded {} image(s); `iafactory up` uses them",
                    manifest.images.len()
                )),
                Err(e) => {
                    progress.abandon();
                    return Err(e.into());
                }
            }
        }
        ImagesCommand::Keygen { out } => {
            let public = bundle::generate_signing_key(&out)?;
            println!(
                "wrote the private key to {} (keep it off the sites); trust its bundles with:\n\n[appliance.bundles]\ntrusted_keys = [\"{}\"]",
                out.display(),
                bundle::public_key_text(&public)
            );
        }
        ImagesCommand::Build {
            source,
            components,
            release,
        } => {
            let source = source.unwrap_or_else(|| PathBuf::from("."));
            let script = source.join("images/build.sh");
            if !script.exists() {
                anyhow::bail!(
                    "{} is missing: `images build` compiles the images from the IAFactory source tree; run it there or pass --source DIR (a site with no source tree imports a bundle instead)",
                    script.display()
                );
            }
            let progress = Progress::start("building the platform's images");
            let mut command = tokio::process::Command::new(&script);
            if release {
                command.arg("--release");
            }
            let status = command.args(&components).status().await?;
            if !status.success() {
                progress.abandon();
                anyhow::bail!(
                    "{} failed ({status}); its output above says why",
                    script.display()
                );
            }
            progress.finish("images built");
        }
    }
    Ok(())
}
