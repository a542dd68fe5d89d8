//! Webhooks to the app's backend (CONTRACT §12), without I/O: the `WEBHOOK_*` settings, which
//! event a committed change makes, the offline delay that keeps flapping from the backend,
//! and the signature.
//!
//! The delay is a rule over an ordered stream of changes ([`Delay`]): an offline is held for
//! `WEBHOOK_OFFLINE_DELAY_MS`; the same user's online within that time cancels both; any
//! other change of that user releases the offline first, so each user's events stay in
//! version order.

use super::{Presence, Timestamp, UserId};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};

/// What a webhook event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Online,
    Offline,
    Status,
    Stats,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Online, Kind::Offline, Kind::Status, Kind::Stats];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Online => "user.online",
            Kind::Offline => "user.offline",
            Kind::Status => "user.status",
            Kind::Stats => "stats.event",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The event a committed change makes: offline → online, online → offline, or a change
    /// while online (status or details). A change while offline (a gender learnt, say)
    /// tells the backend nothing.
    pub fn of_change(was_online: bool, p: &Presence) -> Option<Kind> {
        match (was_online, p.online) {
            (false, true) => Some(Kind::Online),
            (true, false) => Some(Kind::Offline),
            (true, true) => Some(Kind::Status),
            (false, false) => None,
        }
    }
}

/// The types a deployment sends (`WEBHOOK_EVENTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    pub fn contains(self, k: Kind) -> bool {
        self.0 & k.bit() != 0
    }

    /// A comma-separated list of type names.
    pub fn parse(s: &str) -> Result<Kinds, String> {
        let mut bits = 0;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let k = Kind::ALL
                .into_iter()
                .find(|k| k.as_str() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown event type {name:?}: expected user.online, user.offline, user.status or stats.event"
                    )
                })?;
            bits |= k.bit();
        }
        if bits == 0 {
            return Err("names no event type".into());
        }
        Ok(Kinds(bits))
    }
}

/// `WEBHOOK_*` (CONTRACT §12).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: String,
    pub kinds: Kinds,
    pub offline_delay_ms: u64,
    pub batch_max: usize,
    pub timeout_ms: u64,
    pub max_age_ms: u64,
    pub queue_max: usize,
}

/// The shortest `WEBHOOK_SECRET` production accepts.
pub const MIN_SECRET_BYTES: usize = 32;

impl WebhookSettings {
    /// From the environment's `WEBHOOK_*` (`get` treats empty as unset): `None` without
    /// `WEBHOOK_URL`; an error names the variable and says what is wrong.
    pub fn from_lookup(
        get: &dyn Fn(&str) -> Option<String>,
        production: bool,
    ) -> Result<Option<WebhookSettings>, (&'static str, String)> {
        let Some(url) = get("WEBHOOK_URL") else {
            for var in ["WEBHOOK_SECRET", "WEBHOOK_EVENTS"] {
                if get(var).is_some() {
                    return Err((var, "is set without WEBHOOK_URL".into()));
                }
            }
            return Ok(None);
        };
        let url = url.trim().to_string();
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        let host = url.split("://").nth(1).unwrap_or("");
        if !scheme_ok
            || host.is_empty()
            || host.starts_with('/')
            || url.contains(char::is_whitespace)
        {
            return Err((
                "WEBHOOK_URL",
                format!("expected an http:// or https:// URL, got {url:?}"),
            ));
        }
        let secret = get("WEBHOOK_SECRET")
            .ok_or(("WEBHOOK_SECRET", "is required with WEBHOOK_URL".to_string()))?;
        if production && secret.len() < MIN_SECRET_BYTES {
            return Err((
                "WEBHOOK_SECRET",
                format!(
                    "must be at least {MIN_SECRET_BYTES} bytes in production (e.g. openssl rand -hex 32)"
                ),
            ));
        }
        let kinds = match get("WEBHOOK_EVENTS") {
            None => Kinds(Kind::Online.bit() | Kind::Offline.bit() | Kind::Status.bit()),
            Some(v) => Kinds::parse(&v).map_err(|e| ("WEBHOOK_EVENTS", e))?,
        };
        let number = |var: &'static str, default: u64, min: u64, max: u64| match get(var) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err((
                    var,
                    format!("expected a whole number from {min} to {max}, got {v:?}"),
                )),
            },
        };
        Ok(Some(WebhookSettings {
            url,
            secret,
            kinds,
            offline_delay_ms: number("WEBHOOK_OFFLINE_DELAY_MS", 3_000, 0, 3_600_000)?,
            batch_max: number("WEBHOOK_BATCH_MAX", 100, 1, 10_000)? as usize,
            timeout_ms: number("WEBHOOK_TIMEOUT_MS", 5_000, 100, 600_000)?,
            max_age_ms: number("WEBHOOK_MAX_AGE_MS", 86_400_000, 1_000, 30 * 86_400_000)?,
            queue_max: number("WEBHOOK_QUEUE_MAX", 1_000_000, 1, 100_000_000)? as usize,
        }))
    }
}

/// `X-Presence-Signature`'s value: `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A change on its way to the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<T> {
    pub kind: Kind,
    /// The user of a presence change (`None`: a statistics event, which no delay holds).
    pub user: Option<UserId>,
    /// When it was committed.
    pub at: Timestamp,
    /// What the queue needs to take it (acknowledge it) once it is sent or cancelled.
    pub item: T,
}

/// The offline delay over one ordered stream of changes. Changes come in with
/// [`Delay::push`]; those that may be sent now come out of [`Delay::ready`] in order; a
/// cancelled pair comes out of [`Delay::cancelled`] (to be taken off the queue unsent).
#[derive(Debug)]
pub struct Delay<T> {
    delay_us: i64,
    held: HashMap<UserId, Change<T>>,
    /// Users with a held offline, by the offline's time (a user's entry is stale if their
    /// held offline is another one now).
    order: VecDeque<(Timestamp, UserId)>,
    out: VecDeque<Change<T>>,
    cancelled: Vec<T>,
}

impl<T: Clone> Delay<T> {
    pub fn new(delay_ms: u64) -> Self {
        Delay {
            delay_us: delay_ms as i64 * 1000,
            held: HashMap::new(),
            order: VecDeque::new(),
            out: VecDeque::new(),
            cancelled: Vec::new(),
        }
    }

    pub fn push(&mut self, c: Change<T>) {
        let Some(user) = c.user.clone() else {
            self.out.push_back(c);
            return;
        };
        if let Some(off) = self.held.remove(&user) {
            if c.kind == Kind::Online && c.at.as_micros() <= off.at.as_micros() + self.delay_us {
                // Back within the delay: the backend hears of neither.
                self.cancelled.push(off.item);
                self.cancelled.push(c.item);
                return;
            }
            self.out.push_back(off);
        }
        if c.kind == Kind::Offline && self.delay_us > 0 {
            self.order.push_back((c.at, user.clone()));
            self.held.insert(user, c);
        } else {
            self.out.push_back(c);
        }
    }

    /// Release the offlines whose delay is over at `now`.
    pub fn tick(&mut self, now: Timestamp) {
        while let Some((at, _)) = self.order.front() {
            if at.as_micros() + self.delay_us > now.as_micros() {
                break;
            }
            let (at, user) = self.order.pop_front().expect("front");
            if self.held.get(&user).is_some_and(|c| c.at == at) {
                let c = self.held.remove(&user).expect("held");
                self.out.push_back(c);
            }
        }
    }

    /// When the next held offline is due, if any.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.order
            .iter()
            .find(|(at, u)| self.held.get(u).is_some_and(|c| c.at == *at))
            .map(|(at, _)| Timestamp(at.as_micros() + self.delay_us))
    }

    /// The changes that may be sent, in order, at most `n`.
    pub fn ready(&mut self, n: usize) -> Vec<Change<T>> {
        let k = n.min(self.out.len());
        self.out.drain(..k).collect()
    }

    pub fn ready_len(&self) -> usize {
        self.out.len()
    }

    /// Held offlines.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Take out every change, ready or held, whose item `gone` says is gone (trimmed from a
    /// store before it was sent), in no particular order.
    pub fn remove_if(&mut self, gone: impl Fn(&T) -> bool) -> Vec<T> {
        let mut out = vec![];
        let kept = std::mem::take(&mut self.out);
        for c in kept {
            if gone(&c.item) {
                out.push(c.item);
            } else {
                self.out.push_back(c);
            }
        }
        // A held offline's `order` entry goes stale with it; `tick` skips such entries.
        self.held.retain(|_, c| {
            let g = gone(&c.item);
            if g {
                out.push(c.item.clone());
            }
            !g
        });
        out
    }

    /// Pairs cancelled since the last call.
    pub fn cancelled(&mut self) -> Vec<T> {
        std::mem::take(&mut self.cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(kind: Kind, user: &str, at_ms: i64, item: u32) -> Change<u32> {
        Change {
            kind,
            user: Some(UserId::parse(user).unwrap()),
            at: Timestamp(at_ms * 1000),
            item,
        }
    }

    fn items(v: Vec<Change<u32>>) -> Vec<u32> {
        v.into_iter().map(|c| c.item).collect()
    }

    #[test]
    fn removed_changes_are_neither_sent_nor_released() {
        let mut d = Delay::new(1000);
        d.push(ch(Kind::Status, "a", 0, 1));
        d.push(ch(Kind::Offline, "b", 1, 2));
        d.push(ch(Kind::Status, "c", 2, 3));
        let mut gone = d.remove_if(|i| *i < 3);
        gone.sort();
        assert_eq!(gone, vec![1, 2]);
        d.tick(Timestamp(10_000_000));
        assert_eq!(items(d.ready(10)), vec![3]);
        assert_eq!(d.held(), 0);
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn an_offline_and_an_online_within_the_delay_are_sent_as_neither() {
        let mut d = Delay::new(3000);
        d.push(ch(Kind::Online, "a", 0, 1));
        d.push(ch(Kind::Offline, "a", 1000, 2));
        d.push(ch(Kind::Online, "b", 1500, 3));
        d.push(ch(Kind::Online, "a", 3999, 4));
        d.tick(Timestamp(10_000_000));
        assert_eq!(items(d.ready(10)), vec![1, 3]);
        assert_eq!(d.cancelled(), vec![2, 4]);
    }

    #[test]
    fn an_honest_offline_is_sent_once_the_delay_is_over() {
        let mut d = Delay::new(3000);
        d.push(ch(Kind::Offline, "a", 1000, 1));
        d.tick(Timestamp(3_999_000));
        assert!(d.ready(10).is_empty());
        assert_eq!(d.next_due(), Some(Timestamp(4_000_000)));
        d.tick(Timestamp(4_000_000));
        assert_eq!(items(d.ready(10)), vec![1]);
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn a_later_change_of_the_user_releases_the_offline_first() {
        let mut d = Delay::new(3000);
        d.push(ch(Kind::Offline, "a", 1000, 1));
        d.push(ch(Kind::Online, "a", 5000, 2));
        d.push(ch(Kind::Offline, "a", 6000, 3));
        d.push(ch(Kind::Status, "b", 6000, 4));
        assert_eq!(items(d.ready(10)), vec![1, 2, 4]);
        d.tick(Timestamp(9_000_000));
        assert_eq!(items(d.ready(10)), vec![3]);
    }

    #[test]
    fn without_a_delay_nothing_is_held() {
        let mut d = Delay::new(0);
        d.push(ch(Kind::Offline, "a", 1000, 1));
        d.push(ch(Kind::Online, "a", 1000, 2));
        assert_eq!(items(d.ready(10)), vec![1, 2]);
    }

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // RFC 4231 test case 2's key and a body, checked against `openssl dgst -sha256 -hmac`.
        let s = signature(b"Jefe", 1_700_000_000, br#"{"events":[]}"#);
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64, "{s}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(br#"1700000000.{"events":[]}"#);
        assert_eq!(
            s,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
    }

    #[test]
    fn settings_refuse_what_would_not_work() {
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        }
        assert!(
            WebhookSettings::from_lookup(&env(&[]), true)
                .unwrap()
                .is_none()
        );
        let bad: &[(&[(&str, &str)], &str)] = &[
            (&[("WEBHOOK_SECRET", "x")], "WEBHOOK_SECRET"),
            (
                &[("WEBHOOK_URL", "ftp://x"), ("WEBHOOK_SECRET", "s")],
                "WEBHOOK_URL",
            ),
            (&[("WEBHOOK_URL", "http://x")], "WEBHOOK_SECRET"),
            (
                &[
                    ("WEBHOOK_URL", "http://x"),
                    ("WEBHOOK_SECRET", "s"),
                    ("WEBHOOK_EVENTS", "user.typing"),
                ],
                "WEBHOOK_EVENTS",
            ),
            (
                &[
                    ("WEBHOOK_URL", "http://x"),
                    ("WEBHOOK_SECRET", "s"),
                    ("WEBHOOK_BATCH_MAX", "0"),
                ],
                "WEBHOOK_BATCH_MAX",
            ),
        ];
        for (pairs, var) in bad {
            let e = WebhookSettings::from_lookup(&env(pairs), false).unwrap_err();
            assert_eq!(e.0, *var);
        }
        let short = WebhookSettings::from_lookup(
            &env(&[
                ("WEBHOOK_URL", "https://api.example/hook"),
                ("WEBHOOK_SECRET", "short"),
            ]),
            true,
        );
        assert_eq!(short.unwrap_err().0, "WEBHOOK_SECRET");
        let ok = WebhookSettings::from_lookup(
            &env(&[
                ("WEBHOOK_URL", "https://api.example/hook"),
                ("WEBHOOK_SECRET", "s"),
                ("WEBHOOK_EVENTS", "user.offline, stats.event"),
            ]),
            false,
        )
        .unwrap()
        .unwrap();
        assert!(ok.kinds.contains(Kind::Offline) && ok.kinds.contains(Kind::Stats));
        assert!(!ok.kinds.contains(Kind::Online));
        assert_eq!((ok.batch_max, ok.offline_delay_ms), (100, 3000));
    }
}
