//! Multi-agent workflows against the real PostgreSQL, the real llama.cpp server, and
//! a scripted OpenAI-compatible provider for the failures a real one cannot be made
//! to produce on demand (500s, hangs).

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Utc};
use common::{Auth, TestApp, TestDb};
use serde_json::{Value, json};

/// An OpenAI-compatible `/chat/completions` whose behaviour the model name picks:
/// `instant`, `slow-<ms>`, `fail-once` (500, then answers), `always-500`, `hang`.
/// It answers with the user message it got, so templating can be checked.
async fn scripted_provider() -> String {
    // Calls so far, per model.
    let calls = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        usize,
    >::new()));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let calls = calls.clone();
            async move {
                let model = body["model"].as_str().unwrap_or_default().to_owned();
                let prompt = body["messages"][1]["content"].as_str().unwrap_or_default().to_owned();
                let call = {
                    let mut calls = calls.lock().unwrap();
                    let count = calls.entry(model.clone()).or_default();
                    *count += 1;
                    *count
                };
                let answer = || {
                    axum::Json(json!({
                        "choices": [{"message": {"role": "assistant", "content": format!("<{model}> {prompt}")}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7}
                    }))
                    .into_response()
                };
                use axum::response::IntoResponse;
                match model.as_str() {
                    "hang" => {
                        tokio::time::sleep(Duration::from_secs(600)).await;
                        answer()
                    }
                    "always-500" => (StatusCode::INTERNAL_SERVER_ERROR, "overloaded").into_response(),
                    "fail-once" if call == 1 => (StatusCode::BAD_GATEWAY, "warming up").into_response(),
                    m if m.starts_with("slow-") => {
                        let ms: u64 = m.trim_start_matches("slow-").parse().unwrap_or(100);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        answer()
                    }
                    _ => answer(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/v1")
}

async fn app_with_provider(db: &TestDb) -> TestApp {
    let provider = scripted_provider().await;
    let config = iafactory_api::config::Config {
        llm_base_url: Some(provider),
        workflow_agent_retries: 2,
        workflow_scheduler_tick_seconds: 0,
        ..common::config(db)
    };
    TestApp::with_workflows(config).await
}

fn agent(name: &str, depends_on: &[&str], model: &str, prompt: &str) -> Value {
    json!({"name": name, "role": "analyst", "provider": "ollama", "model": model, "prompt": prompt, "dependsOn": depends_on})
}

async fn create(app: &TestApp, token: &str, name: &str, agents: Vec<Value>) -> String {
    let reply = app
        .request(
            Method::POST,
            "/api/workflows",
            Auth::Bearer(token),
            Some(json!({"name": name, "agents": agents})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["data"]["id"].as_str().unwrap().to_owned()
}

async fn start(app: &TestApp, token: &str, workflow: &str, input: &str) -> String {
    let reply = app
        .request(
            Method::POST,
            &format!("/api/workflows/{workflow}/executions"),
            Auth::Bearer(token),
            Some(json!({"input": input})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    reply.body["data"]["id"].as_str().unwrap().to_owned()
}

async fn execution(app: &TestApp, token: &str, workflow: &str, id: &str) -> Value {
    let reply = app
        .request(
            Method::GET,
            &format!("/api/workflows/{workflow}/executions/{id}"),
            Auth::Bearer(token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["data"].clone()
}

async fn wait_finished(
    app: &TestApp,
    token: &str,
    workflow: &str,
    id: &str,
    limit: Duration,
) -> Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let view = execution(app, token, workflow, id).await;
        if !matches!(view["status"].as_str(), Some("pending" | "running")) {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn step<'a>(view: &'a Value, agent: &str) -> &'a Value {
    view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agent"] == agent)
        .unwrap_or_else(|| panic!("no step {agent}: {view:#}"))
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_chain_and_a_diamond_run_on_the_real_llama_server_with_parallel_branches() {
    let db = TestDb::new().await;
    let config = iafactory_api::config::Config {
        workflow_max_tokens: 48,
        workflow_scheduler_tick_seconds: 0,
        ..common::rag_config(&db)
    };
    let model = common::engine_url("IAF_TEST_LLM_MODEL", "llama");
    let app = TestApp::with_workflows(config).await;
    let tenant = app.register("chain").await;

    let chain = create(
        &app,
        &tenant.token,
        "chain",
        vec![
            agent(
                "researcher",
                &[],
                &model,
                "List two facts about {{input}}. Be brief.",
            ),
            agent(
                "analyzer",
                &["researcher"],
                &model,
                "Which fact matters most? Facts: {{agents.researcher.output}}",
            ),
            agent(
                "writer",
                &["analyzer"],
                &model,
                "Write one sentence from: {{agents.analyzer.output}}",
            ),
        ],
    )
    .await;
    let id = start(&app, &tenant.token, &chain, "the city of Tlemcen").await;
    let view = wait_finished(&app, &tenant.token, &chain, &id, Duration::from_secs(240)).await;
    assert_eq!(view["status"], "succeeded", "{view:#}");
    for name in ["researcher", "analyzer", "writer"] {
        let step = step(&view, name);
        assert_eq!(step["status"], "succeeded");
        assert!(
            !step["output"].as_str().unwrap().trim().is_empty(),
            "{name} wrote nothing"
        );
        assert!(step["completion_tokens"].as_i64().unwrap() > 0);
    }
    // The analyzer read what the researcher wrote.
    let researched = step(&view, "researcher")["output"].as_str().unwrap();
    assert!(
        step(&view, "analyzer")["input"]
            .as_str()
            .unwrap()
            .contains(researched.trim())
    );
    assert_eq!(view["output"], step(&view, "writer")["output"]);
    assert!(view["completion_tokens"].as_i64().unwrap() >= 3);

    let diamond = create(
        &app,
        &tenant.token,
        "diamond",
        vec![
            agent("a", &[], &model, "Name a colour. {{input}}"),
            agent(
                "b",
                &["a"],
                &model,
                "Name a fruit of colour {{agents.a.output}}",
            ),
            agent(
                "c",
                &["a"],
                &model,
                "Name an animal of colour {{agents.a.output}}",
            ),
            agent(
                "d",
                &["b", "c"],
                &model,
                "Combine {{agents.b.output}} and {{agents.c.output}}",
            ),
        ],
    )
    .await;
    let id = start(&app, &tenant.token, &diamond, "One word.").await;
    let view = wait_finished(&app, &tenant.token, &diamond, &id, Duration::from_secs(240)).await;
    assert_eq!(view["status"], "succeeded", "{view:#}");
    let (b, c, a, d) = (
        step(&view, "b"),
        step(&view, "c"),
        step(&view, "a"),
        step(&view, "d"),
    );
    assert!(
        time(&b["started_at"]) < time(&c["finished_at"])
            && time(&c["started_at"]) < time(&b["finished_at"]),
        "b and c did not overlap: {view:#}"
    );
    assert!(
        time(&a["finished_at"]) <= time(&b["started_at"])
            && time(&a["finished_at"]) <= time(&c["started_at"])
    );
    assert!(time(&d["started_at"]) >= time(&b["finished_at"]).max(time(&c["finished_at"])));
}

#[tokio::test]
async fn transient_errors_are_retried_timeouts_fail_and_independent_branches_finish() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db).await;
    let tenant = app.register("faults").await;

    let retried = create(
        &app,
        &tenant.token,
        "retried",
        vec![agent("flaky", &[], "fail-once", "{{input}}")],
    )
    .await;
    let id = start(&app, &tenant.token, &retried, "hello").await;
    let view = wait_finished(&app, &tenant.token, &retried, &id, Duration::from_secs(30)).await;
    assert_eq!(view["status"], "succeeded", "{view:#}");
    assert_eq!(step(&view, "flaky")["attempts"], 2);
    assert_eq!(view["output"], "<fail-once> hello");

    let mut slow = agent("stuck", &[], "hang", "{{input}}");
    slow["timeoutSeconds"] = json!(1);
    let timed_out = create(&app, &tenant.token, "timed-out", vec![slow]).await;
    let id = start(&app, &tenant.token, &timed_out, "x").await;
    let view = wait_finished(
        &app,
        &tenant.token,
        &timed_out,
        &id,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["failed_agent"], "stuck");
    let stuck = step(&view, "stuck");
    assert!(
        stuck["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 1 s"),
        "{stuck:#}"
    );
    assert_eq!(stuck["attempts"], 1, "a timeout is not retried");

    let branches = create(
        &app,
        &tenant.token,
        "branches",
        vec![
            agent("root", &[], "instant", "{{input}}"),
            agent("broken", &["root"], "always-500", "{{agents.root.output}}"),
            agent(
                "after-broken",
                &["broken"],
                "instant",
                "{{agents.broken.output}}",
            ),
            agent("healthy", &["root"], "slow-200", "{{agents.root.output}}"),
        ],
    )
    .await;
    let id = start(&app, &tenant.token, &branches, "go").await;
    let view = wait_finished(&app, &tenant.token, &branches, &id, Duration::from_secs(30)).await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["failed_agent"], "broken");
    assert!(
        view["error"].as_str().unwrap().contains("\"broken\""),
        "{view:#}"
    );
    assert_eq!(step(&view, "broken")["status"], "failed");
    assert_eq!(
        step(&view, "broken")["attempts"],
        3,
        "two retries after the first attempt"
    );
    assert_eq!(step(&view, "after-broken")["status"], "skipped");
    assert_eq!(step(&view, "healthy")["status"], "succeeded");
    assert_eq!(step(&view, "healthy")["output"], "<slow-200> <instant> go");
}

#[tokio::test]
async fn invalid_definitions_are_rejected_naming_the_agent() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db).await;
    let tenant = app.register("invalid").await;
    let cases: Vec<(&str, Vec<Value>, &str)> = vec![
        (
            "cycle",
            vec![
                agent("loop-one", &["loop-two"], "m", "x"),
                agent("loop-two", &["loop-one"], "m", "x"),
            ],
            "loop-one",
        ),
        (
            "missing dependency",
            vec![agent("orphan", &["ghost"], "m", "x")],
            "orphan",
        ),
        (
            "duplicate",
            vec![agent("twin", &[], "m", "x"), agent("twin", &[], "m", "y")],
            "twin",
        ),
        (
            "not an ancestor",
            vec![
                agent("source", &[], "m", "x"),
                agent("peeker", &[], "m", "{{agents.source.output}}"),
            ],
            "peeker",
        ),
        (
            "unknown variable",
            vec![agent("curious", &[], "m", "{{secret}}")],
            "curious",
        ),
        (
            "external provider",
            vec![
                json!({"name": "outside", "role": "r", "provider": "openai", "model": "gpt", "prompt": "x"}),
            ],
            "outside",
        ),
        (
            "missing knowledge base",
            vec![
                json!({"name": "reader", "role": "r", "provider": "ollama", "model": "m", "prompt": "x", "knowledgeBase": "nowhere"}),
            ],
            "reader",
        ),
    ];

    for (case, agents, named) in cases {
        let reply = app
            .request(
                Method::POST,
                "/api/workflows",
                Auth::Bearer(&tenant.token),
                Some(json!({"name": "wf", "agents": agents})),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: {}",
            reply.body
        );
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{case}: {message}");
    }
    let reply = app
        .request(
            Method::GET,
            "/api/workflows",
            Auth::Bearer(&tenant.token),
            None,
        )
        .await;
    assert_eq!(reply.body["meta"]["total"], 0, "nothing invalid was stored");

    let id = create(
        &app,
        &tenant.token,
        "taken",
        vec![agent("a", &[], "instant", "x")],
    )
    .await;
    let reply = app
        .request(
            Method::POST,
            "/api/workflows",
            Auth::Bearer(&tenant.token),
            Some(json!({"name": "taken", "agents": [agent("a", &[], "instant", "x")]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    let reply = app
        .request(
            Method::PUT,
            &format!("/api/workflows/{id}"),
            Auth::Bearer(&tenant.token),
            Some(json!({"name": "taken", "agents": [agent("a", &["a"], "instant", "x")]})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an update is validated too"
    );
}

#[tokio::test]
async fn another_tenants_workflows_and_executions_are_not_found() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db).await;
    let owner = app.register("owner").await;
    let other = app.register("other").await;
    let workflow = create(
        &app,
        &owner.token,
        "private",
        vec![agent("a", &[], "instant", "{{input}}")],
    )
    .await;
    let id = start(&app, &owner.token, &workflow, "secret input").await;
    wait_finished(&app, &owner.token, &workflow, &id, Duration::from_secs(30)).await;

    for (method, path, body) in [
        (Method::GET, format!("/api/workflows/{workflow}"), None),
        (
            Method::PUT,
            format!("/api/workflows/{workflow}"),
            Some(json!({"name": "x", "agents": [agent("a", &[], "instant", "x")]})),
        ),
        (Method::DELETE, format!("/api/workflows/{workflow}"), None),
        (
            Method::POST,
            format!("/api/workflows/{workflow}/executions"),
            Some(json!({"input": "x"})),
        ),
        (
            Method::GET,
            format!("/api/workflows/{workflow}/executions"),
            None,
        ),
        (
            Method::GET,
            format!("/api/workflows/{workflow}/executions/{id}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/workflows/{workflow}/executions/{id}/cancel"),
            None,
        ),
        (
            Method::GET,
            format!("/api/workflows/{workflow}/executions/{id}/events"),
            None,
        ),
    ] {
        let reply = app
            .request(method.clone(), &path, Auth::Bearer(&other.token), body)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            reply.body
        );
    }
    let reply = app
        .request(
            Method::GET,
            "/api/workflows",
            Auth::Bearer(&other.token),
            None,
        )
        .await;
    assert_eq!(reply.body["meta"]["total"], 0);
    // Still there for its owner.
    assert_eq!(
        execution(&app, &owner.token, &workflow, &id).await["status"],
        "succeeded"
    );
}

/// Reads a whole SSE body into its `status` events.
async fn sse_events(router: &axum::Router, token: &str, path: &str) -> Vec<Value> {
    use http_body_util::BodyExt;
    let request = axum::http::Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(router.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
        .await
        .expect("the stream ends after execution.finished")
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes)
        .split("\n\n")
        .filter_map(|frame| {
            frame
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(|d| serde_json::from_str(d.trim()).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_cancelled_run_stops_cleanly_and_sse_shows_every_transition_in_order() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db).await;
    let tenant = app.register("cancel").await;
    let workflow = create(
        &app,
        &tenant.token,
        "long",
        vec![
            agent("quick", &[], "instant", "{{input}}"),
            agent("stuck", &["quick"], "hang", "{{agents.quick.output}}"),
            agent("never", &["stuck"], "instant", "x"),
        ],
    )
    .await;
    let id = start(&app, &tenant.token, &workflow, "go").await;
    let events_path = format!("/api/workflows/{workflow}/executions/{id}/events");
    let follower = {
        let router = app.router.clone();
        let token = tenant.token.clone();
        let path = events_path.clone();
        tokio::spawn(async move { sse_events(&router, &token, &path).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view = execution(&app, &tenant.token, &workflow, &id).await;
        if step(&view, "stuck")["status"] == "running" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stuck never started: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = app
        .request(
            Method::POST,
            &format!("/api/workflows/{workflow}/executions/{id}/cancel"),
            Auth::Bearer(&tenant.token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let view = wait_finished(&app, &tenant.token, &workflow, &id, Duration::from_secs(10)).await;
    assert_eq!(view["status"], "cancelled");
    assert_eq!(step(&view, "quick")["status"], "succeeded");
    assert_eq!(step(&view, "stuck")["status"], "cancelled");
    assert_eq!(step(&view, "never")["status"], "cancelled");

    let events = follower.await.unwrap();
    let seen: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                e["type"].as_str().unwrap(),
                e["agent"]
                    .as_str()
                    .map(|a| format!(":{a}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "execution.started",
            "agent.started:quick",
            "agent.succeeded:quick",
            "agent.started:stuck",
            "agent.cancelled:stuck",
            "execution.finished"
        ],
    );
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap()["data"]["status"], "cancelled");

    // A late follower replays the same log and ends at once.
    assert_eq!(
        sse_events(&app.router, &tenant.token, &events_path)
            .await
            .len(),
        6
    );
    let reply = app
        .request(
            Method::POST,
            &format!("/api/workflows/{workflow}/executions/{id}/cancel"),
            Auth::Bearer(&tenant.token),
            None,
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CONFLICT,
        "a finished run cannot be cancelled"
    );
}

#[tokio::test]
async fn a_cron_tick_fires_once_with_two_api_instances() {
    let db = TestDb::new().await;
    let first = app_with_provider(&db).await;
    let second = app_with_provider(&db).await;
    let tenant = first.register("cron").await;
    let reply = first
        .request(
            Method::POST,
            "/api/workflows",
            Auth::Bearer(&tenant.token),
            Some(json!({"name": "hourly", "agents": [agent("a", &[], "instant", "{{input}}")], "trigger": {"schedule": "* * * * *"}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let workflow = reply.body["data"]["id"].as_str().unwrap().to_owned();

    let window = Duration::from_secs(35);
    // Ten seconds past a minute: that minute's tick is due.
    let base = DateTime::from_timestamp(Utc::now().timestamp() / 60 * 60 + 10, 0).unwrap();
    let mut fired = 0;
    for minute in 0..3 {
        let now = base + chrono::Duration::minutes(minute);
        let (a, b) = tokio::join!(
            iafactory_api::workflows::schedule::fire_due(&first.state, now, window),
            iafactory_api::workflows::schedule::fire_due(&second.state, now, window),
        );
        let started = a.unwrap().len() + b.unwrap().len();
        assert_eq!(started, 1, "tick {minute} fired {started} times");
        fired += started;
        // The same tick seen again later fires nothing.
        let again = iafactory_api::workflows::schedule::fire_due(
            &second.state,
            now + chrono::Duration::seconds(1),
            window,
        )
        .await
        .unwrap();
        assert!(again.is_empty());
    }
    let reply = first
        .request(
            Method::GET,
            &format!("/api/workflows/{workflow}/executions?limit=10"),
            Auth::Bearer(&tenant.token),
            None,
        )
        .await;
    assert_eq!(reply.body["meta"]["total"], fired);
    for run in reply.body["data"].as_array().unwrap() {
        assert_eq!(run["trigger"], "schedule");
        wait_finished(
            &first,
            &tenant.token,
            &workflow,
            run["id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    }
}

#[tokio::test]
async fn the_websocket_streams_agent_status_to_a_jwt_holder_only() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let db = TestDb::new().await;
    let provider = scripted_provider().await;
    let config = iafactory_api::config::Config {
        llm_base_url: Some(provider),
        workflow_scheduler_tick_seconds: 0,
        ..common::config(&db)
    };
    let state = common::state(config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tokio::spawn(iafactory_api::server::serve(
        state,
        listener,
        internal,
        async {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let registered: Value = http
        .post(format!("http://{address}/api/auth/register"))
        .json(&json!({"tenant_name": "W", "tenant_slug": "ws", "email": "a@ws.dz", "password": "a long enough password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let refused = tokio_tungstenite::connect_async(format!("ws://{address}/ws?token=forged")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("a forged token must be refused, got {other:?}"),
    }

    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/ws?token={token}"))
            .await
            .unwrap();
    socket
        .send(Message::Text(
            json!({"type": "subscribe", "channel": "agent_status"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let subscribed = socket.next().await.unwrap().unwrap();
    assert!(
        subscribed.to_text().unwrap().contains("subscribed"),
        "{subscribed:?}"
    );

    let workflow: Value = http
        .post(format!("http://{address}/api/workflows"))
        .bearer_auth(&token)
        .json(&json!({"name": "ws", "agents": [agent("a", &[], "instant", "{{input}}"), agent("b", &["a"], "instant", "{{agents.a.output}}")]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let workflow = workflow["data"]["id"].as_str().unwrap().to_owned();
    let started: Value = http
        .post(format!(
            "http://{address}/api/workflows/{workflow}/executions"
        ))
        .bearer_auth(&token)
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let execution = started["data"]["id"].as_str().unwrap().to_owned();

    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("execution.finished") {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("agent status keeps coming until the run finishes")
            .unwrap()
            .unwrap();
        let message: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        assert_eq!(message["type"], "agent_status");
        assert_eq!(message["execution_id"], execution.as_str());
        seen.push(message["event"]["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen,
        [
            "execution.started",
            "agent.started",
            "agent.succeeded",
            "agent.started",
            "agent.succeeded",
            "execution.finished"
        ]
    );
    drop(socket);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_sample_workflow_registered_like_the_operator_does_runs_as_written() {
    use iafactory_crds::manifest::{Manifest, load_paths};
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let mut workflow_spec = None;
    let mut kb_spec = None;
    for loaded in load_paths(&[
        samples.join("workflow-synthese.yaml"),
        samples.join("knowledgebase-reglements.yaml"),
    ])
    .unwrap()
    {
        match loaded.manifest {
            Manifest::Workflow(w) => workflow_spec = Some(w.spec),
            Manifest::KnowledgeBase(kb) => kb_spec = Some(kb.spec),
            Manifest::Tenant(_) => {}
        }
    }
    let db = TestDb::new().await;
    let config = iafactory_api::config::Config {
        workflow_max_tokens: 32,
        workflow_scheduler_tick_seconds: 0,
        ..common::rag_config(&db)
    };
    let app = TestApp::with_workflows(config).await;
    let operator = Auth::Bearer(common::OPERATOR_TOKEN);
    let reply = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-tlemcen",
            operator,
            Some(json!({"name": "Université de Tlemcen", "plan": "pro"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-tlemcen/knowledge-bases/reglements",
            operator,
            Some(common::kb_registration(
                "univ-tlemcen",
                "reglements",
                serde_json::to_value(kb_spec.unwrap()).unwrap(),
            )),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-tlemcen/workflows/synthese",
            operator,
            Some(common::workflow_registration(
                "univ-tlemcen",
                "synthese",
                serde_json::to_value(workflow_spec.unwrap()).unwrap(),
            )),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let workflow = reply.body["data"]["id"].as_str().unwrap().to_owned();

    // A tenant admin of that tenant, bootstrapped as the appliance does, runs it.
    let reply = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-tlemcen/admins/dsi@univ-tlemcen.dz",
            operator,
            Some(json!({"password": "a long enough password"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = app
        .request(
            Method::POST,
            "/api/auth/login",
            Auth::None,
            Some(json!({"email": "dsi@univ-tlemcen.dz", "password": "a long enough password"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let admin = reply.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = start(&app, &admin, &workflow, "le calendrier des examens").await;
    let view = wait_finished(&app, &admin, &workflow, &id, Duration::from_secs(240)).await;
    assert_eq!(view["status"], "succeeded", "{view:#}");
    for agent in ["collecte", "analyse", "synthese"] {
        assert_eq!(step(&view, agent)["status"], "succeeded");
    }
    // Registered by the operator: read-only through the public API.
    let reply = app
        .request(
            Method::DELETE,
            &format!("/api/workflows/{workflow}"),
            Auth::Bearer(&admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_signed_out_token_opens_no_websocket() {
    let db = TestDb::new().await;
    let state = common::state(common::config(&db)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tokio::spawn(iafactory_api::server::serve(
        state,
        listener,
        internal,
        async {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let registered: Value = http
        .post(format!("http://{address}/api/auth/register"))
        .json(&json!({"tenant_name": "W", "tenant_slug": "ws-out", "email": "a@ws-out.dz", "password": "a long enough password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws?token={token}"))
        .await
        .expect("a live session opens a socket");
    drop(socket);
    let logout = http
        .post(format!("http://{address}/api/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 200);
    match tokio_tungstenite::connect_async(format!("ws://{address}/ws?token={token}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("a signed-out token must be refused, got {other:?}"),
    }
    let _ = stop.send(());
    let _ = server.await;
}

/// Two knowledge bases, each with one document that says something only it knows.
/// Returns (alpha id, alpha document, beta id, beta document).
async fn two_knowledge_bases(app: &TestApp, token: &str) -> (String, String, String, String) {
    let mut made = Vec::new();
    for (name, text) in [
        (
            "alpha",
            "Le coffre de la faculté alpha s'ouvre avec le code TOURNESOL. Le code du coffre est changé chaque semestre.",
        ),
        (
            "beta",
            "Le coffre de la faculté beta s'ouvre avec le code MIMOSA. Le code du coffre est changé chaque semestre.",
        ),
    ] {
        let reply = app
            .request(
                Method::POST,
                "/api/knowledge-bases",
                Auth::Bearer(token),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        let kb = reply.body["data"]["id"].as_str().unwrap().to_owned();
        let reply = app
            .request(
                Method::POST,
                &format!("/api/knowledge-bases/{kb}/documents"),
                Auth::Bearer(token),
                Some(json!({"title": format!("{name} coffre"), "text": text})),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.body);
        let document = reply.body["data"]["id"].as_str().unwrap().to_owned();
        let ready = app
            .wait_for_documents(token, &kb, std::slice::from_ref(&document))
            .await;
        assert_eq!(ready[0]["status"], "ready", "{ready:?}");
        made.push((kb, document));
    }
    let (beta, alpha) = (made.pop().unwrap(), made.pop().unwrap());
    (alpha.0, alpha.1, beta.0, beta.1)
}

fn reader(knowledge_base: &str) -> Value {
    json!({"name": "reader", "role": "archivist", "provider": "ollama", "model": "instant",
           "prompt": "Quel est le code du coffre ? {{input}}", "knowledgeBase": knowledge_base})
}

fn cited_documents(step: &Value) -> Vec<String> {
    step["citations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["document_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_key_restricted_to_one_knowledge_base_cannot_read_another_through_a_workflow() {
    let db = TestDb::new().await;
    let provider = scripted_provider().await;
    let config = iafactory_api::config::Config {
        llm_base_url: Some(provider),
        workflow_scheduler_tick_seconds: 0,
        ..common::rag_config(&db)
    };
    let app = TestApp::with_workers(config).await;
    let admin = app.register("kb-leak").await;
    let (alpha, alpha_doc, _beta, beta_doc) = two_knowledge_bases(&app, &admin.token).await;
    let (key, _) = app
        .create_key(
            &admin.token,
            json!({"name": "alpha only", "scopes": ["query"], "knowledge_base_ids": [alpha]}),
        )
        .await;
    let reads_beta = create(&app, &admin.token, "reads-beta", vec![reader("beta")]).await;
    let reads_alpha = create(&app, &admin.token, "reads-alpha", vec![reader("alpha")]).await;

    // At start: a workflow with an agent on another knowledge base is refused, naming it.
    let refused = app
        .request(
            Method::POST,
            &format!("/api/workflows/{reads_beta}/executions"),
            Auth::Key(&key),
            Some(json!({"input": "vite"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"beta\"") && message.contains("\"reader\""),
        "{message}"
    );
    let listed = app
        .request(
            Method::GET,
            &format!("/api/workflows/{reads_beta}/executions"),
            Auth::Bearer(&admin.token),
            None,
        )
        .await;
    assert_eq!(
        listed.body["meta"]["total"], 0,
        "nothing ran: {}",
        listed.body
    );

    // Within its knowledge base, the key runs the workflow; the citations are alpha's.
    let started = app
        .request(
            Method::POST,
            &format!("/api/workflows/{reads_alpha}/executions"),
            Auth::Key(&key),
            Some(json!({"input": "vite"})),
        )
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    let id = started.body["data"]["id"].as_str().unwrap().to_owned();
    let view = wait_finished(
        &app,
        &admin.token,
        &reads_alpha,
        &id,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(view["status"], "succeeded", "{view:#}");
    let cited = cited_documents(step(&view, "reader"));
    assert!(cited.contains(&alpha_doc), "{view:#}");
    assert!(!cited.contains(&beta_doc), "{view:#}");

    // During the run: the restriction travels with the execution, so an agent whose
    // knowledge base resolves outside the key's set (here: a run recorded as started by
    // that key on the beta workflow, as if beta had been renamed after the start check)
    // retrieves nothing from it.
    let tenant = admin.tenant_id;
    let spec: iafactory_crds::WorkflowSpec =
        serde_json::from_value(json!({"agents": [reader("beta")]})).unwrap();
    let key_identity: iafactory_api::auth::KeyIdentity = {
        let me = app
            .request(Method::GET, "/api/auth/me", Auth::Key(&key), None)
            .await;
        iafactory_api::auth::KeyIdentity {
            id: me.body["data"]["key_id"].as_str().unwrap().parse().unwrap(),
            knowledge_base_ids: Some(vec![alpha.parse().unwrap()]),
            rate_limit_per_minute: 100_000,
            expires_at: None,
        }
    };
    let request = iafactory_api::workflows::engine::ExecutionRequest {
        tenant_id: tenant,
        workflow_id: reads_beta.parse().unwrap(),
        spec,
        input: "vite".into(),
        trigger: "manual",
        key: Some(key_identity),
    };
    let mut tx = iafactory_api::db::tenant_tx(&app.state.db, tenant)
        .await
        .unwrap();
    let execution = iafactory_api::workflows::engine::create(&mut tx, &request)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    iafactory_api::workflows::engine::spawn(app.state.clone(), request, execution);
    let view = wait_finished(
        &app,
        &admin.token,
        &reads_beta,
        &execution.to_string(),
        Duration::from_secs(60),
    )
    .await;
    let reader_step = step(&view, "reader");
    assert!(
        !cited_documents(reader_step).contains(&beta_doc),
        "beta's passages leaked into the step: {view:#}"
    );
    assert_eq!(reader_step["status"], "failed", "{view:#}");
    assert!(
        reader_step["error"]
            .as_str()
            .unwrap_or_default()
            .contains("knowledge base"),
        "{view:#}"
    );
}
