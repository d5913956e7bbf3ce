//! A registered knowledge base's `spec.sources`, ingested: `inline` text as it is,
//! `configMap` content as the driver sent it (the operator reads the ConfigMaps, the
//! appliance files in its data directory), and `url` fetched here.
//!
//! Each source is keyed by its stable id (`iafactory_crds::knowledgebase::source_ids`)
//! and the sha256 of its content. A registration whose sources did not change writes
//! nothing; a changed source has its documents replaced; a source gone from the spec
//! has its documents deleted. A source that cannot be read keeps the documents it gave
//! before and reports why, under its id.
//!
//! Fetching a `url` is a request the tenant's users cause the API to make, so it is
//! fenced: every address the host resolves to is checked, the connection is pinned to
//! the checked address (a second DNS answer cannot swap it), and each redirect is
//! checked again, at most [`MAX_REDIRECTS`] of them. Link-local addresses (169.254.0.0/16,
//! the cloud metadata service, and fe80::/10) are never fetched; loopback and private
//! addresses only when `IAF_SOURCE_NETWORKS` lists them; under `strict` sovereignty only
//! what it lists.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use iafactory_crds::knowledgebase::{KnowledgeBaseSpec, Source, source_ids};
use iafactory_crds::tenant_api::{ConfigMapContent, SourceRecord};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::tenant_tx;
use crate::rag::parse::Format;
use crate::rag::store::Scope;
use crate::state::AppState;

/// Redirects followed when fetching a `url` source; one more is an error.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{url} is refused: {reason}")]
    Refused { url: String, reason: String },
    #[error("{url}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects { url: String },
    #[error("{url}: over the upload limit of {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error(
        "{url}: {content_type:?} is not a supported document (txt, md, html, pdf, docx or csv, by extension or Content-Type)"
    )]
    Unsupported { url: String, content_type: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: not fetched within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
    #[error("the database failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("deleting a replaced document's vectors: {0}")]
    Store(#[from] crate::rag::store::StoreError),
}

/// The networks `url` sources may be fetched from besides the internet
/// (`IAF_SOURCE_NETWORKS`, comma-separated CIDRs): by default the private ranges
/// (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7), where in-cluster services
/// and a site's own servers live. Under strict sovereignty, the only ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceNetworks(Vec<IpNet>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("IAF_SOURCE_NETWORKS: {entry:?} is neither an address nor a CIDR")]
pub struct InvalidNetwork {
    pub entry: String,
}

impl Default for SourceNetworks {
    fn default() -> Self {
        Self::parse("10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7")
            .expect("literal networks")
    }
}

impl SourceNetworks {
    pub fn parse(list: &str) -> Result<Self, InvalidNetwork> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| InvalidNetwork {
                        entry: entry.to_owned(),
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(&address))
    }
}

impl Serialize for SourceNetworks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for SourceNetworks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(&crate::client_address::comma_separated(deserializer)?)
            .map_err(serde::de::Error::custom)
    }
}

/// What may be fetched, and how.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    pub strict: bool,
    pub networks: SourceNetworks,
    pub timeout: Duration,
    pub max_bytes: usize,
}

impl FetchPolicy {
    pub fn from_config(config: &crate::config::Config) -> Self {
        FetchPolicy {
            strict: config.sovereignty == "strict",
            networks: config.source_networks.clone(),
            timeout: Duration::from_secs(config.source_fetch_timeout_seconds.max(1)),
            max_bytes: config.max_upload_bytes,
        }
    }

    /// Why `address` may not be fetched, or None when it may.
    pub fn refusal(&self, address: IpAddr) -> Option<String> {
        let address = address.to_canonical();
        let link_local = match address {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        if link_local {
            return Some(format!(
                "{address} is link-local (169.254.0.0/16, fe80::/10: the cloud metadata service among them), never fetched"
            ));
        }
        let unicast = match address {
            IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
            IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
        };
        if !unicast {
            return Some(format!("{address} is not a unicast address"));
        }
        if self.networks.contains(address) {
            return None;
        }
        if address.is_loopback() {
            return Some(format!(
                "{address} is the API's own host, fetched only when IAF_SOURCE_NETWORKS lists it"
            ));
        }
        if self.strict {
            return Some(format!(
                "{address} is outside the tenant's networks (IAF_SOURCE_NETWORKS): under strict sovereignty nothing else is fetched"
            ));
        }
        let private = match address {
            IpAddr::V4(v4) => {
                v4.is_private() || v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64
            }
            IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
        };
        if private {
            return Some(format!(
                "{address} is a private address outside the site's networks (IAF_SOURCE_NETWORKS)"
            ));
        }
        None
    }
}

/// A document read from a source.
#[derive(Debug, Clone)]
pub struct SourceDocument {
    pub title: String,
    pub filename: String,
    pub format: Format,
    pub bytes: Vec<u8>,
}

/// Fetches `url` under `policy`: each hop's addresses checked, the connection pinned to
/// the checked address, redirects followed by hand.
pub async fn fetch(policy: &FetchPolicy, url: &str) -> Result<SourceDocument, SourceError> {
    let seconds = policy.timeout.as_secs();
    tokio::time::timeout(policy.timeout, fetch_hops(policy, url))
        .await
        .unwrap_or_else(|_| {
            Err(SourceError::Timeout {
                url: url.to_owned(),
                seconds,
            })
        })
}

async fn fetch_hops(policy: &FetchPolicy, original: &str) -> Result<SourceDocument, SourceError> {
    let failed = |message: String| SourceError::Fetch {
        url: original.to_owned(),
        message,
    };
    let mut url = reqwest::Url::parse(original).map_err(|e| failed(e.to_string()))?;
    for _ in 0..=MAX_REDIRECTS {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SourceError::Refused {
                url: url.to_string(),
                reason: format!(
                    "the scheme {:?} is not fetched (http or https)",
                    url.scheme()
                ),
            });
        }
        let port = url
            .port_or_known_default()
            .ok_or_else(|| failed("no port".into()))?;
        let host = url
            .host_str()
            .ok_or_else(|| failed("no host".into()))?
            .to_owned();
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let (domain, addresses): (Option<String>, Vec<IpAddr>) = match literal {
            Some(address) => (None, vec![address]),
            None => {
                let resolved = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|e| failed(format!("resolving {host}: {e}")))?
                    .map(|socket| socket.ip())
                    .collect::<Vec<_>>();
                (Some(host.clone()), resolved)
            }
        };
        // Every address must pass: a name that also resolves to a refused address is
        // refused, whichever one a connection would pick.
        if addresses.is_empty() {
            return Err(failed("the host resolves to no address".into()));
        }
        if let Some(reason) = addresses.iter().find_map(|a| policy.refusal(*a)) {
            return Err(SourceError::Refused {
                url: url.to_string(),
                reason,
            });
        }
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(policy.timeout);
        if let Some(domain) = &domain {
            // The connection goes to the addresses just checked, never to a new lookup
            // (whose answer could differ: DNS rebinding).
            let checked: Vec<SocketAddr> = addresses
                .iter()
                .map(|address| SocketAddr::new(*address, port))
                .collect();
            client = client.resolve_to_addrs(domain, &checked);
        }
        let client = client.build().map_err(|e| failed(e.to_string()))?;
        let response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| failed(format!("HTTP {status} without a Location")))?;
            url = url
                .join(location)
                .map_err(|e| failed(format!("redirected to {location:?}: {e}")))?;
            continue;
        }
        if !status.is_success() {
            return Err(SourceError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let too_large = || SourceError::TooLarge {
            url: url.to_string(),
            limit: policy.max_bytes,
        };
        if response
            .content_length()
            .is_some_and(|length| length > policy.max_bytes as u64)
        {
            return Err(too_large());
        }
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .map(str::to_owned);
        let filename = url
            .path_segments()
            .and_then(|mut segments| segments.next_back().map(str::to_owned))
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| url.host_str().unwrap_or("document").to_owned());
        let Some(format) = Format::detect(&filename, content_type.as_deref()) else {
            return Err(SourceError::Unsupported {
                url: url.to_string(),
                content_type: content_type.unwrap_or_default(),
            });
        };
        let mut bytes = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| failed(e.to_string()))?;
            if bytes.len() + chunk.len() > policy.max_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        return Ok(SourceDocument {
            title: stem(&filename),
            filename,
            format,
            bytes,
        });
    }
    Err(SourceError::TooManyRedirects {
        url: original.to_owned(),
    })
}

fn stem(filename: &str) -> String {
    filename
        .rsplit_once('.')
        .map_or(filename, |(stem, _)| stem)
        .to_owned()
}

/// The documents of a `configMap` source, from what the driver sent.
fn config_map_documents(
    content: &ConfigMapContent,
    max_bytes: usize,
) -> Result<Vec<SourceDocument>, String> {
    if let Some(error) = &content.error {
        return Err(error.clone());
    }
    let mut documents = Vec::new();
    let mut add = |key: &str, format: Format, bytes: Vec<u8>| {
        if bytes.len() > max_bytes {
            return Err(format!(
                "key {key:?} is over the upload limit of {max_bytes} bytes"
            ));
        }
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            documents.push(SourceDocument {
                title: stem(key),
                filename: key.to_owned(),
                format,
                bytes,
            });
        }
        Ok(())
    };
    for (key, text) in &content.data {
        add(
            key,
            Format::detect(key, None).unwrap_or(Format::Text),
            text.clone().into_bytes(),
        )?;
    }
    for (key, encoded) in &content.binary_data {
        let format = Format::detect(key, None).ok_or_else(|| {
            format!("binary key {key:?} has no supported extension (pdf, docx, txt, md, html, csv)")
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("binary key {key:?} is not base64: {e}"))?;
        add(key, format, bytes)?;
    }
    if documents.is_empty() {
        return Err(format!(
            "ConfigMap {} has no document to ingest",
            content.name
        ));
    }
    Ok(documents)
}

/// sha256 over a source's documents: names, types and bytes, in name order.
fn content_hash(documents: &[SourceDocument]) -> String {
    let mut sorted: Vec<&SourceDocument> = documents.iter().collect();
    sorted.sort_by(|a, b| a.filename.cmp(&b.filename));
    let mut hasher = Sha256::new();
    for document in sorted {
        for part in [
            document.filename.as_bytes(),
            document.title.as_bytes(),
            document.format.content_type().as_bytes(),
            &document.bytes,
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    hex::encode(hasher.finalize())
}

#[derive(Debug, sqlx::FromRow)]
struct StoredSource {
    source_id: String,
    content_hash: Option<String>,
    last_error: Option<String>,
    fetched_at: Option<DateTime<Utc>>,
}

/// What reading one source gave.
enum Read {
    Documents(Vec<SourceDocument>),
    /// A `url` fetched successfully less than `IAF_SOURCE_REFETCH_SECONDS` ago: not
    /// fetched again.
    Fresh,
    Failed(String),
}

/// Brings the knowledge base's source documents in line with `spec.sources`; returns
/// each source's record, in the spec's order.
#[tracing::instrument(skip_all, fields(%tenant_id, %knowledge_base_id))]
pub async fn reconcile(
    state: &AppState,
    tenant_id: Uuid,
    knowledge_base_id: Uuid,
    spec: &KnowledgeBaseSpec,
    config_maps: &[ConfigMapContent],
) -> Result<Vec<SourceRecord>, SourceError> {
    let ids = source_ids(&spec.sources);
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    let stored: HashMap<String, StoredSource> = sqlx::query_as::<_, StoredSource>(
        "SELECT source_id, content_hash, last_error, fetched_at FROM knowledge_base_sources WHERE knowledge_base_id = $1",
    )
    .bind(knowledge_base_id)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|s| (s.source_id.clone(), s))
    .collect();
    tx.commit().await?;

    let policy = FetchPolicy::from_config(&state.config);
    let refetch = chrono::Duration::seconds(state.config.source_refetch_seconds as i64);
    // Read one after the other: a handful of sources, and each fetch has its timeout.
    let mut reads = Vec::with_capacity(ids.len());
    for (source, id) in spec.sources.iter().zip(&ids) {
        reads.push(read(&policy, source, stored.get(id), refetch, config_maps).await);
    }

    let scope = Scope {
        tenant_id,
        knowledge_base_id,
    };
    let mut ingested = false;
    for ((source, id), read) in spec.sources.iter().zip(&ids).zip(reads) {
        let previous = stored.get(id);
        let fetched = source.url.is_some();
        match read {
            Read::Fresh => {}
            Read::Failed(error) => {
                tracing::warn!(source = %id, %error, "a knowledge base source cannot be read");
                let mut tx = tenant_tx(&state.db, tenant_id).await?;
                sqlx::query(
                    "INSERT INTO knowledge_base_sources (tenant_id, knowledge_base_id, source_id, last_error, fetched_at)
                     VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)
                     ON CONFLICT (knowledge_base_id, source_id) DO UPDATE SET last_error = EXCLUDED.last_error,
                         fetched_at = EXCLUDED.fetched_at, updated_at = now()
                     WHERE knowledge_base_sources.last_error IS DISTINCT FROM EXCLUDED.last_error",
                )
                .bind(tenant_id)
                .bind(knowledge_base_id)
                .bind(id)
                .bind(&error)
                .bind(fetched)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Read::Documents(documents) => {
                let hash = content_hash(&documents);
                let unchanged =
                    previous.is_some_and(|p| p.content_hash.as_deref() == Some(hash.as_str()));
                if unchanged {
                    // Same content: only a cleared error or a fetch time to record.
                    if previous.is_some_and(|p| p.last_error.is_some()) || fetched {
                        let mut tx = tenant_tx(&state.db, tenant_id).await?;
                        sqlx::query(
                            "UPDATE knowledge_base_sources SET last_error = NULL,
                                 fetched_at = CASE WHEN $3 THEN now() ELSE fetched_at END,
                                 updated_at = CASE WHEN last_error IS NULL THEN updated_at ELSE now() END
                             WHERE knowledge_base_id = $1 AND source_id = $2",
                        )
                        .bind(knowledge_base_id)
                        .bind(id)
                        .bind(fetched)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                    }
                    continue;
                }
                delete_source_documents(state, scope, Some(id)).await?;
                let mut tx = tenant_tx(&state.db, tenant_id).await?;
                for document in &documents {
                    let document_hash = hex::encode(Sha256::digest(&document.bytes));
                    let inserted: Option<Uuid> = sqlx::query_scalar(
                        "INSERT INTO documents (tenant_id, knowledge_base_id, title, content_type, content_hash, size_bytes, metadata, source_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                         ON CONFLICT DO NOTHING RETURNING id",
                    )
                    .bind(tenant_id)
                    .bind(knowledge_base_id)
                    .bind(&document.title)
                    .bind(document.format.content_type())
                    .bind(&document_hash)
                    .bind(document.bytes.len() as i64)
                    .bind(serde_json::json!({ "source": id, "filename": document.filename }))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    // Two keys with the same bytes: one document.
                    let Some(document_id) = inserted else {
                        continue;
                    };
                    sqlx::query("INSERT INTO document_blobs (document_id, tenant_id, filename, content) VALUES ($1, $2, $3, $4)")
                        .bind(document_id)
                        .bind(tenant_id)
                        .bind(&document.filename)
                        .bind(&document.bytes)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO ingestion_jobs (tenant_id, document_id) VALUES ($1, $2)",
                    )
                    .bind(tenant_id)
                    .bind(document_id)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO knowledge_base_sources (tenant_id, knowledge_base_id, source_id, content_hash, fetched_at)
                     VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)
                     ON CONFLICT (knowledge_base_id, source_id) DO UPDATE SET content_hash = EXCLUDED.content_hash,
                         last_error = NULL, fetched_at = EXCLUDED.fetched_at, updated_at = now()",
                )
                .bind(tenant_id)
                .bind(knowledge_base_id)
                .bind(id)
                .bind(&hash)
                .bind(fetched)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                ingested = true;
                tracing::info!(source = %id, documents = documents.len(), "knowledge base source ingested");
            }
        }
    }
    // Sources gone from the spec: their documents go too.
    for gone in stored.keys().filter(|s| !ids.contains(s)) {
        delete_source_documents(state, scope, Some(gone)).await?;
        let mut tx = tenant_tx(&state.db, tenant_id).await?;
        sqlx::query(
            "DELETE FROM knowledge_base_sources WHERE knowledge_base_id = $1 AND source_id = $2",
        )
        .bind(knowledge_base_id)
        .bind(gone)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(source = %gone, "knowledge base source removed with its documents");
    }
    if ingested {
        state.rag.jobs.notify_one();
    }
    records(state, tenant_id, knowledge_base_id, &ids).await
}

async fn read(
    policy: &FetchPolicy,
    source: &Source,
    previous: Option<&StoredSource>,
    refetch: chrono::Duration,
    config_maps: &[ConfigMapContent],
) -> Read {
    if let Some(inline) = &source.inline {
        return Read::Documents(vec![SourceDocument {
            title: inline.title.clone(),
            filename: format!("{}.txt", inline.title),
            format: Format::Text,
            bytes: inline.text.clone().into_bytes(),
        }]);
    }
    if let Some(config_map) = &source.config_map {
        let sent = config_maps
            .iter()
            .find(|c| c.name == config_map.name && c.key == config_map.key);
        return match sent {
            None => Read::Failed(format!(
                "the content of ConfigMap {} was not sent with the registration",
                config_map.name
            )),
            Some(content) => match config_map_documents(content, policy.max_bytes) {
                Ok(documents) => Read::Documents(documents),
                Err(error) => Read::Failed(error),
            },
        };
    }
    if let Some(url) = &source.url {
        let fresh = previous.is_some_and(|p| {
            p.content_hash.is_some()
                && p.last_error.is_none()
                && p.fetched_at.is_some_and(|at| Utc::now() - at < refetch)
        });
        if fresh {
            return Read::Fresh;
        }
        let started = Instant::now();
        return match fetch(policy, &url.url).await {
            Ok(document) => {
                tracing::info!(url = %url.url, bytes = document.bytes.len(), elapsed_ms = started.elapsed().as_millis() as u64, "url source fetched");
                Read::Documents(vec![document])
            }
            Err(error) => Read::Failed(error.to_string()),
        };
    }
    Read::Failed("the source sets none of inline, configMap or url".into())
}

/// Deletes the documents of one source (their vectors first), or of every source.
async fn delete_source_documents(
    state: &AppState,
    scope: Scope,
    source_id: Option<&str>,
) -> Result<(), SourceError> {
    let mut tx = tenant_tx(&state.db, scope.tenant_id).await?;
    let documents: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM documents WHERE knowledge_base_id = $1 AND source_id IS NOT NULL
             AND ($2::text IS NULL OR source_id = $2)",
    )
    .bind(scope.knowledge_base_id)
    .bind(source_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    if documents.is_empty() {
        return Ok(());
    }
    for document in &documents {
        state.rag.store.delete_document(scope, *document).await?;
    }
    let mut tx = tenant_tx(&state.db, scope.tenant_id).await?;
    sqlx::query("DELETE FROM documents WHERE id = ANY($1)")
        .bind(&documents)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Each source's document count and last error, in `ids`' order.
pub async fn records(
    state: &AppState,
    tenant_id: Uuid,
    knowledge_base_id: Uuid,
    ids: &[String],
) -> Result<Vec<SourceRecord>, SourceError> {
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT s.source_id, s.last_error,
                (SELECT count(*) FROM documents d WHERE d.knowledge_base_id = s.knowledge_base_id AND d.source_id = s.source_id)
         FROM knowledge_base_sources s WHERE s.knowledge_base_id = $1",
    )
    .bind(knowledge_base_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let rows: BTreeMap<String, (Option<String>, i64)> = rows
        .into_iter()
        .map(|(id, error, documents)| (id, (error, documents)))
        .collect();
    Ok(ids
        .iter()
        .map(|id| {
            let (last_error, documents) = rows.get(id).cloned().unwrap_or_default();
            SourceRecord {
                id: id.clone(),
                documents,
                last_error,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(strict: bool, networks: &str) -> FetchPolicy {
        FetchPolicy {
            strict,
            networks: SourceNetworks::parse(networks).unwrap(),
            timeout: Duration::from_secs(1),
            max_bytes: 10,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn link_local_is_never_fetched_even_when_listed() {
        for strict in [true, false] {
            let policy = policy(strict, "0.0.0.0/0, ::/0");
            for address in ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254"] {
                assert!(policy.refusal(ip(address)).is_some(), "{address}");
            }
            assert!(policy.refusal(ip("10.1.2.3")).is_none());
        }
    }

    #[test]
    fn strict_fetches_only_the_listed_networks() {
        let strict = policy(true, "10.0.0.0/8");
        assert!(strict.refusal(ip("10.9.8.7")).is_none());
        assert!(strict.refusal(ip("192.168.1.1")).is_some());
        assert!(strict.refusal(ip("1.1.1.1")).is_some());
        assert!(strict.refusal(ip("127.0.0.1")).is_some());
        let open = policy(false, "10.0.0.0/8");
        assert!(open.refusal(ip("1.1.1.1")).is_none());
        assert!(open.refusal(ip("192.168.1.1")).is_some());
        assert!(open.refusal(ip("127.0.0.1")).is_some());
        assert!(open.refusal(ip("0.0.0.0")).is_some());
        assert!(
            policy(false, "127.0.0.0/8")
                .refusal(ip("127.0.0.1"))
                .is_none()
        );
    }

    #[test]
    fn the_default_networks_are_the_private_ranges() {
        let networks = SourceNetworks::default();
        for address in ["10.0.0.1", "172.20.0.5", "192.168.3.4", "fd00::1"] {
            assert!(networks.contains(ip(address)), "{address}");
        }
        for address in ["127.0.0.1", "8.8.8.8", "169.254.169.254"] {
            assert!(!networks.contains(ip(address)), "{address}");
        }
    }

    #[test]
    fn config_map_keys_become_documents_and_the_hash_follows_content() {
        let content = ConfigMapContent {
            name: "docs".into(),
            data: BTreeMap::from([
                ("a.md".to_owned(), "# A".to_owned()),
                ("b".to_owned(), "bee".to_owned()),
            ]),
            ..ConfigMapContent::default()
        };
        let documents = config_map_documents(&content, 100).unwrap();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0].format, Format::Markdown);
        assert_eq!(documents[1].format, Format::Text);
        let before = content_hash(&documents);
        let mut changed = content.clone();
        changed.data.insert("b".into(), "bee!".into());
        assert_ne!(
            before,
            content_hash(&config_map_documents(&changed, 100).unwrap())
        );
        assert!(config_map_documents(&changed, 3).is_err());
    }
}
