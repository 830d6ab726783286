//! The network namespace that lets the suite partition one participant
//! from the coordinators.
//!
//! A namespace of the run's own, joined to the host by a veth pair; the
//! pair's addresses are a /24 drawn at random in 10.0.0.0/8 that no route
//! or address of the machine covers, the host end `.1` (the coordinators
//! listen there), the namespace end `.2` (the participants inside listen
//! there). Every packet between them stays on the machine: the /24's only
//! route is the veth, and the guard removes the pair only once the
//! processes that could send to it are gone (the world drops them first).
//!
//! **Cut**: `ip -n NS link set DEV down` on the namespace's end. Inside,
//! the /24 has no route any more (connections fail at once with "network
//! unreachable"); from the host, the veth has no carrier, so packets to
//! `.2` are dropped (requests time out); the host end's address stays
//! local, so the coordinators remain reachable from the host.
//! **Heal**: `link set DEV up`, which brings the route back.
//!
//! [`Netns`] is a guard: dropped (also while a failing run unwinds), it
//! deletes the veth pair and the namespace.

use anyhow::{bail, Context};
use rand::Rng;
use std::net::Ipv4Addr;
use std::process::Stdio;

/// A namespace with a veth pair to the host.
pub struct Netns {
    /// The namespace's name.
    pub name: String,
    /// The host's end of the pair.
    host_dev: String,
    /// The namespace's end.
    ns_dev: String,
    /// The host end's address (the coordinators listen on it).
    pub host_ip: Ipv4Addr,
    /// The namespace end's address.
    pub ns_ip: Ipv4Addr,
    /// Whether the link is cut now.
    cut: bool,
    /// Whether the pair was created (the guard then deletes it).
    pair: bool,
}

async fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the route or address token `prefix` (`a.b.c.d` or `a.b.c.d/n`) covers `net`/24 or lies inside it.
fn overlaps(prefix: &str, net: Ipv4Addr) -> bool {
    let (addr, len) = match prefix.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().unwrap_or(32)),
        None => (prefix, 32),
    };
    let Ok(addr) = addr.parse::<Ipv4Addr>() else { return false };
    let len = len.min(32);
    // Two prefixes overlap when they agree on the shorter one's bits.
    let common = len.min(24);
    let mask = if common == 0 { 0 } else { u32::MAX << (32 - common) };
    (u32::from(addr) & mask) == (u32::from(net) & mask)
}

/// A /24 in 10.0.0.0/8 that nothing on the machine routes or holds.
async fn free_subnet(rng: &mut impl Rng) -> anyhow::Result<Ipv4Addr> {
    let routes = ip(&["-4", "route", "show", "table", "all"]).await?;
    let addrs = ip(&["-4", "-o", "addr", "show"]).await?;
    let taken: Vec<String> = routes
        .lines()
        .filter_map(|l| {
            l.split_whitespace().find(|t| t.parse::<Ipv4Addr>().is_ok() || t.contains('/')).map(str::to_owned)
        })
        .chain(addrs.lines().filter_map(|l| {
            let mut t = l.split_whitespace();
            t.position(|w| w == "inet").and_then(|_| t.next()).map(str::to_owned)
        }))
        .collect();
    for _ in 0..64 {
        let net = Ipv4Addr::new(10, rng.gen_range(16..=250), rng.gen_range(1..=254), 0);
        if !taken.iter().any(|p| overlaps(p, net)) {
            return Ok(net);
        }
    }
    bail!("found no free 10.x.y.0/24 after 64 draws")
}

impl Netns {
    /// Creates the namespace and the pair, or says why it cannot (then the
    /// partition fault is skipped).
    pub async fn create(run_id: &str, rng: &mut impl Rng) -> Result<Netns, String> {
        let name = format!("tandem-chaos-{run_id}");
        ip(&["netns", "add", &name]).await.map_err(|e| format!("cannot create a network namespace: {e:#}"))?;
        let mut ns = Netns {
            name,
            host_dev: format!("tch{run_id}h"),
            ns_dev: format!("tch{run_id}n"),
            host_ip: Ipv4Addr::UNSPECIFIED,
            ns_ip: Ipv4Addr::UNSPECIFIED,
            cut: false,
            pair: false,
        };
        ns.wire(rng).await.map_err(|e| format!("cannot set up the veth pair: {e:#}"))?;
        Ok(ns)
    }

    async fn wire(&mut self, rng: &mut impl Rng) -> anyhow::Result<()> {
        let net = free_subnet(rng).await?;
        let [a, b, c, _] = net.octets();
        self.host_ip = Ipv4Addr::new(a, b, c, 1);
        self.ns_ip = Ipv4Addr::new(a, b, c, 2);
        let (host, inner, ns) = (self.host_dev.clone(), self.ns_dev.clone(), self.name.clone());
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner]).await?;
        self.pair = true;
        ip(&["link", "set", &inner, "netns", &ns]).await?;
        ip(&["addr", "add", &format!("{}/24", self.host_ip), "dev", &host]).await?;
        ip(&["link", "set", &host, "up"]).await?;
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.ns_ip), "dev", &inner]).await?;
        ip(&["-n", &ns, "link", "set", &inner, "up"]).await?;
        ip(&["-n", &ns, "link", "set", "lo", "up"]).await?;
        Ok(())
    }

    /// The /24, as `--callback-allow` would name it.
    pub fn subnet(&self) -> String {
        let [a, b, c, _] = self.host_ip.octets();
        format!("{a}.{b}.{c}.0/24")
    }

    /// Cuts the link (namespace end down).
    pub async fn cut(&mut self) -> anyhow::Result<()> {
        ip(&["-n", &self.name, "link", "set", &self.ns_dev, "down"]).await?;
        self.cut = true;
        Ok(())
    }

    /// Heals it (namespace end up: the route comes back).
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        ip(&["-n", &self.name, "link", "set", &self.ns_dev, "up"]).await?;
        self.cut = false;
        Ok(())
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.cut
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        if self.pair {
            // Deleting one end deletes both, wherever the peer is.
            run(&["link", "del", &self.host_dev]);
            run(&["-n", &self.name, "link", "del", &self.ns_dev]);
        }
        run(&["netns", "del", &self.name]);
    }
}
