//! Configuration: built-in defaults, then an optional TOML file, then `IAF_*` variables.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

pub use crate::client_address::TrustedProxies;

/// A JWT key shorter than this is refused: HS256 is only as strong as its key.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    #[error(
        "IAF_JWT_SECRET is not set: the API refuses to start without a signing key. Set it to at least {MIN_JWT_SECRET_BYTES} random bytes, for example: IAF_JWT_SECRET=$(openssl rand -hex 32)"
    )]
    MissingJwtSecret,
    #[error(
        "IAF_JWT_SECRET is {0} bytes long: the API refuses a key shorter than {MIN_JWT_SECRET_BYTES} bytes. Use, for example: IAF_JWT_SECRET=$(openssl rand -hex 32)"
    )]
    WeakJwtSecret(usize),
    #[error(
        "neither IAF_DATABASE_APP_URL nor IAF_DATABASE_URL is set: serve as the login role iafactory_app with IAF_DATABASE_APP_URL=postgres://iafactory_app:PASSWORD@host:5432/db after `iafactory-api migrate` ran with the owner's IAF_DATABASE_URL (or, for a single-process setup, give serve IAF_DATABASE_URL alone and it migrates at start)"
    )]
    MissingDatabaseUrl,
    #[error(
        "IAF_DATABASE_URL and IAF_DATABASE_APP_URL are both set: a serving API given IAF_DATABASE_APP_URL must not hold the owner's credentials. Run `iafactory-api migrate` with IAF_DATABASE_URL first, then serve with IAF_DATABASE_APP_URL alone"
    )]
    OwnerAndAppUrls,
    #[error(
        "IAF_DATABASE_URL is not set: `iafactory-api migrate` runs as the database owner (postgres://owner:password@host:5432/db)"
    )]
    MissingOwnerUrl,
    #[error(
        "IAF_DATABASE_APP_PASSWORD is not set: requests are served by the login role iafactory_app, never by the owner in IAF_DATABASE_URL. Set it to random bytes, for example: IAF_DATABASE_APP_PASSWORD=$(openssl rand -hex 24)"
    )]
    MissingDatabaseAppPassword,
    #[error("IAF_TIMEZONE {0:?} is not a known IANA timezone (for example Africa/Algiers)")]
    BadTimezone(String),
    #[error("IAF_SOVEREIGNTY {0:?} is neither \"strict\" nor \"open\"")]
    BadSovereignty(String),
    #[error(
        "IAF_TRUST_FORWARDED_FOR is no longer read: list the proxies in front of the API instead, as CIDRs, in IAF_TRUSTED_PROXIES (for example IAF_TRUSTED_PROXIES=172.16.0.0/12)"
    )]
    TrustForwardedForRemoved,
    #[error(
        "IAF_INTERNAL_LISTEN is the same address as IAF_LISTEN ({0}): the internal endpoints (/internal, /metrics) need a listener of their own, never reached through the gateway or the Ingress"
    )]
    SameListeners(SocketAddr),
    #[error("IAF_WORKFLOW_CONCURRENCY must be at least 1")]
    ZeroWorkflowConcurrency,
    #[error("IAF_VECTOR_STORE {0:?} is neither \"pgvector\" nor \"qdrant\"")]
    BadVectorStore(String),
    #[error(
        "IAF_VECTOR_STORE is \"qdrant\" but IAF_QDRANT_URL is not set: point it at Qdrant's gRPC port (http://qdrant:6334)"
    )]
    MissingQdrantUrl,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// The database owner: migrations, and giving the serving role its password. Only
    /// for a single-process setup (development, tests), where `serve` migrates at
    /// start; the drivers give it to the `migrate` step alone, and serve with
    /// `database_app_url`.
    #[serde(default)]
    pub database_url: String,
    /// The serving login role's own URL (`postgres://iafactory_app:...`): `serve` then
    /// never migrates, refuses a schema that lacks a migration it embeds, and never
    /// holds the owner's credentials. Exclusive with `database_url`. Never printed.
    #[serde(default)]
    pub database_app_url: Secret,
    /// The password of the serving login role (`db::APP_ROLE`): the request pool logs
    /// in as that role, on the host and database of `database_url`. Never printed.
    #[serde(default)]
    pub database_app_password: Secret,
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Never printed: see the Debug implementation of [`Secret`].
    #[serde(default)]
    pub jwt_secret: Secret,
    pub jwt_ttl_seconds: i64,
    /// The public listener: `/api`, `/v1`, `/ws`, the console, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// The internal listener: `/internal/*` (the operator token) and `/metrics`, for the
    /// operator, the appliance and monitoring only; never routed by a gateway or an
    /// Ingress. `/healthz` and `/readyz` answer there too.
    pub internal_listen: SocketAddr,
    /// Failed operator-token attempts allowed per client address and minute on
    /// `/internal/*`; past them, every attempt from that address answers 429 until
    /// the budget refills (a correct token included, so guessing gains nothing).
    pub operator_token_failures_per_minute: u32,
    /// The largest JSON body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// The largest uploaded document, in bytes.
    pub max_upload_bytes: usize,
    #[serde(deserialize_with = "comma_list")]
    pub cors_origins: Vec<String>,
    pub rate_limit: RateLimitConfig,
    pub timezone: String,
    /// Protects `/internal/*`, used by the operator and the appliance. Empty disables
    /// the internal API.
    #[serde(default)]
    pub operator_token: Secret,
    /// Lets anyone create a tenant with `POST /api/auth/register`. An operator-managed
    /// deployment bootstraps its tenant through `/internal` and may turn this off.
    pub allow_registration: bool,
    /// The proxies in front of the API (the appliance's gateway, the ingress
    /// controller), as CIDRs: a request from one of them is the client's named by the
    /// rightmost `X-Forwarded-For` hop that is not one of them. Empty: the peer.
    #[serde(default)]
    pub trusted_proxies: TrustedProxies,
    /// Replaced by `trusted_proxies`; kept only to refuse it by name (its leftmost-hop
    /// reading let every client choose its own rate-limit bucket).
    #[serde(default, skip_serializing)]
    pub trust_forwarded_for: Option<serde::de::IgnoredAny>,
    /// Connecting to Redis and each rate-limit check there: past it, the check fails
    /// open (counted in `rate_limiter_errors`) rather than stall the request.
    pub redis_timeout_ms: u64,
    /// How long a verified API key is trusted without a database lookup.
    pub api_key_cache_seconds: u64,
    pub database_max_connections: u32,
    /// A sentence-transformers model directory, loaded in the process: the offline
    /// default embedder (`provider: local`).
    #[serde(default)]
    pub embedding_model_dir: Option<String>,
    /// The name knowledge bases record for the local model.
    pub embedding_model: String,
    /// The tenant's OpenAI-compatible server (its Ollama): generation, and embeddings
    /// for `provider: ollama`.
    #[serde(default)]
    pub llm_base_url: Option<String>,
    #[serde(default)]
    pub llm_model: Option<String>,
    pub llm_timeout_seconds: u64,
    /// External providers under open sovereignty, as JSON:
    /// `[{"name","kind","base_url","api_key_env"}]` (written by the operator).
    #[serde(default)]
    pub llm_providers: Option<String>,
    /// A `/rerank` endpoint (Cohere/Jina-compatible) that reorders search results.
    #[serde(default)]
    pub reranker_url: Option<String>,
    pub reranker_model: String,
    /// Concurrent ingestion workers.
    pub ingestion_workers: usize,
    /// How long a worker holds a job between heartbeats; a crashed worker's job is
    /// picked up again once it lapses.
    pub ingestion_lease_seconds: u64,
    /// The program that parses PDF, DOCX and HTML documents in a bounded child
    /// process (`PROGRAM parse`): the running binary when unset. Tests that run the
    /// API inside their own binary point it at the built `iafactory-api`.
    #[serde(default)]
    pub parser_executable: Option<String>,
    /// Memory a document's parser may map beyond what it has at start (RLIMIT_AS).
    pub parser_memory_mib: u64,
    /// Processor time a document's parser may use (RLIMIT_CPU).
    pub parser_cpu_seconds: u64,
    /// Wall-clock time a document's parser may take before it is killed.
    pub parser_timeout_seconds: u64,
    /// `strict` (the default) or `open`: whether workflows may call the external
    /// providers of `llm_providers` (set by the operator from the Tenant).
    pub sovereignty: String,
    /// Where `url` sources of knowledge bases may be fetched besides the internet
    /// (comma-separated CIDRs; the private ranges by default); under strict
    /// sovereignty, the only addresses fetched. Link-local never is.
    pub source_networks: crate::sources::SourceNetworks,
    /// How long fetching one `url` source may take, redirects included.
    pub source_fetch_timeout_seconds: u64,
    /// A `url` source fetched successfully less than this long ago is not fetched
    /// again when its knowledge base is registered again (the drivers re-register
    /// every minute or so).
    pub source_refetch_seconds: u64,
    /// Agent steps running at once in this process, across executions.
    pub workflow_concurrency: usize,
    /// Retries of an agent's call on a transient provider error (5xx, 429, refused).
    pub workflow_agent_retries: usize,
    /// An agent's time limit per attempt, when its spec sets none.
    pub workflow_agent_timeout_seconds: u64,
    /// The most an agent may write, in tokens.
    pub workflow_max_tokens: u32,
    /// How often the cron scheduler looks for due workflows (0 turns it off).
    pub workflow_scheduler_tick_seconds: u64,
    /// Where vectors live: `pgvector` (the default, inside PostgreSQL) or `qdrant`.
    pub vector_store: String,
    /// Qdrant's gRPC endpoint (`http://qdrant:6334`), when `vector_store` is `qdrant`.
    #[serde(default)]
    pub qdrant_url: Option<String>,
    #[serde(default)]
    pub qdrant_api_key: Secret,
    /// Per Qdrant call, and for connecting.
    pub qdrant_timeout_seconds: u64,
}

/// What `iafactory-api migrate` reads (the same file and `IAF_*` variables as
/// [`Config`], nothing else): the owner's URL, and the serving role's password to give it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MigrateConfig {
    #[serde(default)]
    pub database_url: String,
    #[serde(default)]
    pub database_app_password: Secret,
}

impl MigrateConfig {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let config: MigrateConfig = Config::figment(file)
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        if config.database_url.is_empty() {
            return Err(ConfigError::MissingOwnerUrl);
        }
        if config.database_app_password.expose().is_empty() {
            return Err(ConfigError::MissingDatabaseAppPassword);
        }
        Ok(config)
    }
}

/// Three kinds of bucket, so that no anonymous client can lock out signed-in people:
/// requests that carry no valid credential (sign-in, sign-up, probing) count per client
/// address; authenticated ones count per user or per key, under a per-address ceiling
/// high enough for a whole office behind one NAT.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RateLimitConfig {
    /// Unauthenticated requests per client address.
    pub per_ip_per_minute: u32,
    pub per_ip_per_hour: u32,
    /// Authenticated requests per client address: a backstop, not the working limit.
    pub per_ip_ceiling_per_minute: u32,
    /// Requests per signed-in user (a JWT).
    pub per_user_per_minute: u32,
    /// For API keys created without their own limit.
    pub default_key_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_ip_per_minute: 60,
            per_ip_per_hour: 1000,
            per_ip_ceiling_per_minute: 6000,
            per_user_per_minute: 600,
            default_key_per_minute: 120,
        }
    }
}

/// A value kept out of logs and Debug output.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("<unset>")
        } else {
            f.write_str("<redacted>")
        }
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn comma_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(list) => list,
        ListOrString::String(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            database_app_url: Secret::default(),
            database_app_password: Secret::default(),
            redis_url: None,
            jwt_secret: Secret::default(),
            jwt_ttl_seconds: 3600,
            listen: "0.0.0.0:8180".parse().expect("a literal address"),
            internal_listen: "0.0.0.0:9180".parse().expect("a literal address"),
            operator_token_failures_per_minute: 10,
            body_limit_bytes: 1024 * 1024,
            max_upload_bytes: 20 * 1024 * 1024,
            cors_origins: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            timezone: "Africa/Algiers".into(),
            operator_token: Secret::default(),
            allow_registration: true,
            trusted_proxies: TrustedProxies::default(),
            trust_forwarded_for: None,
            redis_timeout_ms: 300,
            api_key_cache_seconds: 5,
            database_max_connections: 32,
            embedding_model_dir: None,
            embedding_model: "all-MiniLM-L6-v2".into(),
            llm_base_url: None,
            llm_model: None,
            llm_timeout_seconds: 120,
            llm_providers: None,
            reranker_url: None,
            reranker_model: "bge-reranker-v2-m3".into(),
            ingestion_workers: 2,
            ingestion_lease_seconds: 120,
            parser_executable: None,
            parser_memory_mib: 1024,
            parser_cpu_seconds: 60,
            parser_timeout_seconds: 120,
            sovereignty: "strict".into(),
            source_networks: crate::sources::SourceNetworks::default(),
            source_fetch_timeout_seconds: 30,
            source_refetch_seconds: 300,
            workflow_concurrency: 16,
            workflow_agent_retries: 3,
            workflow_agent_timeout_seconds: 120,
            workflow_max_tokens: 1024,
            workflow_scheduler_tick_seconds: 15,
            vector_store: "pgvector".into(),
            qdrant_url: None,
            qdrant_api_key: Secret::default(),
            qdrant_timeout_seconds: 10,
        }
    }
}

impl Config {
    /// Defaults, then `file` (if any), then the `IAF_*` environment
    /// (`IAF_RATE_LIMIT__PER_IP_PER_MINUTE=120` for nested keys).
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment.merge(Env::prefixed("IAF_").split("__"))
    }

    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.check()?;
        Ok(config)
    }

    /// What makes a configuration unusable, said before anything starts.
    pub fn check(&self) -> Result<(), ConfigError> {
        // Port 0 (tests) binds a fresh port each time: not the same listener.
        if self.internal_listen == self.listen && self.listen.port() != 0 {
            return Err(ConfigError::SameListeners(self.listen));
        }
        match self.jwt_secret.expose().len() {
            0 => return Err(ConfigError::MissingJwtSecret),
            n if n < MIN_JWT_SECRET_BYTES => return Err(ConfigError::WeakJwtSecret(n)),
            _ => {}
        }
        match (
            self.database_url.is_empty(),
            self.database_app_url.expose().is_empty(),
        ) {
            (true, true) => return Err(ConfigError::MissingDatabaseUrl),
            (false, false) => return Err(ConfigError::OwnerAndAppUrls),
            // Serving as the app role, from its own URL: no password of its own needed.
            (true, false) => {}
            (false, true) if self.database_app_password.expose().is_empty() => {
                return Err(ConfigError::MissingDatabaseAppPassword);
            }
            (false, true) => {}
        }
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(ConfigError::BadTimezone(self.timezone.clone()));
        }
        if !matches!(self.sovereignty.as_str(), "strict" | "open") {
            return Err(ConfigError::BadSovereignty(self.sovereignty.clone()));
        }
        if self.trust_forwarded_for.is_some() {
            return Err(ConfigError::TrustForwardedForRemoved);
        }
        if self.workflow_concurrency == 0 {
            return Err(ConfigError::ZeroWorkflowConcurrency);
        }
        match self.vector_store.as_str() {
            "pgvector" => {}
            "qdrant" if self.qdrant_url.as_deref().is_none_or(str::is_empty) => {
                return Err(ConfigError::MissingQdrantUrl);
            }
            "qdrant" => {}
            other => return Err(ConfigError::BadVectorStore(other.to_owned())),
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    fn with_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            // Every test but the one about it gives the serving role a password.
            jail.set_env("IAF_DATABASE_APP_PASSWORD", "app-password");
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            result = Some(Config::load(None));
            Ok(())
        });
        result.unwrap()
    }

    const GOOD_SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn environment_overrides_defaults() {
        let config = with_env(&[
            ("IAF_JWT_SECRET", GOOD_SECRET),
            ("IAF_DATABASE_URL", "postgres://x@y/z"),
            ("IAF_LISTEN", "127.0.0.1:9000"),
            ("IAF_CORS_ORIGINS", "https://a.dz, https://b.dz"),
            ("IAF_RATE_LIMIT__PER_IP_PER_MINUTE", "5"),
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.internal_listen.port(), 9180);
        assert_eq!(config.cors_origins, ["https://a.dz", "https://b.dz"]);
        assert_eq!(config.rate_limit.per_ip_per_minute, 5);
        assert_eq!(config.rate_limit.per_ip_per_hour, 1000);
        assert_eq!(config.timezone, "Africa/Algiers");
        assert_eq!(format!("{:?}", config.jwt_secret), "<redacted>");
    }

    #[test]
    fn the_internal_listener_needs_an_address_of_its_own() {
        let config = Config {
            listen: "0.0.0.0:8180".parse().unwrap(),
            internal_listen: "0.0.0.0:8180".parse().unwrap(),
            ..Config::default()
        };
        let refused = config.check().unwrap_err();
        assert!(
            matches!(refused, ConfigError::SameListeners(_)),
            "{refused}"
        );
    }

    #[test]
    fn a_missing_or_weak_jwt_secret_refuses_to_start() {
        let missing = with_env(&[("IAF_DATABASE_URL", "postgres://x@y/z")]).unwrap_err();
        assert!(
            matches!(missing, ConfigError::MissingJwtSecret),
            "{missing}"
        );
        let weak = with_env(&[
            ("IAF_DATABASE_URL", "postgres://x@y/z"),
            ("IAF_JWT_SECRET", "short"),
        ])
        .unwrap_err();
        assert!(matches!(weak, ConfigError::WeakJwtSecret(5)), "{weak}");
        assert!(weak.to_string().contains("openssl rand"), "{weak}");
    }

    #[test]
    fn the_serving_role_needs_its_password_and_it_is_never_printed() {
        let base = [
            ("IAF_JWT_SECRET", GOOD_SECRET),
            ("IAF_DATABASE_URL", "postgres://x@y/z"),
        ];
        let missing = with_env(&[base[0], base[1], ("IAF_DATABASE_APP_PASSWORD", "")]).unwrap_err();
        assert!(
            matches!(missing, ConfigError::MissingDatabaseAppPassword),
            "{missing}"
        );
        let set = with_env(&[base[0], base[1], ("IAF_DATABASE_APP_PASSWORD", "s3rving")]).unwrap();
        assert_eq!(set.database_app_password.expose(), "s3rving");
        assert!(!format!("{set:?}").contains("s3rving"));
    }

    #[test]
    fn serving_from_the_app_url_needs_no_owner_and_refuses_both() {
        let app_url = "postgres://iafactory_app:s3rving@db/iafactory";
        let served = with_env(&[
            ("IAF_JWT_SECRET", GOOD_SECRET),
            ("IAF_DATABASE_APP_URL", app_url),
            ("IAF_DATABASE_APP_PASSWORD", ""),
        ])
        .unwrap();
        assert_eq!(served.database_app_url.expose(), app_url);
        assert!(served.database_url.is_empty());
        assert!(!format!("{served:?}").contains("s3rving"));
        let both = with_env(&[
            ("IAF_JWT_SECRET", GOOD_SECRET),
            ("IAF_DATABASE_APP_URL", app_url),
            ("IAF_DATABASE_URL", "postgres://owner:x@db/iafactory"),
        ])
        .unwrap_err();
        assert!(matches!(both, ConfigError::OwnerAndAppUrls), "{both}");
        let neither = with_env(&[("IAF_JWT_SECRET", GOOD_SECRET)]).unwrap_err();
        assert!(
            matches!(neither, ConfigError::MissingDatabaseUrl),
            "{neither}"
        );
    }

    #[test]
    fn migrate_reads_only_the_owner_url_and_the_app_password() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            // No JWT key: migrating needs none.
            jail.set_env("IAF_DATABASE_APP_PASSWORD", "app-password");
            let missing = MigrateConfig::load(None).unwrap_err();
            assert!(matches!(missing, ConfigError::MissingOwnerUrl), "{missing}");
            jail.set_env("IAF_DATABASE_URL", "postgres://owner:x@db/iafactory");
            let config = MigrateConfig::load(None).unwrap();
            assert_eq!(config.database_app_password.expose(), "app-password");
            Ok(())
        });
    }

    #[test]
    fn qdrant_needs_its_url_and_keeps_its_key_secret() {
        let base = [
            ("IAF_JWT_SECRET", GOOD_SECRET),
            ("IAF_DATABASE_URL", "postgres://x@y/z"),
        ];
        let default = with_env(&base).unwrap();
        assert_eq!(default.vector_store, "pgvector");
        let missing = with_env(&[base[0], base[1], ("IAF_VECTOR_STORE", "qdrant")]).unwrap_err();
        assert!(
            matches!(missing, ConfigError::MissingQdrantUrl),
            "{missing}"
        );
        let unknown = with_env(&[base[0], base[1], ("IAF_VECTOR_STORE", "milvus")]).unwrap_err();
        assert!(
            matches!(unknown, ConfigError::BadVectorStore(_)),
            "{unknown}"
        );
        let qdrant = with_env(&[
            base[0],
            base[1],
            ("IAF_VECTOR_STORE", "qdrant"),
            ("IAF_QDRANT_URL", "http://qdrant:6334"),
            ("IAF_QDRANT_API_KEY", "k3y"),
        ])
        .unwrap();
        assert_eq!(qdrant.qdrant_api_key.expose(), "k3y");
        assert!(!format!("{qdrant:?}").contains("k3y"));
    }

    #[test]
    fn trusted_proxies_are_cidrs_and_the_old_flag_is_refused_by_name() {
        let base = [
            ("IAF_JWT_SECRET", GOOD_SECRET),
            ("IAF_DATABASE_URL", "postgres://x@y/z"),
        ];
        assert!(with_env(&base).unwrap().trusted_proxies.is_empty());
        let listed = with_env(&[
            base[0],
            base[1],
            ("IAF_TRUSTED_PROXIES", "172.18.0.1, 10.0.0.0/8"),
        ])
        .unwrap();
        assert!(listed.trusted_proxies.contains("10.2.3.4".parse().unwrap()));
        assert!(
            !listed
                .trusted_proxies
                .contains("172.18.0.2".parse().unwrap())
        );
        let bad = with_env(&[base[0], base[1], ("IAF_TRUSTED_PROXIES", "gateway")]).unwrap_err();
        assert!(bad.to_string().contains("\"gateway\""), "{bad}");
        let old = with_env(&[base[0], base[1], ("IAF_TRUST_FORWARDED_FOR", "true")]).unwrap_err();
        assert!(
            matches!(old, ConfigError::TrustForwardedForRemoved),
            "{old}"
        );
    }

    #[test]
    fn a_file_sits_between_defaults_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "api.toml",
                "timezone = \"Europe/Paris\"\nbody_limit_bytes = 2048\n",
            )?;
            jail.set_env("IAF_JWT_SECRET", GOOD_SECRET);
            jail.set_env("IAF_DATABASE_URL", "postgres://x@y/z");
            jail.set_env("IAF_DATABASE_APP_PASSWORD", "app-password");
            jail.set_env("IAF_BODY_LIMIT_BYTES", "4096");
            let config = Config::load(Some(Path::new("api.toml"))).unwrap();
            assert_eq!(config.timezone, "Europe/Paris");
            assert_eq!(config.body_limit_bytes, 4096);
            Ok(())
        });
    }
}
