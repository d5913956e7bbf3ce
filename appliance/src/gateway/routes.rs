//! Which replicas a request may go to: a pure lookup of `<tenant>.<domain>`, or of a
//! tenant's own `spec.ingress.host`, in the route table, which the caller replaces
//! whenever the tenants or their replicas change (`iafactory serve` rebuilds it from
//! each observation of the API containers).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use http::uri::Authority;

use super::GatewayError;

/// A tenant's API, reached over plain HTTP (`host:port`) on its internal network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    authority: Authority,
}

impl Upstream {
    /// `host:port`, or `http://host:port`.
    pub fn http(address: &str) -> Result<Self, GatewayError> {
        let bare = address.strip_prefix("http://").unwrap_or(address);
        let bare = bare.strip_suffix('/').unwrap_or(bare);
        let authority: Authority = bare.parse().map_err(|err| GatewayError::InvalidUpstream {
            address: address.to_owned(),
            reason: format!("{err}"),
        })?;
        if authority.port_u16().is_none() {
            return Err(GatewayError::InvalidUpstream {
                address: address.to_owned(),
                reason: "it needs an explicit port, like api:8080".to_owned(),
            });
        }
        Ok(Self { authority })
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.authority.fmt(f)
    }
}

/// Why a host has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMiss {
    /// The host is not `<tenant>.<domain>` for this gateway's domain.
    ForeignHost { host: String, domain: String },
    /// The host is in our domain but no such tenant is served.
    UnknownTenant { tenant: String },
}

impl std::fmt::Display for RouteMiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ForeignHost { host, domain } => {
                write!(f, "this gateway serves <tenant>.{domain}, not {host:?}")
            }
            Self::UnknownTenant { tenant } => write!(f, "no tenant {tenant:?} on this appliance"),
        }
    }
}

/// Why a tenant's `spec.ingress.host` is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostConflict {
    /// Every name under the domain is `<tenant>.<domain>`: another tenant's name there
    /// would take that tenant's traffic.
    #[error(
        "tenant {tenant:?}: ingress.host {host:?} is under the appliance's domain {domain:?}, whose names are <tenant>.{domain}; use {tenant}.{domain} (always served) or a host outside it"
    )]
    UnderDomain {
        tenant: String,
        host: String,
        domain: String,
    },
    #[error(
        "ingress.host {host:?} is set by tenants {first:?} and {second:?}; a host serves one tenant, so neither is served at it"
    )]
    Taken {
        host: String,
        first: String,
        second: String,
    },
}

/// The hosts served beside `<tenant>.<domain>`: each tenant's `spec.ingress.host`
/// (`declared`: tenant, host), normalised. A tenant's own `<tenant>.<domain>` needs no
/// alias; a host under the domain, or one two tenants set, is a conflict and is not
/// served.
pub fn ingress_aliases<'a>(
    domain: &str,
    declared: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (BTreeMap<String, String>, Vec<HostConflict>) {
    let domain = normalise_host(domain);
    let mut claims: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (tenant, host) in declared {
        let (tenant, host) = (tenant.to_ascii_lowercase(), normalise_host(host));
        if host == format!("{tenant}.{domain}") {
            continue;
        }
        if host == domain || host.ends_with(&format!(".{domain}")) {
            conflicts.push(HostConflict::UnderDomain {
                tenant,
                host,
                domain: domain.clone(),
            });
            continue;
        }
        claims.entry(host).or_default().push(tenant);
    }
    let mut aliases = BTreeMap::new();
    for (host, mut tenants) in claims {
        tenants.sort();
        tenants.dedup();
        match tenants.as_slice() {
            [tenant] => {
                aliases.insert(host, tenant.clone());
            }
            [first, second, ..] => conflicts.push(HostConflict::Taken {
                host,
                first: first.clone(),
                second: second.clone(),
            }),
            [] => {}
        }
    }
    (aliases, conflicts)
}

/// `<tenant>.<domain>`, and each tenant's own host (`spec.ingress.host`) → the tenant's
/// API replicas that may take new requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    domain: String,
    tenants: BTreeMap<String, Vec<Upstream>>,
    /// A host outside the domain → its tenant ([`ingress_aliases`]).
    aliases: BTreeMap<String, String>,
}

impl RouteTable {
    pub fn new(domain: &str) -> Self {
        Self {
            domain: normalise_host(domain),
            tenants: BTreeMap::new(),
            aliases: BTreeMap::new(),
        }
    }

    /// Serves `tenant` at `host` too (a host outside the domain: see
    /// [`ingress_aliases`], which checks that).
    pub fn with_aliases(mut self, aliases: BTreeMap<String, String>) -> Self {
        self.aliases = aliases;
        self
    }

    /// Adds `upstream` to the tenant's replicas (a tenant named twice has two).
    pub fn with_tenant(mut self, tenant: &str, upstream: Upstream) -> Self {
        self.insert(tenant, upstream);
        self
    }

    /// Adds `upstream` to the tenant's replicas, once.
    pub fn insert(&mut self, tenant: &str, upstream: Upstream) {
        let replicas = self.tenants.entry(tenant.to_ascii_lowercase()).or_default();
        if !replicas.contains(&upstream) {
            replicas.push(upstream);
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Every served host name, `<tenant>.<domain>` and the tenants' own hosts.
    pub fn hostnames(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .tenants
            .keys()
            .map(|tenant| format!("{tenant}.{}", self.domain))
            .chain(
                self.aliases
                    .iter()
                    .filter(|(_, tenant)| self.tenants.contains_key(*tenant))
                    .map(|(host, _)| host.clone()),
            )
            .collect();
        names.sort();
        names
    }

    /// The tenant and its replicas (never empty) for a Host header or SNI value (port and
    /// case ignored).
    pub fn route(&self, host: &str) -> Result<(&str, &[Upstream]), RouteMiss> {
        let host = normalise_host(host);
        let in_domain = host
            .strip_suffix(&self.domain)
            .and_then(|rest| rest.strip_suffix('.'))
            .filter(|tenant| !tenant.is_empty() && !tenant.contains('.'));
        let tenant = in_domain
            .or_else(|| self.aliases.get(&host).map(String::as_str))
            .ok_or_else(|| RouteMiss::ForeignHost {
                host: host.clone(),
                domain: self.domain.clone(),
            })?;
        self.tenants
            .get_key_value(tenant)
            .filter(|(_, replicas)| !replicas.is_empty())
            .map(|(tenant, replicas)| (tenant.as_str(), replicas.as_slice()))
            .ok_or_else(|| RouteMiss::UnknownTenant {
                tenant: tenant.to_owned(),
            })
    }
}

/// Lower case, without a port or a trailing dot.
pub(crate) fn normalise_host(host: &str) -> String {
    let without_port = match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// The route table the gateway reads on every request; [`SharedRoutes::replace`] swaps in
/// a new one atomically. Cloning shares it.
#[derive(Debug, Clone)]
pub struct SharedRoutes {
    current: Arc<RwLock<Arc<RouteTable>>>,
}

impl SharedRoutes {
    pub fn new(table: RouteTable) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(table))),
        }
    }

    pub fn replace(&self, table: RouteTable) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(table);
    }

    pub fn current(&self) -> Arc<RouteTable> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new("Example.DZ")
            .with_tenant("alpha", Upstream::http("10.0.0.2:8080").unwrap())
            .with_tenant("beta", Upstream::http("http://iaf-beta-api:8080/").unwrap())
            .with_tenant("beta", Upstream::http("10.0.0.9:8080").unwrap())
            .with_tenant("beta", Upstream::http("10.0.0.9:8080").unwrap())
    }

    fn names(replicas: &[Upstream]) -> Vec<String> {
        replicas.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn routes_by_tenant_label() {
        let table = table();
        let (tenant, replicas) = table.route("alpha.example.dz").unwrap();
        assert_eq!(
            (tenant, names(replicas)),
            ("alpha", vec!["10.0.0.2:8080".into()])
        );
        // Every replica, each once.
        let (tenant, replicas) = table.route("BETA.example.dz.:8443").unwrap();
        assert_eq!(
            (tenant, names(replicas)),
            (
                "beta",
                vec!["iaf-beta-api:8080".into(), "10.0.0.9:8080".into()]
            )
        );
        assert_eq!(table.hostnames(), ["alpha.example.dz", "beta.example.dz"]);
    }

    #[test]
    fn misses_say_why() {
        let table = table();
        assert_eq!(
            table.route("gamma.example.dz"),
            Err(RouteMiss::UnknownTenant {
                tenant: "gamma".into()
            })
        );
        for foreign in [
            "example.dz",
            "alpha.example.com",
            "x.alpha.example.dz",
            "evilexample.dz",
            "alphaexample.dz",
            ".example.dz",
        ] {
            assert!(
                matches!(table.route(foreign), Err(RouteMiss::ForeignHost { .. })),
                "{foreign} routed"
            );
        }
    }

    #[test]
    fn a_tenant_is_served_at_its_own_host_too() {
        let (aliases, conflicts) = ingress_aliases(
            "example.dz",
            [
                ("beta", "RAG.Univ.DZ."),
                ("alpha", "alpha.example.dz"),
                ("gamma", "beta.example.dz"),
                ("delta", "shared.dz"),
                ("epsilon", "shared.dz"),
            ],
        );
        assert_eq!(
            aliases,
            BTreeMap::from([("rag.univ.dz".to_owned(), "beta".to_owned())])
        );
        assert_eq!(
            conflicts,
            [
                HostConflict::UnderDomain {
                    tenant: "gamma".into(),
                    host: "beta.example.dz".into(),
                    domain: "example.dz".into(),
                },
                HostConflict::Taken {
                    host: "shared.dz".into(),
                    first: "delta".into(),
                    second: "epsilon".into(),
                },
            ]
        );
        let table = table().with_aliases(aliases);
        let (tenant, _) = table.route("rag.univ.dz:443").unwrap();
        assert_eq!(tenant, "beta");
        assert_eq!(
            table.hostnames(),
            ["alpha.example.dz", "beta.example.dz", "rag.univ.dz"]
        );
        assert!(matches!(
            table.route("x.rag.univ.dz"),
            Err(RouteMiss::ForeignHost { .. })
        ));
        // A host under the domain always goes by its name, whatever the aliases say.
        let hijack = table.clone().with_aliases(BTreeMap::from([(
            "alpha.example.dz".to_owned(),
            "beta".to_owned(),
        )]));
        assert_eq!(hijack.route("alpha.example.dz").unwrap().0, "alpha");
    }

    #[test]
    fn upstreams_need_a_port() {
        assert!(Upstream::http("api").is_err());
        assert!(Upstream::http("http://api:notaport").is_err());
        assert!(Upstream::http("").is_err());
    }
}
