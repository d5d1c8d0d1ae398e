//! Where a webhook may point: `https://` URLs of hosts on the public internet. Guildhall runs
//! inside a VPC beside its database, cache and the cloud's metadata service; a webhook URL that
//! reached any of them would let whoever holds the admin key make Guildhall send requests into
//! that network (server-side request forgery). So every address a host resolves to is checked,
//! when the webhook is created and again at every delivery, by the resolver the HTTP client
//! connects through (`GuardedResolver`): a name that later resolves elsewhere (DNS rebinding)
//! is refused too, and the client never connects to an address that was not checked.
//!
//! `WEBHOOK_ALLOW_LOCAL_TARGETS` admits `http://` and loopback and private addresses, for tests
//! and local development. Link-local addresses (which hold the cloud metadata endpoints,
//! 169.254.169.254 and the ECS task's 169.254.170.2) and AWS's IPv6 metadata address are refused
//! even then: no receiver lives there, and a credential leak is not worth the convenience.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

/// The longest URL accepted.
pub const MAX_URL_LENGTH: usize = 2048;
/// How long resolving a host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which receivers are allowed (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPolicy {
    /// `WEBHOOK_ALLOW_LOCAL_TARGETS`.
    pub allow_local: bool,
}

/// Why a URL or an address is refused, in words an operator can act on (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a URL Guildhall posts to.
    #[error("{0}")]
    Url(String),
    /// The host did not resolve.
    #[error("the host {host} does not resolve: {detail}")]
    Unresolved {
        /// The host.
        host: String,
        /// The resolver's answer.
        detail: String,
    },
    /// The host resolves to an address on a network Guildhall does not post to.
    #[error("{host} resolves to {address}, a {kind} address, where webhooks may not point")]
    Address {
        /// The host.
        host: String,
        /// The address refused.
        address: IpAddr,
        /// `private`, `loopback`, `link-local (cloud metadata)` ...
        kind: &'static str,
    },
}

impl TargetPolicy {
    /// Checks `raw` as a webhook URL without resolving it: `https://` (or `http://` with local
    /// targets), a host, no credentials or fragment, at most `MAX_URL_LENGTH` long, and, for an
    /// address written as the host, an address allowed.
    pub fn parse(&self, raw: &str) -> Result<Url, Refusal> {
        let refuse = |why: &str| Err(Refusal::Url(why.to_owned()));
        if raw.len() > MAX_URL_LENGTH {
            return refuse("url must be at most 2048 characters");
        }
        let Ok(url) = Url::parse(raw) else {
            return refuse("url must be an absolute URL such as https://hooks.example.com/guildhall");
        };
        match url.scheme() {
            "https" => {}
            "http" if self.allow_local => {}
            "http" => return refuse("url must use https:// (http:// only with WEBHOOK_ALLOW_LOCAL_TARGETS, for local testing)"),
            _ => return refuse("url must use https://"),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return refuse("url must not carry credentials; authenticate deliveries by their signature");
        }
        if url.fragment().is_some() {
            return refuse("url must not have a #fragment");
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return refuse("url must name a host");
        };
        // The URL parser has normalised an address written as the host (`2130706433` is
        // `127.0.0.1`); IPv6 comes bracketed.
        if let Ok(address) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            self.check_address(host, address)?;
        }
        Ok(url)
    }

    /// Refuses `address` unless a webhook may point there.
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), Refusal> {
        match classify(address) {
            Class::Public => Ok(()),
            Class::Local(_) if self.allow_local => Ok(()),
            Class::Local(kind) | Class::Never(kind) => Err(Refusal::Address { host: host.to_owned(), address, kind }),
        }
    }

    /// Resolves `host` and checks every address it resolves to: one refused address refuses the
    /// host, since the client might connect to any of them.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, Refusal> {
        // IPv6 hosts come bracketed from URLs.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(address) = bare.parse::<IpAddr>() {
            self.check_address(host, address)?;
            return Ok(vec![address]);
        }
        let unresolved = |detail: String| Refusal::Unresolved { host: host.to_owned(), detail };
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((bare, 0)))
            .await
            .map_err(|_| unresolved(format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs())))?
            .map_err(|err| unresolved(err.to_string()))?;
        let mut addresses: Vec<IpAddr> = found.map(|a| a.ip()).collect();
        addresses.dedup();
        if addresses.is_empty() {
            return Err(unresolved("no addresses".into()));
        }
        for address in &addresses {
            self.check_address(host, *address)?;
        }
        Ok(addresses)
    }
}

/// What kind of network an address is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Anywhere on the internet.
    Public,
    /// This machine or a private network: allowed only with local targets.
    Local(&'static str),
    /// Never a receiver: metadata services, unspecified, multicast, reserved.
    Never(&'static str),
}

fn classify(address: IpAddr) -> Class {
    match address {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(v4: Ipv4Addr) -> Class {
    let [a, b, c, _] = v4.octets();
    if v4.is_link_local() {
        // 169.254.0.0/16: EC2's metadata service (169.254.169.254), ECS's task metadata and
        // credentials (169.254.170.2), and other clouds' alike.
        Class::Never("link-local (cloud metadata)")
    } else if v4.is_unspecified() || a == 0 {
        Class::Never("unspecified")
    } else if v4.is_multicast() || v4.is_broadcast() || a >= 240 {
        Class::Never("multicast or reserved")
    } else if v4.is_loopback() {
        Class::Local("loopback")
    } else if v4.is_private() {
        Class::Local("private")
    } else if a == 100 && (64..128).contains(&b) {
        // 100.64.0.0/10, carrier-grade NAT: shared, and private to whoever runs it.
        Class::Local("shared (carrier-grade NAT)")
    } else if (a == 192 && b == 0 && c == 0) || (a == 198 && (18..20).contains(&b)) {
        // 192.0.0.0/24 (IETF protocol assignments), 198.18.0.0/15 (benchmarking).
        Class::Local("special-purpose")
    } else if (a == 192 && b == 0 && c == 2) || (a == 198 && b == 51 && c == 100) || (a == 203 && b == 0 && c == 113) {
        Class::Local("documentation")
    } else {
        Class::Public
    }
}

fn classify_v6(v6: Ipv6Addr) -> Class {
    // An IPv4 address carried in IPv6 (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4
    // 2002::/16) is judged as the IPv4 address it reaches.
    if let Some(v4) = v6.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = v6.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return classify_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
    }
    if s[0] == 0x2002 {
        return classify_v4(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        // EC2's metadata service over IPv6.
        Class::Never("cloud metadata")
    } else if v6.is_unspecified() {
        Class::Never("unspecified")
    } else if v6.is_multicast() {
        Class::Never("multicast or reserved")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Class::Never("link-local (cloud metadata)")
    } else if v6.is_loopback() {
        Class::Local("loopback")
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        // Unique local fc00::/7, and the deprecated site-local fec0::/10.
        Class::Local("private")
    } else if s[0] == 0x2001 && s[1] == 0xdb8 {
        Class::Local("documentation")
    } else if s[0] == 0 && s[1..6] == [0, 0, 0, 0, 0] {
        // Deprecated IPv4-compatible ::a.b.c.d, and the rest of ::/96.
        Class::Never("multicast or reserved")
    } else {
        Class::Public
    }
}

/// The HTTP client's resolver: resolves through the system, and hands the client only addresses
/// the policy allows, failing the request when there are none (so a name that resolves to the
/// metadata service, or to a private address at delivery time, is never connected to).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: TargetPolicy,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: TargetPolicy) -> Arc<Self> {
        Arc::new(Self { policy })
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = policy.resolve(&host).await?;
            // reqwest sets the URL's port on each.
            let addrs: reqwest::dns::Addrs = Box::new(addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy { allow_local: false };
    const LOCAL: TargetPolicy = TargetPolicy { allow_local: true };

    #[test]
    fn only_https_urls_without_credentials_are_taken() {
        assert!(STRICT.parse("https://hooks.example.com/guildhall?team=3").is_ok());
        assert!(STRICT.parse("https://203.0.114.7:8443/h").is_ok());
        for bad in [
            "http://hooks.example.com/",
            "ftp://hooks.example.com/",
            "hooks.example.com/x",
            "https://user:pass@hooks.example.com/",
            "https://hooks.example.com/#x",
            "https://",
            "https://:443/x",
            "",
        ] {
            assert!(matches!(STRICT.parse(bad), Err(Refusal::Url(_))), "{bad}");
        }
        assert!(STRICT.parse(&format!("https://h.example.com/{}", "a".repeat(MAX_URL_LENGTH))).is_err());
        assert!(LOCAL.parse("http://127.0.0.1:8080/hook").is_ok(), "local testing allows http and loopback");
    }

    #[test]
    fn private_and_metadata_addresses_are_refused() {
        for local in
            ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "::1", "fd12::1", "::ffff:10.0.0.1", "64:ff9b::a00:1"]
        {
            let address: IpAddr = local.parse().expect(local);
            assert!(STRICT.check_address(local, address).is_err(), "{local}");
            assert!(LOCAL.check_address(local, address).is_ok(), "{local} with local targets");
        }
        for never in [
            "169.254.169.254",
            "169.254.170.2",
            "fd00:ec2::254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:169.254.169.254",
            "2002:a9fe:a9fe::1",
        ] {
            let address: IpAddr = never.parse().expect(never);
            assert!(LOCAL.check_address(never, address).is_err(), "{never} even with local targets");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "203.0.114.7"] {
            assert_eq!(STRICT.check_address(public, public.parse().expect(public)), Ok(()), "{public}");
        }
        assert!(STRICT.parse("https://[::1]/x").is_err());
        assert!(STRICT.parse("https://169.254.169.254/latest/meta-data/").is_err());
        // Another spelling of 127.0.0.1 is still 127.0.0.1.
        assert!(STRICT.parse("https://2130706433/").is_err());
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        assert!(matches!(STRICT.resolve("localhost").await, Err(Refusal::Address { .. })));
        assert!(LOCAL.resolve("localhost").await.is_ok());
        assert!(matches!(STRICT.resolve("[::1]").await, Err(Refusal::Address { .. })));
        assert!(matches!(STRICT.resolve("no-such-host.invalid").await, Err(Refusal::Unresolved { .. })));
    }
}
