//! Answers: a chat completion over the retrieved passages, citing them as `[n]`, in the
//! question's language; or, with no model reachable, the best passages themselves.

use std::time::Duration;

use futures::{Stream, StreamExt};
use iafactory_crds::Language;
use serde::{Deserialize, Serialize};

use super::search::SearchResult;
use super::text::detect_language;

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

/// An OpenAI-compatible `/v1/chat/completions` endpoint: the tenant's Ollama, or a
/// provider its sovereignty allows.
#[derive(Clone)]
pub struct ChatClient {
    client: reqwest::Client,
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

impl ChatClient {
    pub fn new(base_url: &str, model: &str, api_key: Option<String>, timeout: Duration) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("a TLS backend is compiled in"),
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key,
        }
    }

    /// Over a shared HTTP client (its connection pool and TLS setup are reused): callers
    /// that make many short calls bound each one with their own timeout.
    pub fn with_client(
        client: reqwest::Client,
        base_url: &str,
        model: &str,
        api_key: Option<String>,
    ) -> Self {
        Self {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key,
        }
    }

    fn url(&self) -> String {
        format!("{}/chat/completions", self.base_url)
    }

    async fn send(&self, body: serde_json::Value) -> Result<reqwest::Response, GenerateError> {
        let url = self.url();
        let mut request = self.client.post(&url).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
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
        let response = self
            .send(serde_json::json!({ "model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.2 }))
            .await?;
        let url = self.url();
        let parsed: CompletionResponse =
            response.json().await.map_err(|e| GenerateError::Protocol {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let content = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message)
            .map(|m| m.content)
            .ok_or(GenerateError::Protocol {
                url,
                reason: "no choice in the answer".into(),
            })?;
        let usage = parsed
            .usage
            .map(|u| Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            })
            .unwrap_or_default();
        Ok((content, usage))
    }

    /// The answer as it is generated, token by token (server-sent events upstream).
    pub async fn stream(
        &self,
        messages: &[Message],
        max_tokens: u32,
    ) -> Result<impl Stream<Item = Result<String, GenerateError>> + use<>, GenerateError> {
        let response = self
            .send(serde_json::json!({ "model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.2, "stream": true }))
            .await?;
        let url = self.url();
        let mut buffer = String::new();
        Ok(response.bytes_stream().flat_map(move |chunk| {
            let mut tokens: Vec<Result<String, GenerateError>> = Vec::new();
            match chunk {
                Err(e) => tokens.push(Err(GenerateError::Unreachable {
                    url: url.clone(),
                    reason: e.to_string(),
                })),
                Ok(bytes) => {
                    buffer.push_str(&String::from_utf8_lossy(&bytes));
                    // SSE events are separated by a blank line; keep a partial one for later.
                    while let Some(end) = buffer.find("\n\n") {
                        let event: String = buffer.drain(..end + 2).collect();
                        for line in event.lines() {
                            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                                continue;
                            };
                            if data == "[DONE]" {
                                continue;
                            }
                            match serde_json::from_str::<CompletionResponse>(data) {
                                Ok(parsed) => {
                                    if let Some(text) = parsed
                                        .choices
                                        .into_iter()
                                        .next()
                                        .and_then(|c| c.delta)
                                        .and_then(|d| d.content)
                                        && !text.is_empty()
                                    {
                                        tokens.push(Ok(text));
                                    }
                                }
                                Err(e) => tokens.push(Err(GenerateError::Protocol {
                                    url: url.clone(),
                                    reason: e.to_string(),
                                })),
                            }
                        }
                    }
                }
            }
            futures::stream::iter(tokens)
        }))
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
