//! Qdrant's own engine (qdrant-edge) behind its gRPC API, from tests/qdrant-testserver:
//! one process per test, on a free port, with its own storage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iafactory_api::rag::qdrant::{QdrantSettings, QdrantStore};
use qdrant_client::Qdrant;

/// One test server process; killed when dropped.
pub struct QdrantServer {
    child: Child,
    port: u16,
    storage: PathBuf,
    pub api_key: Option<String>,
}

impl QdrantServer {
    pub fn start(storage: &Path, api_key: Option<&str>) -> Self {
        Self::start_on(storage, 0, api_key)
    }

    /// On `port` (0: a free one), over `storage`: a restarted server finds its
    /// collections again.
    pub fn start_on(storage: &Path, port: u16, api_key: Option<&str>) -> Self {
        let binary = super::engine_url("IAF_TEST_QDRANT_SERVER", "qdrant");
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--storage")
            .arg(storage)
            .env_remove("QDRANT__SERVICE__API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(key) = api_key {
            command.arg("--api-key").arg(key);
        }
        let mut child = command.spawn().expect("the Qdrant test server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        // The server says where it listens once it accepts connections.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = sender.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("the Qdrant test server says where it listens");
        let address: std::net::SocketAddr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            port: address.port(),
            storage: storage.to_owned(),
            api_key: api_key.map(str::to_owned),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it, as a crash would: what was acknowledged must survive (Qdrant's WAL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The old socket may linger a moment after the kill.
        loop {
            if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "port {} stays taken", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        let restarted = Self::start_on(&self.storage, self.port, self.api_key.as_deref());
        // The old one, already dead, is dropped here.
        drop(std::mem::replace(self, restarted));
    }

    pub fn store(&self) -> QdrantStore {
        self.store_with_key(self.api_key.as_deref())
    }

    pub fn store_with_key(&self, api_key: Option<&str>) -> QdrantStore {
        QdrantStore::new(&QdrantSettings {
            url: self.url(),
            api_key: api_key.map(str::to_owned),
            timeout: Duration::from_secs(10),
        })
        .unwrap()
    }

    pub fn client(&self) -> Qdrant {
        Qdrant::from_url(&self.url())
            .api_key(self.api_key.clone())
            .skip_compatibility_check()
            .build()
            .unwrap()
    }
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        self.kill();
    }
}
