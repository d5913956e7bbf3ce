//! Health, readiness, metrics, OpenAPI, request ids, the internal API, shutdown.

mod common;

use axum::http::{Method, Request, StatusCode};
use common::{Auth, TestApp, TestDb};
use serde_json::json;

#[tokio::test]
async fn health_readiness_metrics_and_openapi() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    assert_eq!(
        app.request(Method::GET, "/healthz", Auth::None, None)
            .await
            .status,
        StatusCode::OK
    );
    let ready = app.request(Method::GET, "/readyz", Auth::None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    app.register("metrics").await;

    let metrics = app.request(Method::GET, "/metrics", Auth::None, None).await;
    let text = metrics.body.as_str().unwrap();
    for series in [
        "iafactory_api_http_requests_total{method=\"POST\",route=\"/api/auth/register\",status=\"201\"} 1",
        "iafactory_api_http_request_duration_seconds_bucket",
        "iafactory_api_db_pool_connections{state=\"idle\"}",
        "iafactory_api_db_pool_max_connections 8",
    ] {
        assert!(text.contains(series), "{series} in:\n{text}");
    }

    let openapi = app
        .request(Method::GET, "/openapi.json", Auth::None, None)
        .await;
    let paths = openapi.body["paths"].as_object().unwrap();
    for path in [
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/me",
        "/api/keys",
        "/api/keys/{id}",
        "/internal/tenants/{slug}/workflows/{name}",
        "/internal/tenants/{slug}/admins/{email}",
    ] {
        assert!(paths.contains_key(path), "{path} documented");
    }
}

#[tokio::test]
async fn readiness_waits_for_migrations() {
    let db = TestDb::new().await;
    let config = common::config(&db);
    // A state whose migrations were never applied.
    iafactory_api::db::migrate(&config.database_url)
        .await
        .unwrap();
    iafactory_api::db::provision_app_role(
        &config.database_url,
        config.database_app_password.expose(),
    )
    .await
    .unwrap();
    let pool = iafactory_api::db::connect(
        &config.database_url,
        config.database_app_password.expose(),
        2,
    )
    .await
    .unwrap();
    let state = iafactory_api::state::AppState::new(config, pool)
        .await
        .unwrap();
    let app = iafactory_api::app::app(state.clone());
    let reply = tower::ServiceExt::oneshot(
        app.clone(),
        Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    state.mark_migrated();
    let reply = tower::ServiceExt::oneshot(
        app,
        Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let given = app
        .send(
            Request::get("/healthz")
                .header("x-request-id", "trace-42")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(given.headers["x-request-id"], "trace-42");
    let generated = app
        .send(
            Request::get("/api/auth/me")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    let id = generated.headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let junk = app
        .send(
            Request::get("/healthz")
                .header("x-request-id", "a".repeat(300))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert!(
        uuid::Uuid::parse_str(junk.headers["x-request-id"].to_str().unwrap()).is_ok(),
        "an overlong id is replaced"
    );
}

#[tokio::test]
async fn internal_endpoints_need_the_operator_token_and_validate_specs() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let operator = Auth::Bearer(common::OPERATOR_TOKEN);
    let tenant = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-oran",
            Auth::None,
            Some(json!({"name": "Université d'Oran", "plan": "pro"})),
        )
        .await;
    assert_eq!(tenant.status, StatusCode::UNAUTHORIZED);
    let wrong = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-oran",
            Auth::Bearer("guess"),
            Some(json!({"name": "x", "plan": "pro"})),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let tenant = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-oran",
            operator,
            Some(json!({"name": "Université d'Oran", "plan": "pro"})),
        )
        .await;
    assert_eq!(tenant.status, StatusCode::OK, "{}", tenant.body);
    let again = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-oran",
            operator,
            Some(json!({"name": "Université d'Oran", "plan": "enterprise"})),
        )
        .await;
    assert_eq!(
        again.body["data"]["id"], tenant.body["data"]["id"],
        "upsert by slug"
    );
    assert_eq!(again.body["data"]["plan"], "enterprise");

    let kb = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-oran/knowledge-bases/reglements",
            operator,
            Some(common::kb_registration(
                "univ-oran",
                "reglements",
                json!({"languages": ["fr", "ar"], "chunking": {"size": 800, "overlap": 120}}),
            )),
        )
        .await;
    assert_eq!(kb.status, StatusCode::OK, "{}", kb.body);
    assert_eq!(kb.body["data"]["documents"], 0);
    let bad_kb = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-oran/knowledge-bases/x",
            operator,
            Some(common::kb_registration(
                "univ-oran",
                "x",
                json!({"chunking": {"size": 50}}),
            )),
        )
        .await;
    assert_eq!(
        bad_kb.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        bad_kb.body
    );
    // A plan for another tenant or another resource (a driver's bug) registers nothing.
    for (path, body, field) in [
        (
            "/internal/tenants/univ-oran/knowledge-bases/reglements",
            common::kb_registration("univ-tlemcen", "reglements", json!({})),
            "tenant",
        ),
        (
            "/internal/tenants/univ-oran/workflows/w",
            common::workflow_registration(
                "univ-oran",
                "other",
                json!({"agents": [{"name": "a", "role": "writer", "model": "m", "prompt": "{{input}}"}]}),
            ),
            "name",
        ),
    ] {
        let misdirected = app.request(Method::PUT, path, operator, Some(body)).await;
        assert_eq!(
            misdirected.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            misdirected.body
        );
        assert_eq!(misdirected.body["error"]["fields"][0]["field"], field);
    }
    let missing_tenant = app
        .request(
            Method::GET,
            "/internal/tenants/nobody/knowledge-bases/reglements",
            operator,
            None,
        )
        .await;
    assert_eq!(missing_tenant.status, StatusCode::NOT_FOUND);

    let agent = |name: &str, deps: &[&str], prompt: &str| json!({"name": name, "role": "writer", "model": "m", "prompt": prompt, "dependsOn": deps});
    let cycle = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-oran/workflows/w",
            operator,
            Some(common::workflow_registration(
                "univ-oran",
                "w",
                json!({"agents": [agent("a", &["b"], "x"), agent("b", &["a"], "y")]}),
            )),
        )
        .await;
    assert_eq!(cycle.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        cycle.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cycle"),
        "{}",
        cycle.body
    );
    // Fields are named as in the manifest, not in Rust's spelling.
    let too_short = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-oran/workflows/w",
            operator,
            Some(common::workflow_registration(
                "univ-oran",
                "w",
                json!({"agents": [agent("a", &[], "x")], "timeoutSeconds": 5}),
            )),
        )
        .await;
    assert_eq!(too_short.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        too_short.body["error"]["fields"][0]["field"], "timeoutSeconds",
        "{}",
        too_short.body
    );
    let not_ancestor = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-oran/workflows/w",
            operator,
            Some(common::workflow_registration(
                "univ-oran",
                "w",
                json!({"agents": [agent("a", &[], "x"), agent("b", &[], "{{agents.a.output}}")]}),
            )),
        )
        .await;
    assert_eq!(not_ancestor.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(not_ancestor.body["error"]["fields"][0]["field"], "agents.b");
    let good = app
        .request(Method::PUT, "/internal/tenants/univ-oran/workflows/w", operator, Some(common::workflow_registration("univ-oran", "w", json!({"agents": [agent("a", &[], "{{input}}"), agent("b", &["a"], "{{agents.a.output}}")]}))))
        .await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.body);
    assert_eq!(good.body["data"]["valid_dag"], true);
    let fetched = app
        .request(
            Method::GET,
            "/internal/tenants/univ-oran/workflows/w",
            operator,
            None,
        )
        .await;
    assert_eq!(fetched.body["data"]["agents"], 2);
    assert!(fetched.body["data"]["last_execution"].is_null());
}

/// The operator and the appliance send every resource at every reconcile: the same spec
/// again leaves its row untouched (the same row version, the same updated_at); a changed
/// spec is written.
#[tokio::test]
async fn registering_an_unchanged_spec_again_does_not_rewrite_its_row() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let operator = Auth::Bearer(common::OPERATOR_TOKEN);
    let superuser = sqlx::PgPool::connect(&db.url).await.unwrap();
    // xmin changes with every rewrite of a row, even within the same clock tick.
    let version = |table: &'static str| {
        let superuser = superuser.clone();
        async move {
            sqlx::query_as::<_, (String, chrono::DateTime<chrono::Utc>)>(&format!(
                "SELECT xmin::text, updated_at FROM {table}"
            ))
            .fetch_one(&superuser)
            .await
            .unwrap()
        }
    };
    let put = |path: &'static str, body: serde_json::Value| {
        let app = &app;
        async move {
            let reply = app.request(Method::PUT, path, operator, Some(body)).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
            reply
        }
    };
    let tenant = json!({"name": "Université d'Oran", "plan": "pro"});
    let kb = common::kb_registration(
        "univ-oran",
        "reglements",
        json!({"languages": ["fr", "ar"], "chunking": {"size": 800, "overlap": 120}}),
    );
    let workflow = common::workflow_registration(
        "univ-oran",
        "w",
        json!({"agents": [{"name": "a", "role": "writer", "model": "m", "prompt": "{{input}}"}]}),
    );
    let first = put("/internal/tenants/univ-oran", tenant.clone()).await;
    put(
        "/internal/tenants/univ-oran/knowledge-bases/reglements",
        kb.clone(),
    )
    .await;
    put("/internal/tenants/univ-oran/workflows/w", workflow.clone()).await;
    let before = (
        version("tenants").await,
        version("knowledge_bases").await,
        version("workflows").await,
    );

    let again = put("/internal/tenants/univ-oran", tenant).await;
    assert_eq!(
        again.body["data"], first.body["data"],
        "the same record comes back"
    );
    let kb_again = put("/internal/tenants/univ-oran/knowledge-bases/reglements", kb).await;
    assert_eq!(kb_again.body["data"]["name"], "reglements");
    let workflow_again = put("/internal/tenants/univ-oran/workflows/w", workflow).await;
    assert_eq!(workflow_again.body["data"]["agents"], 1);
    assert_eq!(
        before,
        (
            version("tenants").await,
            version("knowledge_bases").await,
            version("workflows").await,
        ),
        "an unchanged spec rewrote a row"
    );

    put(
        "/internal/tenants/univ-oran",
        json!({"name": "Université d'Oran", "plan": "enterprise"}),
    )
    .await;
    put(
        "/internal/tenants/univ-oran/knowledge-bases/reglements",
        common::kb_registration(
            "univ-oran",
            "reglements",
            json!({"languages": ["fr"], "chunking": {"size": 800, "overlap": 120}}),
        ),
    )
    .await;
    put(
        "/internal/tenants/univ-oran/workflows/w",
        common::workflow_registration(
            "univ-oran",
            "w",
            json!({"agents": [{"name": "a", "role": "writer", "model": "m", "prompt": "{{input}}!"}]}),
        ),
    )
    .await;
    let after = (
        version("tenants").await,
        version("knowledge_bases").await,
        version("workflows").await,
    );
    assert_ne!(before.0.0, after.0.0, "a changed tenant was not written");
    assert_ne!(
        before.1.0, after.1.0,
        "a changed knowledge base was not written"
    );
    assert_ne!(before.2.0, after.2.0, "a changed workflow was not written");
    superuser.close().await;
}

#[tokio::test]
async fn the_internal_api_is_off_without_a_token() {
    let db = TestDb::new().await;
    let mut config = common::config(&db);
    config.operator_token = iafactory_api::config::Secret::default();
    let app = TestApp::with_config(config).await;
    let reply = app
        .request(
            Method::PUT,
            "/internal/tenants/x",
            Auth::Bearer(""),
            Some(json!({"name": "x", "plan": "free"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let db = TestDb::new().await;
    let state = common::state(common::config(&db)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let in_flight_gauge = state.metrics.requests_in_flight.clone();
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
    // A login is slow on purpose (argon2): it is in flight when shutdown starts.
    let register = http
        .post(format!("http://{address}/api/auth/register"))
        .json(&json!({"tenant_name": "S", "tenant_slug": "shutdown", "email": "a@s.dz", "password": "a long enough password"}))
        .send();
    let in_flight = tokio::spawn(register);
    // Shut down only once the server is serving it: a request still in the client's
    // hands when the listener closes was never in flight.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while in_flight_gauge.get() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the server"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let _ = stop.send(());
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 201, "the in-flight request completed");
    server.await.unwrap().unwrap();
    assert!(
        http.get(format!("http://{address}/healthz"))
            .send()
            .await
            .is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn dependency_probes_tell_which_dependency_is_down() {
    let db = TestDb::new().await;
    // A model server that is not there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = iafactory_api::config::Config {
        llm_base_url: Some(format!("http://{closed}/v1")),
        ..common::config(&db)
    };
    let app = TestApp::with_config(config).await;
    iafactory_api::probe::probe_once(&app.state, &reqwest::Client::new()).await;
    let text = app.state.metrics.encode();
    assert!(
        text.contains("iafactory_api_dependency_up{dependency=\"postgres\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("iafactory_api_dependency_up{dependency=\"vector_store\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("iafactory_api_dependency_up{dependency=\"ollama\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn the_operator_token_sets_a_tenants_administrator_and_never_moves_another_tenants_user() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let operator = Auth::Bearer(common::OPERATOR_TOKEN);
    let put_admin = |email: &'static str, password: &'static str, auth: Auth<'static>| {
        let app = &app;
        async move {
            app.request(
                Method::PUT,
                &format!("/internal/tenants/univ-oran/admins/{email}"),
                auth,
                Some(json!({ "password": password })),
            )
            .await
        }
    };
    let login = |email: &'static str, password: &'static str| {
        let app = &app;
        async move {
            app.request(
                Method::POST,
                "/api/auth/login",
                Auth::None,
                Some(json!({ "email": email, "password": password })),
            )
            .await
            .status
        }
    };

    let no_tenant = put_admin("root@univ-oran.dz", "a long enough password", operator).await;
    assert_eq!(
        no_tenant.status,
        StatusCode::NOT_FOUND,
        "{}",
        no_tenant.body
    );
    let tenant = app
        .request(
            Method::PUT,
            "/internal/tenants/univ-oran",
            operator,
            Some(json!({"name": "Université d'Oran", "plan": "pro"})),
        )
        .await;
    assert_eq!(tenant.status, StatusCode::OK, "{}", tenant.body);

    let wrong_token = put_admin(
        "root@univ-oran.dz",
        "a long enough password",
        Auth::Bearer("guess"),
    )
    .await;
    assert_eq!(wrong_token.status, StatusCode::UNAUTHORIZED);
    let weak = put_admin("root@univ-oran.dz", "short", operator).await;
    assert_eq!(
        weak.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        weak.body
    );
    let not_an_address = put_admin("root", "a long enough password", operator).await;
    assert_eq!(not_an_address.status, StatusCode::UNPROCESSABLE_ENTITY);

    let created = put_admin("root@univ-oran.dz", "a long enough password", operator).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(created.body["data"]["role"], "tenant_admin");
    assert_eq!(created.body["data"]["tenant_id"], tenant.body["data"]["id"]);
    assert_eq!(
        login("root@univ-oran.dz", "a long enough password").await,
        StatusCode::OK
    );

    // Again, with a new password: the same user, and only the new password works.
    let reset = put_admin("root@univ-oran.dz", "another long password", operator).await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.body);
    assert_eq!(reset.body["data"]["id"], created.body["data"]["id"]);
    assert_eq!(
        login("root@univ-oran.dz", "a long enough password").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login("root@univ-oran.dz", "another long password").await,
        StatusCode::OK
    );

    // Another tenant's administrator keeps their tenant and their password.
    app.register("usthb").await;
    let taken = put_admin("admin@usthb.dz", "a takeover attempt", operator).await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.body);
    assert_eq!(
        login("admin@usthb.dz", "a long enough password").await,
        StatusCode::OK
    );
    assert_eq!(
        login("admin@usthb.dz", "a takeover attempt").await,
        StatusCode::UNAUTHORIZED
    );
}
