//! What one open tenant may reach (pure): the host:port of each provider its plan
//! declares, at addresses that provider may have. Decided from the plan alone, as the
//! operator's `allow-llm-providers` NetworkPolicy is.

use std::net::IpAddr;

use iafactory_crds::plan::ProviderEgress;
use ipnet::IpNet;

/// Private, shared, loopback, link-local and other special ranges a provider declared
/// by name never reaches, so that a name resolving to one (a DNS rebinding, or a
/// provider's name pointed at the LAN) cannot open the box or the site's network.
/// Extends the operator's `PRIVATE_RANGES` with what a host process also sees:
/// loopback, the unspecified address, CGNAT, multicast and their IPv6 counterparts.
const NOT_PUBLIC: [&str; 15] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
    "::/127",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("provider {provider:?} declares {cidr:?}, which is not a CIDR")]
    Cidr { provider: String, cidr: String },
}

/// One declared provider, as the proxy checks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedProvider {
    pub name: String,
    /// Lowercase, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Where the host may be reached; empty: public addresses only.
    pub cidrs: Vec<IpNet>,
}

impl AllowedProvider {
    pub fn from_plan(provider: &ProviderEgress) -> Result<Self, PolicyError> {
        let cidrs = provider
            .cidrs
            .iter()
            .map(|cidr| {
                cidr.parse::<IpNet>()
                    .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| PolicyError::Cidr {
                        provider: provider.name.clone(),
                        cidr: cidr.clone(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: provider.name.clone(),
            host: normalise_host(&provider.host),
            port: provider.port,
            cidrs,
        })
    }

    /// Whether this provider may be reached at `ip`: inside its declared CIDRs, or,
    /// with none declared, at a public address.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.cidrs.is_empty() {
            is_public(ip)
        } else {
            self.cidrs.iter().any(|net| net.contains(&ip))
        }
    }
}

/// What an open tenant may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantPolicy {
    pub tenant: String,
    /// The tenant network's subnet: only its containers may use its proxy.
    pub subnet: IpNet,
    pub providers: Vec<AllowedProvider>,
}

impl TenantPolicy {
    /// The declared provider at `host:port`, matched exactly (names case-insensitively).
    pub fn provider(&self, host: &str, port: u16) -> Option<&AllowedProvider> {
        let host = normalise_host(host);
        self.providers
            .iter()
            .find(|p| p.port == port && p.host == host)
    }

    /// Whether a peer is a container of this tenant's network.
    pub fn admits(&self, peer: IpAddr) -> bool {
        self.subnet.contains(&canonical(peer))
    }
}

fn normalise_host(host: &str) -> String {
    host.trim_matches(['[', ']'])
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub fn is_public(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    !NOT_PUBLIC.iter().any(|range| {
        range
            .parse::<IpNet>()
            .expect("the ranges are CIDRs")
            .contains(&ip)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(host: &str, port: u16, cidrs: &[&str]) -> AllowedProvider {
        AllowedProvider {
            name: "p".into(),
            host: host.into(),
            port,
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_declared_host_and_port_match() {
        let policy = TenantPolicy {
            tenant: "t".into(),
            subnet: "172.18.0.0/16".parse().unwrap(),
            providers: vec![provider("api.deepseek.com", 443, &[])],
        };
        assert!(policy.provider("API.DeepSeek.com", 443).is_some());
        assert!(policy.provider("api.deepseek.com.", 443).is_some());
        assert!(policy.provider("api.deepseek.com", 80).is_none());
        assert!(policy.provider("deepseek.com", 443).is_none());
        assert!(policy.provider("api.deepseek.com.evil.dz", 443).is_none());
        assert!(policy.admits(ip("172.18.0.5")));
        assert!(policy.admits(ip("::ffff:172.18.0.5")));
        assert!(!policy.admits(ip("172.19.0.5")));
    }

    #[test]
    fn a_name_reaches_public_addresses_only_unless_its_cidrs_say_otherwise() {
        let by_name = provider("api.deepseek.com", 443, &[]);
        assert!(by_name.permits(ip("104.18.26.90")));
        assert!(by_name.permits(ip("2606:4700::6812:1a5a")));
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.17.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!by_name.permits(ip(private)), "{private}");
        }
        let on_the_lan = provider("llm.univ.dz", 8000, &["10.20.0.0/16"]);
        assert!(on_the_lan.permits(ip("10.20.3.4")));
        assert!(!on_the_lan.permits(ip("10.21.3.4")));
        assert!(!on_the_lan.permits(ip("104.18.26.90")));
    }

    #[test]
    fn the_plans_cidrs_are_parsed_and_a_bad_one_is_named() {
        let planned = ProviderEgress {
            name: "local".into(),
            kind: iafactory_crds::tenant::LlmProviderKind::OpenaiCompatible,
            base_url: "http://127.0.0.1:8080/v1".into(),
            host: "127.0.0.1".into(),
            port: 8080,
            cidrs: vec!["127.0.0.1/32".into()],
            secret: "s".into(),
            key: "k".into(),
        };
        let allowed = AllowedProvider::from_plan(&planned).unwrap();
        assert!(allowed.permits(ip("127.0.0.1")));
        assert!(!allowed.permits(ip("127.0.0.2")));
        let bad = ProviderEgress {
            cidrs: vec!["not-a-cidr".into()],
            ..planned
        };
        assert_eq!(
            AllowedProvider::from_plan(&bad).unwrap_err(),
            PolicyError::Cidr {
                provider: "local".into(),
                cidr: "not-a-cidr".into()
            }
        );
    }
}
