//! How many sockets one client may hold open on an instance: per IP address, counted from the
//! upgrade (so sockets that never authenticate count too), and per account, counted from the
//! authentication (by the hub, which knows each connection's account).
//!
//! Counted per instance, in memory: the caps bound what one client can make one process hold
//! (memory, file descriptors, fan-out), which is what they are for, and need no shared counter
//! that an instance dying would leave too high. Across a fleet a client may hold the cap on each
//! instance the load balancer sends it to.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The caps (`CHAT_MAX_SOCKETS_PER_ACCOUNT`, `CHAT_MAX_SOCKETS_PER_IP`).
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    /// Authenticated sockets per account on an instance.
    pub per_account: usize,
    /// Sockets per client IP on an instance, authenticated or not.
    pub per_ip: usize,
}

/// The open sockets of this instance by client IP. Cheap to clone.
#[derive(Clone, Default)]
pub struct SocketsByIp(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One socket counted against its IP until dropped.
pub struct IpSlot {
    ip: IpAddr,
    counts: SocketsByIp,
}

impl SocketsByIp {
    /// Counts a socket from `ip`, unless it already has `cap`.
    pub fn take(&self, ip: IpAddr, cap: usize) -> Option<IpSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(IpSlot { ip, counts: self.clone() })
    }

    /// Sockets open from `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                // Only IPs with open sockets stay in the map, so it cannot grow without bound.
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_gets_its_cap_and_a_slot_back_when_a_socket_closes() {
        let sockets = SocketsByIp::default();
        let ip = IpAddr::from([192, 0, 2, 1]);
        let first = sockets.take(ip, 2).expect("first");
        let _second = sockets.take(ip, 2).expect("second");
        assert!(sockets.take(ip, 2).is_none(), "the third is over the cap");
        assert!(sockets.take(IpAddr::from([192, 0, 2, 2]), 2).is_some(), "other IPs are counted apart");
        drop(first);
        assert!(sockets.take(ip, 2).is_some(), "a closed socket frees its slot");
        drop(_second);
        assert_eq!(sockets.count(IpAddr::from([192, 0, 2, 2])), 0);
    }
}
