//! The `/ws` endpoint against a greedy client, on a real server and the real
//! PostgreSQL: 10,000 subscribe messages on one socket get 32 subscriptions and a clear
//! error for the rest, while another route keeps answering fast on a small pool; a
//! user's ninth socket is refused with 429; and followers wake on `NOTIFY`, not by
//! polling the database.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TestApp, TestDb, config};
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use iafactory_api::config::Config;
use iafactory_api::workflows::events::{
    EVENTS_CHANNEL, MAX_SOCKETS_PER_USER, MAX_SUBSCRIPTIONS_PER_SOCKET,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceExt;
use uuid::Uuid;

const SUBSCRIBES: usize = 10_000;

async fn serve(app: &TestApp) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    addr: SocketAddr,
    token: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .map(|(socket, _)| socket)
}

fn subscribe(execution_id: Uuid) -> Message {
    Message::text(
        json!({"type": "subscribe", "channel": "agent_status", "execution_id": execution_id})
            .to_string(),
    )
}

async fn next_json(socket: &mut Socket, within: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(within, socket.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(text)))) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("the socket ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscribes_leave_the_pool_to_other_routes() {
    let db = TestDb::new().await;
    let app = TestApp::with_workflows(Config {
        database_max_connections: 6,
        ..config(&db)
    })
    .await;
    let addr = serve(&app).await;
    let admin = app.register("greedy").await;

    // Another route, answered through the same pool, timed all along.
    let watcher = {
        let router = app.router.clone();
        let token = admin.token.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut answered = 0;
            let stop = Instant::now() + Duration::from_secs(6);
            while Instant::now() < stop {
                let start = Instant::now();
                let request = axum::http::Request::get("/api/workflows")
                    .header("authorization", format!("Bearer {token}"))
                    .body(axum::body::Body::empty())
                    .unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.unwrap();
                slowest = slowest.max(start.elapsed());
                answered += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (answered, slowest)
        })
    };

    let socket = connect(addr, &admin.token).await.unwrap();
    let (mut sink, mut stream) = socket.split();
    let reader = tokio::spawn(async move {
        let (mut subscribed, mut limited, mut message) = (0usize, 0usize, String::new());
        while subscribed + limited < SUBSCRIBES {
            let Some(Ok(Message::Text(text))) = stream.next().await else {
                panic!("the socket ended after {subscribed} + {limited} replies");
            };
            let reply: Value = serde_json::from_str(&text).unwrap();
            match reply["type"].as_str() {
                Some("subscribed") => subscribed += 1,
                Some("error") if reply["code"] == "subscription_limit" => {
                    limited += 1;
                    message = reply["message"].as_str().unwrap().to_owned();
                }
                _ => panic!("unexpected reply {reply}"),
            }
        }
        (subscribed, limited, message)
    });
    let start = Instant::now();
    for _ in 0..SUBSCRIBES {
        sink.feed(subscribe(Uuid::new_v4())).await.unwrap();
    }
    sink.flush().await.unwrap();
    let (subscribed, limited, message) = reader.await.unwrap();
    let answered_in = start.elapsed();
    assert_eq!(subscribed, MAX_SUBSCRIPTIONS_PER_SOCKET);
    assert_eq!(limited, SUBSCRIBES - MAX_SUBSCRIPTIONS_PER_SOCKET);
    assert!(message.contains("32 subscriptions"), "{message}");

    let (answered, slowest) = watcher.await.unwrap();
    println!(
        "{SUBSCRIBES} subscribes answered in {answered_in:?}; meanwhile GET /api/workflows answered {answered} times, the slowest in {slowest:?} (pool of 6)"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "another route waited {slowest:?} for the pool"
    );
    let pool = &app.state.db;
    assert!(pool.size() <= 6);
    drop(sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_sockets_are_capped_with_a_clear_answer() {
    let db = TestDb::new().await;
    let app = TestApp::with_workflows(config(&db)).await;
    let addr = serve(&app).await;
    let admin = app.register("sockets").await;
    let mut open = Vec::new();
    for _ in 0..MAX_SOCKETS_PER_USER {
        open.push(connect(addr, &admin.token).await.unwrap());
    }
    match connect(addr, &admin.token).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_sockets", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("already has 8 WebSockets open"),
                "{body}"
            );
        }
        other => panic!("a ninth socket was not refused: {:?}", other.map(|_| ())),
    }
    // One closed: a place frees up.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let start = Instant::now();
    loop {
        match connect(addr, &admin.token).await {
            Ok(socket) => {
                open.push(socket);
                break;
            }
            Err(error) => assert!(
                start.elapsed() < Duration::from_secs(5),
                "no place freed: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Followers read the log when `NOTIFY` says so, not on a timer: an event written
/// without its announcement stays unseen, and its announcement brings it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_wake_on_notify_not_by_polling() {
    let db = TestDb::new().await;
    let app = TestApp::with_workflows(config(&db)).await;
    let addr = serve(&app).await;
    let admin = app.register("notify").await;
    let direct = sqlx::PgPool::connect(&db.url).await.unwrap();
    let workflow: Uuid = sqlx::query_scalar(
        "INSERT INTO workflows (tenant_id, name, definition) VALUES ($1, 'w', '{}') RETURNING id",
    )
    .bind(admin.tenant_id)
    .fetch_one(&direct)
    .await
    .unwrap();
    let execution: Uuid = sqlx::query_scalar(
        "INSERT INTO workflow_executions (tenant_id, workflow_id, status, started_at) VALUES ($1, $2, 'running', now()) RETURNING id",
    )
    .bind(admin.tenant_id)
    .bind(workflow)
    .fetch_one(&direct)
    .await
    .unwrap();
    let append = |seq: i32, kind: &'static str| {
        sqlx::query(
            "INSERT INTO workflow_events (tenant_id, execution_id, seq, type) VALUES ($1, $2, $3, $4)",
        )
        .bind(admin.tenant_id)
        .bind(execution)
        .bind(seq)
        .bind(kind)
        .execute(&direct)
    };
    append(1, "execution.started").await.unwrap();

    let mut socket = connect(addr, &admin.token).await.unwrap();
    socket.send(subscribe(execution)).await.unwrap();
    let reply = next_json(&mut socket, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply["type"], "subscribed");
    let first = next_json(&mut socket, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first["event"]["type"], "execution.started", "{first}");

    // Written, not announced: a polling follower would deliver it within 2 s.
    append(2, "agent.started").await.unwrap();
    assert_eq!(
        next_json(&mut socket, Duration::from_secs(5)).await,
        None,
        "an unannounced event was delivered: the follower polls"
    );
    // Announced: delivered at once.
    let start = Instant::now();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(format!("{}/{execution}", admin.tenant_id))
        .execute(&direct)
        .await
        .unwrap();
    let second = next_json(&mut socket, Duration::from_secs(5))
        .await
        .expect("the announced event");
    assert_eq!(second["event"]["type"], "agent.started", "{second}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}
