//! Budgets by key — a caller's identity, a client address, an Engine.IO session — and the
//! client address of a request, from `X-Forwarded-For` only when a trusted proxy says so.
//!
//! Each key has a token bucket (`rate` per second, `burst` at once). The table is bounded: idle
//! buckets (full again, so forgetting them changes nothing) are dropped by [`prune`], and past
//! `MAX_KEYS` a new key finds room by dropping every full bucket first, then the least recently
//! used tenth: an attacker cycling through keys cannot grow memory without bound, nor empty
//! the table (its own spent bucket, used a moment ago, is the last to go).
//!
//! An address is limited as [`limit_key`] says: IPv4 per address, IPv6 per /64 (one customer's
//! network; a client picks any address inside it at will).
//!
//! [`prune`]: KeyedLimiter::prune

use crate::gateway::ratelimit::{SharedBucket, TokenBucket};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_KEYS: usize = 100_000;

pub struct KeyedLimiter<K> {
    rate: u32,
    burst: u32,
    /// Each key's bucket, and when it was last used.
    buckets: Mutex<HashMap<K, (SharedBucket, Instant)>>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `rate` 0: no limit (and no table).
    pub fn new(rate: u32, burst: u32) -> Self {
        KeyedLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_off(&self) -> bool {
        self.rate == 0
    }

    /// The bucket of `key`, created full (with no limit: a bucket of its own, not kept).
    pub fn bucket(&self, key: &K) -> SharedBucket {
        if self.is_off() {
            return TokenBucket::shared(0, 0);
        }
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((b, used)) = map.get_mut(key) {
            *used = now;
            return b.clone();
        }
        if map.len() >= MAX_KEYS {
            let idle = self.refill_time();
            map.retain(|_, (_, used)| now.duration_since(*used) < idle);
            // Freeing a few idle buckets would leave the next insert to scan again: make room
            // for a tenth of the table at once.
            if map.len() >= MAX_KEYS * 9 / 10 {
                evict_to(&mut map, MAX_KEYS * 8 / 10, |(_, used)| *used);
            }
        }
        let b = TokenBucket::shared(self.rate, self.burst);
        map.insert(key.clone(), (b.clone(), now));
        b
    }

    /// Take one token from `key`'s bucket.
    pub fn allow(&self, key: &K) -> bool {
        if self.is_off() {
            return true;
        }
        let b = self.bucket(key);
        b.lock().unwrap_or_else(|e| e.into_inner()).try_take()
    }

    /// How long an unused bucket takes to fill up again (after which it is as good as new).
    fn refill_time(&self) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(f64::from(self.burst.max(1)) / f64::from(self.rate))
            .max(Duration::from_secs(1))
    }

    /// Forget buckets unused for longer than `at_least` and than their refill time.
    pub fn prune(&self, at_least: Duration) {
        let idle = self.refill_time().max(at_least);
        let now = Instant::now();
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, used)| now.duration_since(*used) < idle);
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Request budgets of sockets that closed, kept a while by key (an Engine.IO session and a
/// namespace), so that leaving and re-joining a namespace inside one session gets back the
/// budget it left with instead of a full one. Live sockets keep their budget themselves: the
/// table holds only recently closed ones.
pub struct ParkedBudgets<K> {
    parked: Mutex<HashMap<K, (TokenBucket, Instant)>>,
}

impl<K> Default for ParkedBudgets<K> {
    fn default() -> Self {
        ParkedBudgets {
            parked: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> ParkedBudgets<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (TokenBucket, Instant)>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A socket under `key` closed with `budget` left. Of two budgets parked under one key
    /// (a close and a refused join racing), the poorer is kept: neither refills the other.
    pub fn park(&self, key: K, budget: TokenBucket) {
        let mut map = self.lock();
        evict_oldest(&mut map, |(_, at)| *at);
        let budget = match map.remove(&key) {
            Some((old, _)) if old.tokens() < budget.tokens() => old,
            _ => budget,
        };
        map.insert(key, (budget, Instant::now()));
    }

    /// The budget a socket under `key` left with, if it closed lately.
    pub fn take(&self, key: &K) -> Option<TokenBucket> {
        self.lock().remove(key).map(|(b, _)| b)
    }

    /// Forget budgets parked longer than `age`.
    pub fn prune(&self, age: Duration) {
        self.lock().retain(|_, (_, at)| at.elapsed() < age);
    }
}

/// At `MAX_KEYS` entries or more, drop the least recently used down to nine tenths, so that
/// the newest entries (an attacker's spent bucket among them) stay, and the next tenth of new
/// keys finds room without another pass.
fn evict_oldest<K: Hash + Eq, V>(map: &mut HashMap<K, V>, used: impl Fn(&V) -> Instant) {
    if map.len() >= MAX_KEYS {
        evict_to(map, MAX_KEYS * 9 / 10, used);
    }
}

/// Drop the least recently used entries (by `used`) until at most about `keep` are left.
fn evict_to<K: Hash + Eq, V>(map: &mut HashMap<K, V>, keep: usize, used: impl Fn(&V) -> Instant) {
    if map.len() <= keep {
        return;
    }
    let mut times: Vec<Instant> = map.values().map(&used).collect();
    let nth = map.len() - keep - 1;
    let (_, cutoff, _) = times.select_nth_unstable(nth);
    let cutoff = *cutoff;
    map.retain(|_, v| used(v) > cutoff);
}

/// The key an address is limited by: an IPv4 address itself, an IPv6 address's /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u64::MAX as u128)).into()),
        v4 => v4,
    }
}

/// Every `X-Forwarded-For` line of a request as one list, in order. A proxy may append its own
/// header line rather than extend the client's, and the client's forged line then comes first:
/// read alone, it would name whatever address the client chose. A value that is not text is
/// kept as an entry no address parses from, so [`client_ip`] stops there.
pub fn forwarded_for(headers: &axum::http::HeaderMap) -> Option<String> {
    let all: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect();
    (!all.is_empty()).then(|| all.join(","))
}

/// A CIDR block (`10.0.0.0/8`, `fd00::/8`, or an address alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, what a dual-stack listener reports) as
/// the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries further left were
/// written by the client and prove nothing).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(client) {
                    return client;
                }
            }
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_contain_what_they_should() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")), "v4-mapped v6 is v4");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
        for bad in ["", "10.0.0.0/33", "x/8", "::/129", "10.0.0.0/"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        // An untrusted peer's header is ignored: anyone can send it.
        assert_eq!(
            client_ip(ip("1.2.3.4"), Some("9.9.9.9"), &trusted),
            ip("1.2.3.4")
        );
        // The right-most untrusted hop; what the client wrote further left proves nothing.
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("6.6.6.6, 5.5.5.5, 10.0.0.7"), &trusted),
            ip("5.5.5.5")
        );
        assert_eq!(client_ip(ip("10.0.0.5"), None, &trusted), ip("10.0.0.5"));
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("garbage"), &trusted),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn every_forwarded_for_line_counts_in_order() {
        let mut h = axum::http::HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", "5.5.5.5, 10.0.0.7".parse().unwrap());
        let joined = forwarded_for(&h).unwrap();
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        // The client forged the first line; the proxy appended the second: the client is the
        // right-most untrusted address of both, not the first line's.
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some(&joined), &trusted),
            ip("5.5.5.5")
        );
        assert_eq!(forwarded_for(&axum::http::HeaderMap::new()), None);
    }

    #[test]
    fn ipv6_is_limited_per_64() {
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1")),
            limit_key(ip("2001:db8:1:2:ffff:1:2:3"))
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(limit_key(ip("1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(limit_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        // One client rotating through its /64 shares one budget.
        let l = KeyedLimiter::new(1, 2);
        let spent = (0..5u16)
            .filter(|i| !l.allow(&limit_key(ip(&format!("2001:db8::{i:x}")))))
            .count();
        assert_eq!(spent, 3);
    }

    #[test]
    fn a_full_table_drops_its_least_recently_used_not_the_attackers_spent_bucket() {
        let l = KeyedLimiter::new(1, 1);
        assert!(l.allow(&0u32));
        // An attacker floods the table with new keys while it keeps trying its own.
        for k in 1..(MAX_KEYS as u32 + 5) {
            l.allow(&k);
            if k % 1000 == 0 {
                l.allow(&0);
            }
        }
        let map = l.buckets.lock().unwrap();
        assert!(
            map.len() < MAX_KEYS && map.len() >= MAX_KEYS * 8 / 10,
            "{}",
            map.len()
        );
        assert!(
            map.contains_key(&0),
            "the key in use kept its (spent) bucket"
        );
        assert!(!map.contains_key(&1), "the oldest went");
    }

    #[test]
    fn buckets_are_per_key_and_the_table_forgets_idle_ones() {
        let l = KeyedLimiter::new(1, 2);
        assert!(l.allow(&"a") && l.allow(&"a"));
        assert!(!l.allow(&"a"), "a's burst is spent");
        assert!(l.allow(&"b"), "b has its own");
        l.prune(Duration::ZERO);
        assert_eq!(l.len(), 2, "used just now: kept");
        let off = KeyedLimiter::<&str>::new(0, 0);
        assert!((0..100).all(|_| off.allow(&"x")));
        assert!(off.is_empty(), "no table when off");
    }
}
