//! Who the client is. The peer address, unless the peer is one of our own proxies (the
//! appliance's gateway, the ingress controller): then the nearest `X-Forwarded-For` hop
//! that is not one of them.
//!
//! Each proxy appends the address it received the request from, so reading the header
//! from the right, every hop up to the first untrusted one was written by a proxy we
//! trust; anything to its left was written by the client and proves nothing. Taking the
//! leftmost entry, as a naive reading does, lets every client choose its own bucket.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "IAF_TRUSTED_PROXIES: {entry:?} is neither an address nor a CIDR (write them comma-separated, like 172.18.0.1,10.0.0.0/8)"
)]
pub struct InvalidProxy {
    pub entry: String,
}

/// The addresses of the proxies in front of the API (`IAF_TRUSTED_PROXIES`), empty by
/// default: with none, the client is always the peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// A comma-separated list of CIDRs; a bare address stands for itself alone.
    pub fn parse(list: &str) -> Result<Self, InvalidProxy> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(parse_network)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client of a request that came from `peer` with these `X-Forwarded-For`
    /// header values (in the order they appear).
    pub fn client_address<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        // The nearest address known to be real so far: a proxy's own.
        let mut nearest = peer;
        for hop in hops.iter().rev() {
            let Some(address) = parse_hop(hop) else {
                // A trusted proxy never writes this: the hop came from the client side.
                // What lies beyond it cannot be believed.
                return nearest;
            };
            if !self.contains(address) {
                return address;
            }
            nearest = address;
        }
        nearest
    }
}

fn parse_network(entry: &str) -> Result<IpNet, InvalidProxy> {
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map(|network| match network {
            // `::ffff:a.b.c.d/ n` would never match: addresses are compared canonical.
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) if v6.prefix_len() >= 96 => {
                    IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(network)
                }
                _ => network,
            },
            v4 => v4,
        })
        .map_err(|_| InvalidProxy {
            entry: entry.to_owned(),
        })
}

/// `1.2.3.4`, `2001:db8::1`, and the forms with a port some proxies write
/// (`1.2.3.4:5678`, `[2001:db8::1]:5678`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
        .map(|address| address.to_canonical())
}

/// A list setting as one comma-separated string: the environment gives `a,b`, a
/// configuration file may give `["a", "b"]`.
pub(crate) fn comma_separated<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(list) => list.join(","),
        ListOrString::String(text) => text,
    })
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(&comma_separated(deserializer)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn gateway() -> TrustedProxies {
        TrustedProxies::parse("172.18.0.1, 10.0.0.0/8").unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let proxies = gateway();
        assert_eq!(
            proxies.client_address(ip("198.51.100.7"), ["203.0.113.9"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            TrustedProxies::default().client_address(ip("172.18.0.1"), ["203.0.113.9"]),
            ip("172.18.0.1"),
            "nothing is trusted by default"
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
        let proxies = gateway();
        // The client forged the first entry; the gateway appended the real one.
        assert_eq!(
            proxies.client_address(ip("172.18.0.1"), ["1.1.1.1, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        // Two proxies in a row, across two header lines.
        assert_eq!(
            proxies.client_address(ip("172.18.0.1"), ["6.6.6.6, 203.0.113.9", "10.1.2.3"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            proxies.client_address(ip("172.18.0.1"), ["[2001:db8::5]:4431"]),
            ip("2001:db8::5")
        );
    }

    #[test]
    fn a_trusted_peer_without_a_usable_hop_is_its_own_client() {
        let proxies = gateway();
        assert_eq!(
            proxies.client_address(ip("172.18.0.1"), []),
            ip("172.18.0.1")
        );
        assert_eq!(
            proxies.client_address(ip("172.18.0.1"), ["10.9.9.9"]),
            ip("10.9.9.9"),
            "every hop trusted: the farthest proxy"
        );
        assert_eq!(
            proxies.client_address(ip("172.18.0.1"), ["203.0.113.9, not-an-address"]),
            ip("172.18.0.1"),
            "garbage at the right end stops the walk"
        );
    }

    #[test]
    fn mapped_addresses_compare_as_ipv4() {
        let proxies = gateway();
        assert!(proxies.contains(ip("::ffff:172.18.0.1")));
        assert_eq!(
            proxies.client_address(ip("::ffff:172.18.0.1"), ["::ffff:203.0.113.9"]),
            ip("203.0.113.9")
        );
        let mapped = TrustedProxies::parse("::ffff:192.168.0.0/112").unwrap();
        assert!(mapped.contains(ip("192.168.3.4")));
    }

    #[test]
    fn a_bad_entry_is_named() {
        let error = TrustedProxies::parse("10.0.0.0/8, gateway").unwrap_err();
        assert_eq!(error.entry, "gateway");
        assert!(error.to_string().contains("IAF_TRUSTED_PROXIES"), "{error}");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }
}
