//! Answers: a chat completion over the retrieved passages, citing them as `[n]`, in the
//! question's language; or, with no model reachable, the best passages themselves.
//!
//! The one place the API talks to language models. [`Providers`] is the tenant's list
//! (its own model server, `ollama`, and the `llmProviders` of its Tenant, from
//! `IAF_LLM_PROVIDERS`) with the sovereignty rule; [`ChatClient`] speaks each provider
//! kind's own wire protocol. Answers (`/api/query`) and workflow agents both go through
//! them.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use iafactory_crds::Language;
pub use iafactory_crds::tenant::LlmProviderKind as ProviderKind;
use serde::{Deserialize, Serialize};

use super::search::SearchResult;
use super::text::detect_language;
use crate::config::Config;

/// The tenant's own model server: always this name, always OpenAI-compatible.
pub const OLLAMA: &str = "ollama";

/// The version of the Messages API the `anthropic` kind speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("no language model is configured")]
    NotConfigured,
    #[error("the language model at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the language model at {url} answered {status}: {body}")]
    Server {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the language model at {url} answered something unexpected: {reason}")]
    Protocol { url: String, reason: String },
}

impl GenerateError {
    /// A provider failure worth retrying (unreachable, overloaded, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            GenerateError::Unreachable { .. } => true,
            GenerateError::Server { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Why a provider cannot be used: each message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error(
        "provider {name:?} is external, and this tenant's sovereignty is strict: only {OLLAMA:?}, the model server in the tenant's namespace, is allowed"
    )]
    External { name: String },
    #[error("provider {name:?} is not configured (configured: {known})")]
    Unknown { name: String, known: String },
    #[error("provider {name:?} has no default model: name one in \"model\"")]
    NoModel { name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProvidersConfigError {
    #[error("IAF_LLM_PROVIDERS is not valid JSON: {0}")]
    Json(String),
    #[error("IAF_LLM_PROVIDERS names {0:?}, which is reserved for the tenant's own model server")]
    Reserved(String),
}

/// One entry of `IAF_LLM_PROVIDERS`, as the shared plan writes it
/// (`crds/src/plan.rs`): `{"name","kind","base_url","api_key_env"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// The variable holding the key (IAF_PROVIDER_<NAME>_API_KEY).
    #[serde(default)]
    pub api_key_env: Option<String>,
}

/// Parses `IAF_LLM_PROVIDERS` (absent or blank: none).
pub fn parse_providers(json: Option<&str>) -> Result<Vec<ProviderConfig>, ProvidersConfigError> {
    match json {
        Some(json) if !json.trim().is_empty() => {
            let parsed: Vec<ProviderConfig> = serde_json::from_str(json)
                .map_err(|e| ProvidersConfigError::Json(e.to_string()))?;
            if let Some(reserved) = parsed.iter().find(|p| p.name == OLLAMA) {
                return Err(ProvidersConfigError::Reserved(reserved.name.clone()));
            }
            Ok(parsed)
        }
        _ => Ok(Vec::new()),
    }
}

#[derive(Clone)]
struct Provider {
    kind: ProviderKind,
    base_url: String,
    api_key: Option<String>,
}

/// What a client may learn of a provider (never its address or key).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderView {
    pub name: String,
    /// `openai-compatible` or `anthropic`.
    pub kind: String,
    /// False for an external provider under strict sovereignty.
    pub allowed: bool,
    /// The model used when a request names none (only the tenant's model server has one).
    pub default_model: Option<String>,
}

/// The tenant's language models, and the sovereignty rule over them.
#[derive(Clone)]
pub struct Providers {
    providers: BTreeMap<String, Provider>,
    open_sovereignty: bool,
    /// `IAF_LLM_MODEL`: what the tenant's model server answers with by default.
    default_model: Option<String>,
    http: reqwest::Client,
}

impl Providers {
    /// From the configuration, over `http` (its pool and timeouts are the caller's:
    /// answers bound the whole call, workflow agents bound each attempt themselves).
    pub fn from_config(
        config: &Config,
        http: reqwest::Client,
    ) -> Result<Self, ProvidersConfigError> {
        let mut providers = BTreeMap::new();
        if let Some(url) = config.llm_base_url.as_deref().filter(|u| !u.is_empty()) {
            providers.insert(
                OLLAMA.to_owned(),
                Provider {
                    kind: ProviderKind::OpenaiCompatible,
                    base_url: url.to_owned(),
                    api_key: None,
                },
            );
        }
        for provider in parse_providers(config.llm_providers.as_deref())? {
            providers.insert(
                provider.name,
                Provider {
                    kind: provider.kind,
                    base_url: provider.base_url,
                    api_key: provider.api_key_env.and_then(|var| std::env::var(var).ok()),
                },
            );
        }
        Ok(Self {
            providers,
            open_sovereignty: config.sovereignty == "open",
            default_model: config.llm_model.clone().filter(|m| !m.is_empty()),
            http,
        })
    }

    /// Whether `name` may be called, and why not: strict sovereignty first (an
    /// external provider is refused even when configured), then existence.
    pub fn check(&self, name: &str) -> Result<(), ProviderError> {
        if name != OLLAMA && !self.open_sovereignty {
            return Err(ProviderError::External {
                name: name.to_owned(),
            });
        }
        if !self.providers.contains_key(name) {
            let known: Vec<&str> = self.providers.keys().map(String::as_str).collect();
            return Err(ProviderError::Unknown {
                name: name.to_owned(),
                known: if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                },
            });
        }
        Ok(())
    }

    /// The model `name` answers with when none is named.
    pub fn default_model(&self, name: &str) -> Option<&str> {
        (name == OLLAMA)
            .then_some(self.default_model.as_deref())
            .flatten()
    }

    /// A client for `model` at provider `name`, if the tenant may call it.
    pub fn client(&self, name: &str, model: &str) -> Result<ChatClient, ProviderError> {
        self.check(name)?;
        let provider = &self.providers[name];
        Ok(ChatClient::with_client(
            self.http.clone(),
            provider.kind,
            &provider.base_url,
            model,
            provider.api_key.clone(),
        ))
    }

    /// The tenant's model server with its default model, when both are configured:
    /// what answers a query that names no model.
    pub fn default_client(&self) -> Option<ChatClient> {
        let model = self.default_model.as_deref()?;
        self.client(OLLAMA, model).ok()
    }

    /// Every configured provider, for clients choosing one.
    pub fn views(&self) -> Vec<ProviderView> {
        self.providers
            .iter()
            .map(|(name, provider)| ProviderView {
                name: name.clone(),
                kind: kind_name(provider.kind).to_owned(),
                allowed: self.check(name).is_ok(),
                default_model: self.default_model(name).map(str::to_owned),
            })
            .collect()
    }

    /// The external OpenAI-compatible providers as `(name, base_url, key)`: the ones
    /// that may also serve embeddings.
    pub fn embedding_sources(&self) -> Vec<(String, String, Option<String>)> {
        self.providers
            .iter()
            .filter(|(name, p)| *name != OLLAMA && p.kind == ProviderKind::OpenaiCompatible)
            .map(|(name, p)| (name.clone(), p.base_url.clone(), p.api_key.clone()))
            .collect()
    }
}

pub fn kind_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenaiCompatible => "openai-compatible",
        ProviderKind::Anthropic => "anthropic",
    }
}

/// One provider's chat endpoint, spoken in its kind's protocol:
/// - `openai-compatible`: `POST {base}/chat/completions`, `Authorization: Bearer`;
/// - `anthropic`: `POST {base}/v1/messages`, `x-api-key` and `anthropic-version`.
#[derive(Clone)]
pub struct ChatClient {
    client: reqwest::Client,
    pub kind: ProviderKind,
    pub base_url: String,
    pub model: String,
    api_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct CompletionResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<UsageResponse>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct UsageResponse {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// An Anthropic Messages API answer: text blocks and token counts.
#[derive(Deserialize)]
struct AnthropicResponse {
    #[serde(default)]
    content: Vec<AnthropicBlock>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// One streamed Anthropic event; only `content_block_delta` with a `text_delta` and
/// `error` carry anything the answer needs.
#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    delta: Option<AnthropicDelta>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct AnthropicDelta {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

/// Tokens as they arrive.
pub type TokenStream = BoxStream<'static, Result<String, GenerateError>>;

impl ChatClient {
    pub fn new(
        kind: ProviderKind,
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Self {
        Self::with_client(
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("a TLS backend is compiled in"),
            kind,
            base_url,
            model,
            api_key,
        )
    }

    /// Over a shared HTTP client (its connection pool and TLS setup are reused): callers
    /// that make many short calls bound each one with their own timeout.
    pub fn with_client(
        client: reqwest::Client,
        kind: ProviderKind,
        base_url: &str,
        model: &str,
        api_key: Option<String>,
    ) -> Self {
        Self {
            client,
            kind,
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key,
        }
    }

    pub fn url(&self) -> String {
        match self.kind {
            ProviderKind::OpenaiCompatible => format!("{}/chat/completions", self.base_url),
            ProviderKind::Anthropic => format!("{}/v1/messages", self.base_url),
        }
    }

    /// The request body in the kind's shape.
    fn body(&self, messages: &[Message], max_tokens: u32, stream: bool) -> serde_json::Value {
        match self.kind {
            ProviderKind::OpenaiCompatible => {
                let mut body = serde_json::json!({ "model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.2 });
                if stream {
                    body["stream"] = true.into();
                }
                body
            }
            ProviderKind::Anthropic => {
                // The Messages API takes the system prompt apart from the turns.
                let system = messages
                    .iter()
                    .filter(|m| m.role == "system")
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n\n");
                let turns: Vec<&Message> = messages.iter().filter(|m| m.role != "system").collect();
                let mut body = serde_json::json!({ "model": self.model, "max_tokens": max_tokens, "messages": turns, "temperature": 0.2 });
                if !system.is_empty() {
                    body["system"] = system.into();
                }
                if stream {
                    body["stream"] = true.into();
                }
                body
            }
        }
    }

    async fn send(&self, body: serde_json::Value) -> Result<reqwest::Response, GenerateError> {
        let url = self.url();
        let mut request = self.client.post(&url).json(&body);
        match (self.kind, &self.api_key) {
            (ProviderKind::OpenaiCompatible, Some(key)) => request = request.bearer_auth(key),
            (ProviderKind::OpenaiCompatible, None) => {}
            (ProviderKind::Anthropic, key) => {
                if let Some(key) = key {
                    request = request.header("x-api-key", key);
                }
                request = request.header("anthropic-version", ANTHROPIC_VERSION);
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| GenerateError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body: String = response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            return Err(GenerateError::Server { url, status, body });
        }
        Ok(response)
    }

    /// One complete answer.
    pub async fn complete(
        &self,
        messages: &[Message],
        max_tokens: u32,
    ) -> Result<(String, Usage), GenerateError> {
        let response = self.send(self.body(messages, max_tokens, false)).await?;
        let url = self.url();
        let protocol = |reason: String| GenerateError::Protocol {
            url: url.clone(),
            reason,
        };
        match self.kind {
            ProviderKind::OpenaiCompatible => {
                let parsed: CompletionResponse =
                    response.json().await.map_err(|e| protocol(e.to_string()))?;
                let content = parsed
                    .choices
                    .into_iter()
                    .next()
                    .and_then(|c| c.message)
                    .map(|m| m.content)
                    .ok_or_else(|| protocol("no choice in the answer".into()))?;
                let usage = parsed
                    .usage
                    .map(|u| Usage {
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                    })
                    .unwrap_or_default();
                Ok((content, usage))
            }
            ProviderKind::Anthropic => {
                let parsed: AnthropicResponse =
                    response.json().await.map_err(|e| protocol(e.to_string()))?;
                let texts: Vec<String> = parsed
                    .content
                    .into_iter()
                    .filter(|b| b.kind == "text")
                    .filter_map(|b| b.text)
                    .collect();
                if texts.is_empty() {
                    return Err(protocol("no text block in the answer".into()));
                }
                let usage = parsed
                    .usage
                    .map(|u| Usage {
                        prompt_tokens: u.input_tokens,
                        completion_tokens: u.output_tokens,
                    })
                    .unwrap_or_default();
                Ok((texts.concat(), usage))
            }
        }
    }

    /// The answer as it is generated, token by token (server-sent events upstream).
    pub async fn stream(
        &self,
        messages: &[Message],
        max_tokens: u32,
    ) -> Result<TokenStream, GenerateError> {
        let response = self.send(self.body(messages, max_tokens, true)).await?;
        let url = self.url();
        let events = sse_events(response.bytes_stream(), url.clone());
        let kind = self.kind;
        Ok(events
            .flat_map(move |event| {
                let tokens: Vec<Result<String, GenerateError>> = match event {
                    Err(e) => vec![Err(e)],
                    Ok(event) => match kind {
                        ProviderKind::OpenaiCompatible => openai_tokens(&event, &url),
                        ProviderKind::Anthropic => anthropic_tokens(&event, &url),
                    },
                };
                futures::stream::iter(tokens)
            })
            .boxed())
    }
}

/// One server-sent event: its `event:` name (if any) and its `data:` lines joined.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    name: Option<String>,
    data: String,
}

/// Splits a byte stream into server-sent events; a partial event waits for its end.
fn sse_events(
    bytes: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static,
    url: String,
) -> impl Stream<Item = Result<SseEvent, GenerateError>> + Send + 'static {
    let mut buffer = String::new();
    bytes.flat_map(move |chunk| {
        let mut events = Vec::new();
        match chunk {
            Err(e) => events.push(Err(GenerateError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })),
            Ok(bytes) => {
                buffer.push_str(&String::from_utf8_lossy(&bytes));
                if buffer.contains('\r') {
                    buffer = buffer.replace("\r\n", "\n");
                }
                events.extend(drain_events(&mut buffer).into_iter().map(Ok));
            }
        }
        futures::stream::iter(events)
    })
}

/// The complete events at the front of `buffer` (events end with a blank line).
fn drain_events(buffer: &mut String) -> Vec<SseEvent> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let raw: String = buffer.drain(..end + 2).collect();
        let mut event = SseEvent::default();
        let mut data = Vec::new();
        for line in raw.lines() {
            if let Some(name) = line.strip_prefix("event:") {
                event.name = Some(name.trim().to_owned());
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        if data.is_empty() {
            continue; // a comment or a keep-alive
        }
        event.data = data.join("\n");
        events.push(event);
    }
    events
}

fn openai_tokens(event: &SseEvent, url: &str) -> Vec<Result<String, GenerateError>> {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Vec::new();
    }
    match serde_json::from_str::<CompletionResponse>(data) {
        Ok(parsed) => parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.delta)
            .and_then(|d| d.content)
            .filter(|text| !text.is_empty())
            .map(Ok)
            .into_iter()
            .collect(),
        Err(e) => vec![Err(GenerateError::Protocol {
            url: url.to_owned(),
            reason: e.to_string(),
        })],
    }
}

/// `message_start`, `content_block_start`, `ping`, `content_block_stop`,
/// `message_delta` and `message_stop` carry no text; `error` ends the answer.
fn anthropic_tokens(event: &SseEvent, url: &str) -> Vec<Result<String, GenerateError>> {
    let parsed: AnthropicEvent = match serde_json::from_str(event.data.trim()) {
        Ok(parsed) => parsed,
        Err(e) => {
            return vec![Err(GenerateError::Protocol {
                url: url.to_owned(),
                reason: e.to_string(),
            })];
        }
    };
    match parsed.kind.as_str() {
        "content_block_delta" => parsed
            .delta
            .filter(|d| d.kind.as_deref() == Some("text_delta"))
            .and_then(|d| d.text)
            .filter(|text| !text.is_empty())
            .map(Ok)
            .into_iter()
            .collect(),
        "error" => vec![Err(GenerateError::Protocol {
            url: url.to_owned(),
            reason: format!("the stream broke off: {}", parsed.error.unwrap_or_default()),
        })],
        _ => Vec::new(),
    }
}

fn language_name(language: Option<Language>) -> &'static str {
    match language {
        Some(Language::Ar) => "Arabic",
        Some(Language::Fr) => "French",
        Some(Language::En) | None => "English",
    }
}

/// The prompt: numbered passages, the rule to cite them as `[n]`, and the language of
/// the question.
pub fn prompt(question: &str, passages: &[SearchResult]) -> Vec<Message> {
    let language = detect_language(question);
    let mut context = String::new();
    for (i, passage) in passages.iter().enumerate() {
        context.push_str(&format!(
            "[{}] ({})\n{}\n\n",
            i + 1,
            passage.title,
            passage.content
        ));
    }
    vec![
        Message {
            role: "system".into(),
            content: format!(
                "You answer questions using only the numbered passages you are given. \
                 After each statement, cite the passages it comes from as [1], [2], ... \
                 If the passages do not contain the answer, say that you do not know. \
                 Answer in {}, the language of the question.",
                language_name(language)
            ),
        },
        Message {
            role: "user".into(),
            content: format!("Passages:\n\n{context}Question: {question}"),
        },
    ]
}

/// Without a model: the best passages' snippets, each cited.
pub fn extractive_answer(question: &str, passages: &[SearchResult]) -> String {
    if passages.is_empty() {
        return match detect_language(question) {
            Some(Language::Ar) => {
                "لم يتم العثور على مقاطع ذات صلة في قواعد المعرفة المحددة.".into()
            }
            Some(Language::Fr) => {
                "Aucun passage pertinent n'a été trouvé dans les bases de connaissances choisies."
                    .into()
            }
            _ => "No relevant passage was found in the selected knowledge bases.".into(),
        };
    }
    passages
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, p)| format!("{} [{}]", p.snippet, i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn events_are_split_on_blank_lines_and_a_partial_one_waits() {
        let mut buffer = "event: content_block_delta\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: x\ndata: y\n\ndata: part"
            .replace("\r\n", "\n");
        let events = drain_events(&mut buffer);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    name: Some("content_block_delta".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    name: None,
                    data: "x\ny".into()
                },
            ]
        );
        assert_eq!(buffer, "data: part");
    }

    #[test]
    fn each_kind_has_its_own_path_and_body() {
        let messages = [message("system", "rules"), message("user", "question")];
        let openai = ChatClient::with_client(
            reqwest::Client::new(),
            ProviderKind::OpenaiCompatible,
            "http://h/v1/",
            "m",
            None,
        );
        assert_eq!(openai.url(), "http://h/v1/chat/completions");
        let body = openai.body(&messages, 10, true);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["stream"], true);

        let anthropic = ChatClient::with_client(
            reqwest::Client::new(),
            ProviderKind::Anthropic,
            "http://h",
            "claude",
            None,
        );
        assert_eq!(anthropic.url(), "http://h/v1/messages");
        let body = anthropic.body(&messages, 10, false);
        assert_eq!(body["system"], "rules");
        assert_eq!(body["max_tokens"], 10);
        assert_eq!(
            body["messages"],
            serde_json::json!([{"role": "user", "content": "question"}])
        );
        assert!(body.get("stream").is_none());
    }

    #[test]
    fn anthropic_events_yield_only_text_deltas_and_errors() {
        let event = |data: &str| SseEvent {
            name: None,
            data: data.into(),
        };
        assert!(
            anthropic_tokens(&event(r#"{"type":"message_start","message":{}}"#), "u").is_empty()
        );
        let tokens = anthropic_tokens(
            &event(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            "u",
        );
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].as_ref().unwrap(), "Hi");
        let tokens = anthropic_tokens(
            &event(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
            "u",
        );
        assert!(
            tokens[0]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("Overloaded")
        );
    }

    /// The API reads exactly what the shared plan writes into `IAF_LLM_PROVIDERS`.
    #[test]
    fn the_plan_and_the_api_agree_on_the_providers() {
        let tenant: iafactory_crds::Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "iafactory.dz/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "agree"},
            "spec": {"displayName": "Agree", "plan": "pro", "sovereignty": "open",
                "llmProviders": [
                    {"name": "groq", "kind": "openai-compatible", "baseUrl": "https://api.groq.com/openai/v1",
                     "secretRef": {"name": "groq", "key": "apiKey"}},
                    {"name": "claude", "kind": "anthropic", "baseUrl": "https://api.anthropic.com",
                     "secretRef": {"name": "claude", "key": "apiKey"}}]}
        }))
        .expect("a valid tenant");
        let plan = iafactory_crds::plan(&tenant, &iafactory_crds::PlatformConfig::default())
            .expect("the tenant plans");
        let api = plan
            .component(iafactory_crds::plan::ComponentKind::Api)
            .expect("an API component");
        let json = api
            .env
            .iter()
            .find(|e| e.name == "IAF_LLM_PROVIDERS")
            .map(|e| match &e.value {
                iafactory_crds::plan::EnvValue::Literal { value } => value.clone(),
                other => panic!("IAF_LLM_PROVIDERS is {other:?}"),
            })
            .expect("IAF_LLM_PROVIDERS is set");
        let parsed = parse_providers(Some(&json)).expect("the API parses the plan's JSON");
        let kinds: Vec<(&str, ProviderKind)> =
            parsed.iter().map(|p| (p.name.as_str(), p.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("groq", ProviderKind::OpenaiCompatible),
                ("claude", ProviderKind::Anthropic)
            ]
        );
        assert!(parsed.iter().all(|p| p.api_key_env.is_some()));
    }

    #[test]
    fn strict_sovereignty_refuses_every_external_provider_by_name() {
        let config = Config {
            llm_base_url: Some("http://ollama:11434/v1".into()),
            llm_model: Some("qwen".into()),
            llm_providers: Some(
                r#"[{"name":"groq","kind":"openai-compatible","base_url":"https://g/v1"}]"#.into(),
            ),
            ..Config::default()
        };
        let strict = Providers::from_config(&config, reqwest::Client::new()).unwrap();
        assert!(strict.check(OLLAMA).is_ok());
        let refused = strict.check("groq").unwrap_err();
        assert!(matches!(refused, ProviderError::External { .. }));
        assert!(refused.to_string().contains("\"groq\""));
        let open = Providers::from_config(
            &Config {
                sovereignty: "open".into(),
                ..config
            },
            reqwest::Client::new(),
        )
        .unwrap();
        assert!(open.check("groq").is_ok());
        assert!(matches!(
            open.check("nowhere"),
            Err(ProviderError::Unknown { .. })
        ));
    }
}
