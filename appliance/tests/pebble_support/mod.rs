//! A real Pebble (Let's Encrypt's test CA) and pebble-challtestsrv (its DNS) per test,
//! on free ports: shared by the library-level ACME tests and the `iafactory serve` one.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use iafactory_appliance::certs::AcmeSettings;
use tokio::process::{Child, Command};

use crate::gateway_support::wait_for;

fn engine(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run scripts/test, or scripts/engines.sh up pebble && source /tmp/iafactory-engines/env")
    })
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both UDP and TCP (the DNS server listens on both).
fn free_dns_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Pebble {
    dir: tempfile::TempDir,
    pub directory_url: String,
    pub management: SocketAddr,
    pub challtestsrv: SocketAddr,
    /// Trusts Pebble's own HTTPS listeners (not the certificates it issues).
    api_client: reqwest::Client,
    _processes: Vec<Child>,
}

impl Pebble {
    /// Starts challtestsrv (DNS only, no default address: a name resolves only once a
    /// test adds it) and Pebble, validating HTTP-01 on `http01_port`.
    pub async fn start(http01_port: u16) -> Self {
        Self::start_with_validity(http01_port, None).await
    }

    /// [`Self::start`], with the certificates Pebble issues valid for `validity`
    /// (Pebble's default, five years, when `None`).
    pub async fn start_with_validity(http01_port: u16, validity: Option<Duration>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let api_cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("api.pem"), api_cert.pem()).unwrap();
        std::fs::write(dir.path().join("api-key.pem"), key.serialize_pem()).unwrap();

        let (listen, management) = (free_tcp_port(), free_tcp_port());
        let (dns, challtestsrv) = (free_dns_port(), free_tcp_port());
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("api.pem"),
            "privateKey": dir.path().join("api-key.pem"),
            "httpPort": http01_port,
            "tlsPort": free_tcp_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(validity) = validity {
            config["pebble"]["certificateValidityPeriod"] = validity.as_secs().into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();

        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let challtestsrv_process = Command::new(engine("IAF_TEST_PEBBLE_CHALLTESTSRV"))
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{challtestsrv}")])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pebble_process = Command::new(engine("IAF_TEST_PEBBLE"))
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random sleeps before validating, no rejected nonces: faster, same protocol.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.stderr.log"))
            .kill_on_drop(true)
            .spawn()
            .unwrap();

        let api_client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(api_cert.pem().as_bytes()).unwrap(),
            )
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let pebble = Self {
            directory_url: format!("https://127.0.0.1:{listen}/dir"),
            management: format!("127.0.0.1:{management}").parse().unwrap(),
            challtestsrv: format!("127.0.0.1:{challtestsrv}").parse().unwrap(),
            api_client,
            dir,
            _processes: vec![challtestsrv_process, pebble_process],
        };
        let client = pebble.api_client.clone();
        let url = pebble.directory_url.clone();
        wait_for(Duration::from_secs(60), "Pebble's directory", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        pebble
    }

    /// Makes `host` resolve to 127.0.0.1 in the DNS Pebble uses.
    pub async fn add_a(&self, host: &str) {
        let url = format!("http://{}/add-a", self.challtestsrv);
        let body = serde_json::json!({"host": host, "addresses": ["127.0.0.1"]});
        wait_for(
            Duration::from_secs(60),
            "challtestsrv's management API",
            || {
                let (url, body) = (url.clone(), body.clone());
                async move {
                    reqwest::Client::new()
                        .post(url)
                        .json(&body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    /// The root Pebble signs its certificates with (it changes at every start).
    pub async fn root_pem(&self) -> String {
        let response = self
            .api_client
            .get(format!("https://{}/roots/0", self.management))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.text().await.unwrap()
    }

    pub fn settings(&self) -> AcmeSettings {
        AcmeSettings {
            directory_url: self.directory_url.clone(),
            contact_email: Some("ops@example.test".to_owned()),
            server_root_pem: Some(self.dir.path().join("api.pem")),
            order_timeout: Duration::from_secs(60),
        }
    }

    pub fn logs(&self) -> String {
        ["pebble.log", "pebble.stderr.log", "challtestsrv.log"]
            .iter()
            .map(|name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The root Pebble's own HTTPS listeners present (what an ACME client must trust to
    /// talk to it, not what the certificates it issues chain to).
    pub fn api_root_path(&self) -> PathBuf {
        self.dir.path().join("api.pem")
    }
}
