//! Answers from the model the tenant chose: each provider kind spoken in its own wire
//! protocol, against a scripted provider on 127.0.0.1 that checks the exact path,
//! headers and body shape of every call and streams server-sent events; the
//! sovereignty rule; knowledge-base defaults; and the extractive fallback. The API
//! runs on the real PostgreSQL with the real in-process embedding model.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::{Auth, TestApp, TestDb};
use serde_json::{Value, json};

/// Cargo sets this variable in every test process: the providers' `api_key_env` names
/// it, so the key the API sends is known without writing to the environment.
const KEY_VARIABLE: &str = "CARGO_PKG_NAME";
const KEY: &str = env!("CARGO_PKG_NAME");

#[derive(Clone, Debug)]
struct Call {
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn to(&self, prefix: &str) -> Vec<Call> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What is wrong with an OpenAI-compatible call, if anything.
fn openai_problem(call: &Call, key: Option<&str>) -> Option<String> {
    let authorization = header(&call.headers, "authorization");
    let wanted = key.map(|k| format!("Bearer {k}"));
    if authorization != wanted.as_deref() {
        return Some(format!(
            "authorization {authorization:?}, wanted {wanted:?}"
        ));
    }
    let body = &call.body;
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["role"].as_str()).collect())
        .unwrap_or_default();
    if !body["model"].is_string() || !body["max_tokens"].is_u64() || roles != ["system", "user"] {
        return Some(format!("unexpected body {body}"));
    }
    None
}

/// What is wrong with an Anthropic Messages API call, if anything.
fn anthropic_problem(call: &Call) -> Option<String> {
    if header(&call.headers, "x-api-key") != Some(KEY) {
        return Some("x-api-key is missing or wrong".into());
    }
    if header(&call.headers, "anthropic-version") != Some("2023-06-01") {
        return Some("anthropic-version is missing or wrong".into());
    }
    if call.headers.contains_key("authorization") {
        return Some("an Authorization header was sent".into());
    }
    let body = &call.body;
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let only_user =
        messages.len() == 1 && messages[0]["role"] == "user" && messages[0]["content"].is_string();
    if !body["model"].is_string()
        || !body["max_tokens"].is_u64()
        || body["system"].as_str().is_none_or(str::is_empty)
        || !only_user
    {
        return Some(format!("unexpected body {body}"));
    }
    None
}

fn sse(events: Vec<String>) -> Response {
    // One chunk per event, a little apart: the API receives them as a real stream.
    let stream = futures::StreamExt::then(futures::stream::iter(events), |event| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, Infallible>(Bytes::from(event))
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// What the scripted OpenAI-compatible and Anthropic models answer: each drawn from
/// the test's one passage (so that the grounding check keeps it), and each its own, so
/// that the answer shows which wire protocol carried it. The model asked is checked
/// through the recorded calls and the response's `model`.
const OPENAI_SAID: &str = "Chaque salarié a droit à trente jours de congé annuel payé [1].";
const ANTHROPIC_SAID: &str = "Trente jours de congé annuel payé pour chaque salarié [1].";
/// A model asked for this answers with details found in no passage.
const INVENTS: &str = "invents";
const INVENTED: &str = "Les salariés partent en croisière aux Baléares pendant quarante-cinq jours offerts par la direction [1].";

/// `said` in three streamed pieces.
fn pieces(said: &str) -> [&str; 3] {
    let (first, rest) = said.split_at(said.find(' ').unwrap());
    let (second, third) = rest.split_at(rest[1..].find(' ').unwrap() + 1);
    [first, second, third]
}

fn openai_answer(model: &str, stream: bool) -> Response {
    let said = if model == INVENTS {
        INVENTED
    } else {
        OPENAI_SAID
    };
    if !stream {
        return axum::Json(json!({
            "choices": [{"message": {"role": "assistant", "content": said}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}
        }))
        .into_response();
    }
    let delta = |text: &str| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"delta": {"content": text}}]})
        )
    };
    let [first, second, third] = pieces(said);
    sse(vec![
        delta(first),
        delta(second),
        delta(third),
        "data: [DONE]\n\n".into(),
    ])
}

fn anthropic_answer(model: &str, stream: bool) -> Response {
    if !stream {
        return axum::Json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": ANTHROPIC_SAID}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 4}
        }))
        .into_response();
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let delta = |text: &str| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        )
    };
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": model, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    if model == "breaks-off" {
        events.push(event(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
        return sse(events);
    }
    let [first, second, third] = pieces(ANTHROPIC_SAID);
    events.extend([
        delta(first),
        delta(second),
        delta(third),
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ]);
    sse(events)
}

/// Four providers under one address: `/ollama/v1` (the tenant's model server, no
/// key), `/groq/v1` (OpenAI-compatible, Bearer), `/claude` (Anthropic) and
/// `/broken/v1` (always 500). A call of the wrong shape gets a 400 naming the fault.
async fn scripted_providers() -> (String, Calls) {
    let calls = Calls::default();
    let recorded = calls.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let calls = recorded.clone();
        async move {
            let call = Call {
                path: uri.path().to_owned(),
                headers,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            };
            calls.0.lock().unwrap().push(call.clone());
            let model = call.body["model"].as_str().unwrap_or_default().to_owned();
            let stream = call.body["stream"] == true;
            let problem = match call.path.as_str() {
                "/ollama/v1/chat/completions" => openai_problem(&call, None),
                "/groq/v1/chat/completions" => openai_problem(&call, Some(KEY)),
                "/claude/v1/messages" => anthropic_problem(&call),
                "/broken/v1/chat/completions" => {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "overloaded").into_response();
                }
                other => Some(format!("no such path {other}")),
            };
            if let Some(problem) = problem {
                return (StatusCode::BAD_REQUEST, problem).into_response();
            }
            if call.path.starts_with("/claude") {
                anthropic_answer(&model, stream)
            } else {
                openai_answer(&model, stream)
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), calls)
}

fn config(db: &TestDb, server: &str, sovereignty: &str) -> iafactory_api::config::Config {
    let mut config = iafactory_api::config::Config {
        embedding_model_dir: Some(common::engine_url(
            "IAF_TEST_EMBEDDING_MODEL_DIR",
            "minilm",
        )),
        llm_base_url: Some(format!("{server}/ollama/v1")),
        llm_model: Some("local-model".into()),
        llm_providers: Some(
            json!([
                {"name": "groq", "kind": "openai-compatible", "base_url": format!("{server}/groq/v1"), "api_key_env": KEY_VARIABLE},
                {"name": "claude", "kind": "anthropic", "base_url": format!("{server}/claude"), "api_key_env": KEY_VARIABLE},
                {"name": "broken", "kind": "openai-compatible", "base_url": format!("{server}/broken/v1")},
            ])
            .to_string(),
        ),
        sovereignty: sovereignty.into(),
        ..common::config(db)
    };
    config.rate_limit.per_ip_per_minute = 100_000;
    config.rate_limit.per_ip_per_hour = 1_000_000;
    config.rate_limit.default_key_per_minute = 100_000;
    config
}

/// A tenant with one knowledge base holding one ingested document; returns
/// (token, slug, knowledge base id).
async fn tenant_with_document(app: &TestApp, slug: &str, generation: Value) -> (String, String) {
    let admin = app.register(slug).await;
    let mut body = json!({"name": "rules"});
    if !generation.is_null() {
        body["generation"] = generation;
    }
    let reply = app
        .request(
            Method::POST,
            "/api/knowledge-bases",
            Auth::Bearer(&admin.token),
            Some(body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let kb = reply.body["data"]["id"].as_str().unwrap().to_owned();
    let reply = app
        .request(
            Method::POST,
            &format!("/api/knowledge-bases/{kb}/documents"),
            Auth::Bearer(&admin.token),
            Some(json!({"title": "Congés", "text": "Chaque salarié a droit à trente jours de congé annuel payé."})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let id = reply.body["data"]["id"].as_str().unwrap().to_owned();
    let documents = app.wait_for_documents(&admin.token, &kb, &[id]).await;
    assert_eq!(documents[0]["status"], "ready", "{documents:?}");
    (admin.token, kb)
}

async fn query(app: &TestApp, token: &str, body: Value) -> common::Reply {
    app.request(Method::POST, "/api/query", Auth::Bearer(token), Some(body))
        .await
}

/// The answer as a client shows it (the streamed tokens joined, or what a `replace`
/// event put in their place), and the `done` event.
fn read_stream(reply: &common::Reply) -> (String, Value) {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let text = reply.body.as_str().expect("an SSE body");
    let mut tokens = String::new();
    let mut done = Value::Null;
    for event in text.split("\n\n") {
        let name = event
            .lines()
            .find_map(|l| l.strip_prefix("event:"))
            .map(str::trim);
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        match name {
            Some("token") => tokens.push_str(&data.join("\n")),
            Some("replace") => tokens = data.join("\n"),
            Some("done") => done = serde_json::from_str(&data.join("\n")).unwrap(),
            _ => {}
        }
    }
    (tokens, done)
}

const QUESTION: &str = "Combien de jours de congé ?";

#[tokio::test]
async fn each_provider_kind_speaks_its_own_protocol_plain_and_streamed() {
    let db = TestDb::new().await;
    let (server, calls) = scripted_providers().await;
    let app = TestApp::with_workers(config(&db, &server, "open")).await;
    let (token, kb) = tenant_with_document(&app, "kinds", Value::Null).await;

    let reply = app
        .request(Method::GET, "/api/providers", Auth::Bearer(&token), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let listed: Vec<(String, String, bool)> = reply.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["kind"].as_str().unwrap().to_owned(),
                p["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        listed.contains(&("claude".into(), "anthropic".into(), true)),
        "{listed:?}"
    );
    assert!(
        listed.contains(&("groq".into(), "openai-compatible".into(), true)),
        "{listed:?}"
    );
    assert!(
        listed.contains(&("ollama".into(), "openai-compatible".into(), true)),
        "{listed:?}"
    );
    assert!(
        !reply.body.to_string().contains(&server),
        "addresses stay private"
    );

    for (provider, model, said) in [
        ("claude", "claude-sonnet", ANTHROPIC_SAID),
        ("groq", "llama-3.3-70b", OPENAI_SAID),
    ] {
        let reply = query(
            &app,
            &token,
            json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": provider, "model": model}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["data"]["answer"], said, "{}", reply.body);
        assert_eq!(reply.body["data"]["extractive"], false);
        assert_eq!(reply.body["data"]["provider"], provider);
        assert_eq!(reply.body["data"]["model"], model);

        let (tokens, done) = read_stream(
            &query(
                &app,
                &token,
                json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": provider, "model": model, "stream": true}),
            )
            .await,
        );
        assert_eq!(tokens, said, "{provider} streamed");
        assert_eq!(done["extractive"], false, "{done}");
        assert_eq!(done["provider"], provider);
        assert_eq!(done["citations"][0]["n"], 1);
    }

    // Exactly two calls each, at the kind's path, the second one streamed.
    let claude = calls.to("/claude");
    assert_eq!(claude.len(), 2, "{claude:?}");
    assert!(claude.iter().all(|c| c.path == "/claude/v1/messages"));
    assert!(claude.iter().all(|c| anthropic_problem(c).is_none()));
    assert!(claude[0].body.get("stream").is_none());
    assert_eq!(claude[1].body["stream"], true);
    assert_eq!(claude[0].body["model"], "claude-sonnet");
    assert_eq!(claude[0].body["max_tokens"], 512);
    assert!(
        claude[0].body["system"].as_str().unwrap().contains("[1]"),
        "the passages go in the system prompt"
    );
    let groq = calls.to("/groq");
    assert_eq!(groq.len(), 2, "{groq:?}");
    assert!(groq.iter().all(|c| c.path == "/groq/v1/chat/completions"));
    assert_eq!(
        header(&groq[0].headers, "authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(groq.iter().all(|c| !c.headers.contains_key("x-api-key")));
    assert_eq!(groq[1].body["stream"], true);
    assert!(
        calls.to("/ollama").is_empty(),
        "the tenant's model was not asked"
    );

    // Without a choice, the tenant's own model server answers with its model.
    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb]}),
    )
    .await;
    assert_eq!(reply.body["data"]["answer"], OPENAI_SAID, "{}", reply.body);
    assert_eq!(reply.body["data"]["provider"], "ollama");
    assert_eq!(reply.body["data"]["model"], "local-model");
    assert_eq!(calls.to("/ollama").len(), 1);
}

#[tokio::test]
async fn strict_sovereignty_allows_only_the_tenants_model_server() {
    let db = TestDb::new().await;
    let (server, calls) = scripted_providers().await;
    let app = TestApp::with_workers(config(&db, &server, "strict")).await;
    let (token, kb) = tenant_with_document(&app, "strict", Value::Null).await;

    for stream in [false, true] {
        let reply = query(
            &app,
            &token,
            json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "claude", "model": "claude-sonnet", "stream": stream}),
        )
        .await;
        assert_refused(&reply, &["\"claude\"", "strict"]);
    }
    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "groq"}),
    )
    .await;
    assert_refused(&reply, &["\"groq\""]);

    // A knowledge base cannot make an external provider its default either.
    let reply = app
        .request(
            Method::PATCH,
            &format!("/api/knowledge-bases/{kb}"),
            Auth::Bearer(&token),
            Some(json!({"generation": {"provider": "groq", "model": "llama"}})),
        )
        .await;
    assert_refused(&reply, &["\"groq\""]);

    for (method, path, body, token) in [
        (
            Method::POST,
            "/api/knowledge-bases".to_owned(),
            json!({"name": "outside", "generation": {"provider": "claude", "model": "c"}}),
            token.as_str(),
        ),
        (
            Method::PUT,
            "/internal/tenants/strict/knowledge-bases/outside".to_owned(),
            common::kb_registration(
                "strict",
                "outside",
                json!({"generation": {"provider": "claude", "model": "c"}}),
            ),
            common::OPERATOR_TOKEN,
        ),
    ] {
        let reply = app
            .request(method, &path, Auth::Bearer(token), Some(body))
            .await;
        assert_refused(&reply, &["\"claude\""]);
    }

    let reply = app
        .request(Method::GET, "/api/providers", Auth::Bearer(&token), None)
        .await;
    let allowed: Vec<&str> = reply.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["allowed"] == true)
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(allowed, ["ollama"]);

    // The in-namespace model server is allowed by name.
    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "ollama", "model": "other-local"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["data"]["answer"], OPENAI_SAID, "{}", reply.body);
    assert_eq!(reply.body["data"]["model"], "other-local");

    assert!(
        calls.to("/claude").is_empty() && calls.to("/groq").is_empty(),
        "no call left the tenant"
    );
}

#[tokio::test]
async fn an_unknown_provider_is_refused_by_name() {
    let db = TestDb::new().await;
    let (server, _calls) = scripted_providers().await;
    let app = TestApp::with_workers(config(&db, &server, "open")).await;
    let (token, kb) = tenant_with_document(&app, "unknown", Value::Null).await;
    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "mistral", "model": "m"}),
    )
    .await;
    assert_refused(&reply, &["\"mistral\"", "not configured"]);
    // An external provider has no default model: the query must name one.
    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "groq"}),
    )
    .await;
    assert_refused(&reply, &["model"]);
}

#[tokio::test]
async fn a_knowledge_base_default_answers_when_the_query_names_none() {
    let db = TestDb::new().await;
    let (server, calls) = scripted_providers().await;
    let app = TestApp::with_workers(config(&db, &server, "open")).await;
    let (token, kb) = tenant_with_document(
        &app,
        "defaults",
        json!({"provider": "claude", "model": "claude-haiku"}),
    )
    .await;

    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.body["data"]["answer"], ANTHROPIC_SAID,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["data"]["model"], "claude-haiku");
    assert_eq!(reply.body["data"]["provider"], "claude");
    let (tokens, done) = read_stream(
        &query(
            &app,
            &token,
            json!({"query": QUESTION, "knowledge_base_ids": [kb], "stream": true}),
        )
        .await,
    );
    assert_eq!(tokens, ANTHROPIC_SAID);
    assert_eq!(done["model"], "claude-haiku");
    // The query's own choice wins over the default.
    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "groq", "model": "g-1"}),
    )
    .await;
    assert_eq!(reply.body["data"]["answer"], OPENAI_SAID, "{}", reply.body);
    assert_eq!(reply.body["data"]["model"], "g-1");
    assert_eq!(calls.to("/claude").len(), 2);

    // Removing the default gives the question back to the tenant's model server.
    let reply = app
        .request(
            Method::PATCH,
            &format!("/api/knowledge-bases/{kb}"),
            Auth::Bearer(&token),
            Some(json!({"generation": null})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body["data"]["generation"].is_null(), "{}", reply.body);
    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb]}),
    )
    .await;
    assert_eq!(reply.body["data"]["provider"], "ollama", "{}", reply.body);

    // A knowledge base registered by the operator keeps its spec.generation.
    let reply = app
        .request(
            Method::PUT,
            "/internal/tenants/defaults/knowledge-bases/from-operator",
            Auth::Bearer(common::OPERATOR_TOKEN),
            Some(common::kb_registration(
                "defaults",
                "from-operator",
                json!({"generation": {"provider": "groq", "model": "g-2"}}),
            )),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let registered = reply.body["data"]["id"].as_str().unwrap().to_owned();
    let reply = app
        .request(
            Method::GET,
            &format!("/api/knowledge-bases/{registered}"),
            Auth::Bearer(&token),
            None,
        )
        .await;
    assert_eq!(
        reply.body["data"]["generation"],
        json!({"provider": "groq", "model": "g-2"}),
        "{}",
        reply.body
    );
    // The first knowledge base of the query with a default names the model.
    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb, registered]}),
    )
    .await;
    assert_eq!(reply.body["data"]["answer"], OPENAI_SAID, "{}", reply.body);
    assert_eq!(reply.body["data"]["model"], "g-2");
}

#[tokio::test]
async fn a_failing_provider_falls_back_to_the_passages_and_says_so() {
    let db = TestDb::new().await;
    let (server, calls) = scripted_providers().await;
    let app = TestApp::with_workers(config(&db, &server, "open")).await;
    let (token, kb) = tenant_with_document(&app, "fallback", Value::Null).await;

    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "broken", "model": "m"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["data"]["extractive"], true);
    assert_eq!(reply.body["data"]["provider"], "broken");
    assert!(
        reply.body["data"]["answer"]
            .as_str()
            .unwrap()
            .contains("trente jours")
    );

    let (tokens, done) = read_stream(
        &query(
            &app,
            &token,
            json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "broken", "model": "m", "stream": true}),
        )
        .await,
    );
    assert!(tokens.contains("trente jours"), "{tokens}");
    assert_eq!(done["extractive"], true, "{done}");

    // An Anthropic stream that breaks off before its first word.
    let (tokens, done) = read_stream(
        &query(
            &app,
            &token,
            json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "claude", "model": "breaks-off", "stream": true}),
        )
        .await,
    );
    assert!(tokens.contains("trente jours"), "{tokens}");
    assert_eq!(done["extractive"], true, "{done}");
    assert_eq!(calls.to("/broken").len(), 2);
    assert_eq!(calls.to("/claude").len(), 1);
}

/// Workflow agents go through the same providers: an Anthropic agent feeds an
/// OpenAI-compatible one, each called in its own protocol.
#[tokio::test]
async fn workflow_agents_speak_their_providers_protocols() {
    let db = TestDb::new().await;
    let (server, calls) = scripted_providers().await;
    let config = iafactory_api::config::Config {
        workflow_scheduler_tick_seconds: 0,
        ..config(&db, &server, "open")
    };
    let app = TestApp::with_workflows(config).await;
    let admin = app.register("agents").await;
    let reply = app
        .request(
            Method::POST,
            "/api/workflows",
            Auth::Bearer(&admin.token),
            Some(json!({"name": "pair", "agents": [
                {"name": "drafter", "role": "r", "provider": "claude", "model": "claude-w", "prompt": "{{input}}"},
                {"name": "checker", "role": "r", "provider": "groq", "model": "g-w", "prompt": "{{agents.drafter.output}}", "dependsOn": ["drafter"]},
            ]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let workflow = reply.body["data"]["id"].as_str().unwrap().to_owned();
    let reply = app
        .request(
            Method::POST,
            &format!("/api/workflows/{workflow}/executions"),
            Auth::Bearer(&admin.token),
            Some(json!({"input": "draft it"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let execution = reply.body["data"]["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let view = loop {
        let reply = app
            .request(
                Method::GET,
                &format!("/api/workflows/{workflow}/executions/{execution}"),
                Auth::Bearer(&admin.token),
                None,
            )
            .await;
        let view = reply.body["data"].clone();
        if !matches!(view["status"].as_str(), Some("pending" | "running")) {
            break view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(view["status"], "succeeded", "{view:#}");
    let claude = calls.to("/claude");
    assert_eq!(claude.len(), 1, "{claude:?}");
    assert_eq!(claude[0].path, "/claude/v1/messages");
    assert_eq!(claude[0].body["messages"][0]["content"], "draft it");
    let groq = calls.to("/groq");
    assert_eq!(groq.len(), 1, "{groq:?}");
    // The second agent read the first one's answer, given in Anthropic's shape.
    assert_eq!(groq[0].body["messages"][1]["content"], ANTHROPIC_SAID);
}

/// The names of a stream's events, in order.
fn event_names(reply: &common::Reply) -> Vec<String> {
    let text = reply.body.as_str().expect("an SSE body");
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("event:")))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// A model that invents what its passages do not say is not believed: the passages
/// answer instead, plain or streamed, and the response says why.
#[tokio::test]
async fn an_answer_its_passages_do_not_support_is_replaced_by_them() {
    let db = TestDb::new().await;
    let (server, calls) = scripted_providers().await;
    let app = TestApp::with_workers(config(&db, &server, "open")).await;
    let (token, kb) = tenant_with_document(&app, "grounding", Value::Null).await;

    let reply = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "groq", "model": INVENTS}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let data = &reply.body["data"];
    assert_eq!(data["extractive"], true, "{data}");
    assert_eq!(data["extractive_reason"], "ungrounded", "{data}");
    assert!(data["grounded_share"].as_f64().unwrap() < 0.6, "{data}");
    let answer = data["answer"].as_str().unwrap();
    assert!(answer.contains("trente jours"), "{answer}");
    assert!(!answer.contains("croisière"), "{answer}");

    let streamed = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "groq", "model": INVENTS, "stream": true}),
    )
    .await;
    let names = event_names(&streamed);
    assert_eq!(
        names.iter().filter(|n| *n == "replace").count(),
        1,
        "{names:?}"
    );
    assert_eq!(names.last().map(String::as_str), Some("done"), "{names:?}");
    let (shown, done) = read_stream(&streamed);
    assert!(shown.contains("trente jours"), "{shown}");
    assert!(!shown.contains("croisière"), "{shown}");
    assert_eq!(done["extractive"], true, "{done}");
    assert_eq!(done["extractive_reason"], "ungrounded", "{done}");
    assert_eq!(calls.to("/groq").len(), 2);

    // A grounded answer is kept, with its share; a stream without a model says so.
    let kept = query(
        &app,
        &token,
        json!({"query": QUESTION, "knowledge_base_ids": [kb], "provider": "groq", "model": "g"}),
    )
    .await;
    assert_eq!(kept.body["data"]["answer"], OPENAI_SAID, "{}", kept.body);
    assert_eq!(kept.body["data"]["extractive_reason"], Value::Null);
    assert_eq!(kept.body["data"]["grounded_share"], 1.0);

    let metrics = app.request(Method::GET, "/metrics", Auth::None, None).await;
    let metrics = metrics.body.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("rag_replaced_answers_total{reason=\"ungrounded\"} 2"),
        "{metrics}"
    );
}

/// A 422 whose message names every one of `needles`.
fn assert_refused(reply: &common::Reply, needles: &[&str]) {
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(
        needles.iter().all(|needle| message.contains(needle)),
        "{message} should name {needles:?}"
    );
}
