//! Where the coordinator may send a request: the callback allow-list.
//!
//! Every address a client or a participant gives the coordinator
//! (`callback_url`, a saga step's `action_url` and `compensate_url`, a
//! message's `check_url` and deliveries' `url`) is checked against the list
//! when it is registered (refused: 422 `callback_not_allowed`, nothing
//! stored) and again before every call, and a name's resolved addresses are
//! checked when it is resolved for the call ([`PolicyResolver`]), so a DNS
//! answer that changes after registration (rebinding) cannot move a call to
//! an address the list does not allow. Redirects are never followed.
//!
//! A rule is `SCHEME://HOST[:PORT]`: `SCHEME` is `http`, `https` or `*`;
//! `HOST` an IP address or CIDR (`10.0.0.0/8`, `[fd00::/8]`), a DNS name
//! (`pay.internal`) or a wildcard of its subdomains (`*.svc.cluster.local`);
//! `PORT` a number or `*`, any port when left out. Without any rule the list
//! is loopback: `http(s)://127.0.0.0/8`, `[::1]` and `localhost`.
//!
//! Whatever the rules, some addresses are refused unless a rule names them
//! explicitly (an IP rule inside their range, such as `http://169.254.10.0/24`):
//! link-local addresses (which hold the cloud metadata services, such as
//! 169.254.169.254), the other known metadata addresses, unspecified,
//! multicast and broadcast addresses. A name never resolves into loopback
//! unless it is `localhost` or loopback is in a rule the operator wrote. And
//! no callback goes to the coordinator's own port on loopback (a branch whose
//! callback is the coordinator's own API would make it call itself).

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Addresses refused unless a rule inside their range names them.
const SPECIAL: &[(&str, &str)] = &[
    ("169.254.0.0/16", "link-local (cloud metadata services live here)"),
    ("fe80::/10", "link-local"),
    ("fd00:ec2::254/128", "the AWS metadata service"),
    ("100.100.100.200/32", "the Alibaba Cloud metadata service"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
];

/// Which scheme a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
    Any,
}

/// Which hosts a rule allows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// An IP network.
    Net(IpNet),
    /// One DNS name (lowercase, no trailing dot).
    Name(String),
    /// Every subdomain of a name (stored with its leading dot).
    Suffix(String),
}

/// One rule of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Allowed scheme.
    scheme: Scheme,
    /// Allowed hosts.
    host: Host,
    /// Allowed port (`None`: any).
    port: Option<u16>,
}

impl std::str::FromStr for Rule {
    type Err = String;

    fn from_str(spec: &str) -> Result<Rule, String> {
        let bad = |why: &str| format!("callback rule {spec:?}: {why} (expected SCHEME://HOST[:PORT])");
        let (scheme, rest) = spec.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "*" => Scheme::Any,
            _ => return Err(bad("the scheme is http, https or *")),
        };
        let rest = rest.trim_end_matches('/');
        // `[v6 or v6/len]:port`, or `host:port`, or a bare host.
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            if !after.is_empty() && !after.starts_with(':') {
                return Err(bad("a CIDR's length goes inside the brackets: [fd00::/8]"));
            }
            (h, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            None | Some("*") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad("the port is a number or *"))?),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let host = if let Ok(net) = host.parse::<IpNet>() {
            Host::Net(net.trunc())
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Host::Net(IpNet::from(ip))
        } else if let Some(suffix) = host.strip_prefix("*.") {
            Host::Suffix(format!(".{}", check_name(suffix).map_err(|e| bad(&e))?))
        } else {
            Host::Name(check_name(host).map_err(|e| bad(&e))?)
        };
        Ok(Rule { scheme, host, port })
    }
}

fn check_name(name: &str) -> Result<String, String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok {
        Ok(name)
    } else {
        Err(format!("{name:?} is not a DNS name, an IP address or a CIDR"))
    }
}

/// Why an address is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not an absolute http(s) URL with a host.
    #[error("{0:?} is not an absolute http(s) URL")]
    NotUrl(String),
    /// No rule allows it.
    #[error("{0} is not in the coordinator's callback allow-list ({1})")]
    NotListed(String, String),
    /// A special address no rule names explicitly.
    #[error("{0} is {1}; refused unless the allow-list names it explicitly")]
    Special(String, &'static str),
    /// The coordinator itself.
    #[error("{0} is this coordinator's own API")]
    Itself(String),
    /// A name resolving into loopback.
    #[error("{0} resolves to the loopback address {1}, which only `localhost` or an explicit loopback rule may")]
    NameToLoopback(String, IpAddr),
}

/// The allow-list of one coordinator.
#[derive(Debug, Clone)]
pub struct AllowList {
    /// The rules.
    rules: Vec<Rule>,
    /// Whether the rules are the built-in loopback default.
    default: bool,
    /// The coordinator's own ports (its API, its DTM listener), refused on loopback.
    own_ports: Vec<u16>,
}

impl AllowList {
    /// The list of `rules`; empty: the loopback default.
    pub fn new(rules: Vec<Rule>) -> AllowList {
        if !rules.is_empty() {
            return AllowList { rules, default: false, own_ports: Vec::new() };
        }
        let defaults = ["*://127.0.0.0/8", "*://[::1]", "*://localhost"];
        let rules = defaults.iter().filter_map(|r| r.parse().ok()).collect();
        AllowList { rules, default: true, own_ports: Vec::new() }
    }

    /// Refuses the coordinator's own `port` on loopback (once per listener).
    pub fn with_own_port(mut self, port: u16) -> AllowList {
        self.own_ports.push(port);
        self
    }

    /// The rules as text, for messages.
    pub fn describe(&self) -> String {
        let list = self.rules.iter().map(Rule::to_string).collect::<Vec<_>>().join(", ");
        if self.default {
            format!("the loopback default: {list}; add rules with --callback-allow")
        } else {
            list
        }
    }

    /// Whether `url` may be called (its scheme, host and port; an IP
    /// literal's address). A name's addresses are checked when it is
    /// resolved ([`PolicyResolver`]).
    pub fn check_url(&self, url: &str) -> Result<(), Refused> {
        let parsed = url::Url::parse(url).map_err(|_| Refused::NotUrl(url.to_owned()))?;
        let scheme = match parsed.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(Refused::NotUrl(url.to_owned())),
        };
        let port = parsed.port_or_known_default().ok_or_else(|| Refused::NotUrl(url.to_owned()))?;
        let origin = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or_default());
        let host = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => HostRef::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => HostRef::Ip(canonical(IpAddr::V6(ip))),
            Some(url::Host::Domain(d)) => HostRef::Name(d.trim_end_matches('.').to_ascii_lowercase()),
            None => return Err(Refused::NotUrl(url.to_owned())),
        };
        let target = format!("{origin}:{port}");
        let listed = self.rules.iter().any(|r| {
            (r.scheme == Scheme::Any || r.scheme == scheme)
                && r.port.is_none_or(|p| p == port)
                && match (&r.host, &host) {
                    (Host::Net(net), HostRef::Ip(ip)) => net.contains(ip),
                    (Host::Name(n), HostRef::Name(h)) => n == h,
                    (Host::Suffix(s), HostRef::Name(h)) => h.ends_with(s.as_str()),
                    _ => false,
                }
        });
        if !listed {
            return Err(Refused::NotListed(target, self.describe()));
        }
        let is_self_host = match &host {
            HostRef::Ip(ip) => ip.is_loopback(),
            HostRef::Name(n) => n == "localhost",
        };
        if is_self_host && self.own_ports.contains(&port) {
            return Err(Refused::Itself(target));
        }
        if let HostRef::Ip(ip) = host {
            self.check_ip(&target, ip)?;
        }
        Ok(())
    }

    /// Whether `ip` is special and not named explicitly.
    fn check_ip(&self, target: &str, ip: IpAddr) -> Result<(), Refused> {
        let ip = canonical(ip);
        for (range, what) in SPECIAL {
            let Ok(range) = range.parse::<IpNet>() else { continue };
            if !range.contains(&ip) {
                continue;
            }
            let explicit = self.rules.iter().any(|r| match &r.host {
                Host::Net(net) => net.contains(&ip) && range.contains(net),
                _ => false,
            });
            if !explicit {
                return Err(Refused::Special(target.to_owned(), what));
            }
        }
        Ok(())
    }

    /// Whether the address `ip`, resolved from `name`, may be called.
    fn check_resolved(&self, name: &str, ip: IpAddr) -> Result<(), Refused> {
        let ip = canonical(ip);
        self.check_ip(name, ip)?;
        if ip.is_loopback() && name != "localhost" {
            let explicit =
                !self.default && self.rules.iter().any(|r| matches!(&r.host, Host::Net(net) if net.contains(&ip)));
            if !explicit {
                return Err(Refused::NameToLoopback(name.to_owned(), ip));
            }
        }
        Ok(())
    }
}

/// A URL's host, parsed.
enum HostRef {
    Ip(IpAddr),
    Name(String),
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Any => "*",
        };
        match &self.host {
            Host::Net(IpNet::V6(n)) => write!(f, "{scheme}://[{n}]")?,
            Host::Net(n) => write!(f, "{scheme}://{n}")?,
            Host::Name(n) => write!(f, "{scheme}://{n}")?,
            Host::Suffix(s) => write!(f, "{scheme}://*{s}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// The callback client's DNS resolver: resolves with the system's resolver
/// and keeps only the addresses the list allows; none left is an error (the
/// callback's outcome is unknown, and its `last_error` says why).
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    /// The list the addresses are held to.
    allow: Arc<AllowList>,
}

impl PolicyResolver {
    /// A resolver holding addresses to `allow`.
    pub fn new(allow: Arc<AllowList>) -> PolicyResolver {
        PolicyResolver { allow }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut kept = Vec::with_capacity(found.len());
            let mut refusal = None;
            for addr in found {
                match allow.check_resolved(&host, addr.ip()) {
                    Ok(()) => kept.push(addr),
                    Err(e) => refusal = Some(e),
                }
            }
            if kept.is_empty() {
                let why = refusal.map_or_else(|| format!("{host} has no address"), |e| e.to_string());
                return Err(why.into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LOOPBACK: (Ipv4Addr, Ipv6Addr) = (Ipv4Addr::LOCALHOST, Ipv6Addr::LOCALHOST);

    fn list(rules: &[&str]) -> AllowList {
        AllowList::new(rules.iter().map(|r| r.parse().expect("rule")).collect())
    }

    #[test]
    fn the_default_is_loopback_without_the_coordinator_itself() {
        let l = AllowList::new(Vec::new()).with_own_port(7070);
        assert_eq!(l.check_url("http://127.0.0.1:8080/tcc"), Ok(()));
        assert_eq!(l.check_url("https://[::1]:8443/x"), Ok(()));
        assert_eq!(l.check_url("http://localhost:9000/"), Ok(()));
        assert!(matches!(l.check_url("http://127.0.0.1:7070/v1/transactions"), Err(Refused::Itself(_))));
        assert!(matches!(l.check_url("http://localhost:7070/"), Err(Refused::Itself(_))));
        assert!(matches!(l.check_url("http://10.0.0.5:8080/"), Err(Refused::NotListed(..))));
        assert!(matches!(l.check_url("http://pay.internal/"), Err(Refused::NotListed(..))));
    }

    #[test]
    fn rules_match_scheme_host_and_port() {
        let l = list(&["https://10.0.0.0/8:8443", "http://pay.internal", "*://*.svc.cluster.local:*"]);
        assert_eq!(l.check_url("https://10.1.2.3:8443/cb"), Ok(()));
        assert!(l.check_url("http://10.1.2.3:8443/cb").is_err(), "scheme");
        assert!(l.check_url("https://10.1.2.3:9000/cb").is_err(), "port");
        assert!(l.check_url("https://11.1.2.3:8443/cb").is_err(), "network");
        assert_eq!(l.check_url("http://PAY.internal:81/x"), Ok(()));
        assert!(l.check_url("http://evil-pay.internal/").is_err());
        assert_eq!(l.check_url("https://a.b.svc.cluster.local/x"), Ok(()));
        assert!(l.check_url("https://svc.cluster.local/x").is_err(), "the wildcard is of subdomains");
        assert!(l.check_url("http://127.0.0.1:1/").is_err(), "loopback is only the default");
    }

    #[test]
    fn metadata_and_link_local_need_an_explicit_rule() {
        let broad = list(&["http://0.0.0.0/0", "http://[::/0]"]);
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://0.0.0.0:80/",
            "http://224.0.0.1/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            assert!(matches!(broad.check_url(url), Err(Refused::Special(..))), "{url}");
        }
        assert_eq!(broad.check_url("http://10.0.0.1/"), Ok(()));
        let explicit = list(&["http://169.254.10.0/24"]);
        assert_eq!(explicit.check_url("http://169.254.10.7/"), Ok(()));
        assert!(explicit.check_url("http://169.254.169.254/").is_err());
    }

    #[test]
    fn resolved_addresses_are_held_to_the_list() {
        let l = list(&["http://*.internal"]);
        assert!(matches!(
            l.check_resolved("evil.internal", "169.254.169.254".parse().expect("ip")),
            Err(Refused::Special(..))
        ));
        assert!(matches!(l.check_resolved("evil.internal", IpAddr::V4(LOOPBACK.0)), Err(Refused::NameToLoopback(..))));
        assert_eq!(l.check_resolved("pay.internal", "10.2.3.4".parse().expect("ip")), Ok(()));
        let d = AllowList::new(Vec::new());
        assert_eq!(d.check_resolved("localhost", IpAddr::V6(LOOPBACK.1)), Ok(()));
        assert!(d.check_resolved("rebind.example", IpAddr::V4(LOOPBACK.0)).is_err());
        let explicit = list(&["http://127.0.0.0/8", "http://*.test"]);
        assert_eq!(explicit.check_resolved("a.test", IpAddr::V4(LOOPBACK.0)), Ok(()));
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in ["10.0.0.0/8", "ftp://x", "http://", "http://a b", "http://x:port", "http://[::1", "http://[::]/0"] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
        let r: Rule = "https://[fd00::/8]:443".parse().expect("v6 rule");
        assert_eq!(r.to_string(), "https://[fd00::/8]:443");
    }
}
