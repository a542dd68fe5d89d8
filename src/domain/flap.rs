//! Flap damping (§1, `PRESENCE_FLAP_LIMIT` / `PRESENCE_FLAP_HOLD_MS`). A client that joins
//! and leaves `/` as fast as it can, on one session or over new ones, would otherwise cost
//! every viewer allowed to see its user an online and an offline per cycle, on every replica:
//! thousands of deliveries a second per viewer from one token. Past `limit` transitions of one
//! user in [`WINDOW_MS`], each further offline is held up to `hold_ms`, as a grace is, so a
//! reconnect meanwhile announces neither. An honest user who reconnects a few times stays
//! under the limit and is never delayed.
//!
//! Pure: each engine keeps one [`FlapWindow`] per user (the memory engine in its table, the
//! Redis engine in the user's hash, cluster-wide) and applies [`FlapRule::offline`] when a
//! close would take an online user offline; `disconnect.lua` restates it, and the conformance
//! test holds the two engines to it.

/// The window the limit counts in (fixed: the contract says "per 10 s").
pub const WINDOW_MS: u64 = 10_000;

/// `limit` transitions per window before offlines are held `hold_ms`; `limit` 0: no damping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlapRule {
    pub limit: u32,
    pub hold_ms: u64,
}

/// One user's offlines in the current window: when it began (µs since the epoch), how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlapWindow {
    pub start_us: i64,
    pub offlines: u32,
}

impl FlapRule {
    /// One more offline of this user at `now_us`, which would have waited `grace_ms`: the
    /// window after it, and how long it waits now. Offlines are counted (each follows an
    /// online, so `n` offlines are `2n` transitions): the online that ends a hold is never
    /// announced, so counting onlines would let the window empty while a flood goes on.
    pub fn offline(&self, w: FlapWindow, now_us: i64, grace_ms: u64) -> (FlapWindow, u64) {
        if self.limit == 0 {
            return (w, grace_ms);
        }
        let mut w = if now_us.saturating_sub(w.start_us) >= WINDOW_MS as i64 * 1000 {
            FlapWindow {
                start_us: now_us,
                offlines: 0,
            }
        } else {
            w
        };
        w.offlines = w.offlines.saturating_add(1);
        let held = u64::from(w.offlines) * 2 > u64::from(self.limit);
        (
            w,
            if held {
                grace_ms.max(self.hold_ms)
            } else {
                grace_ms
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: FlapRule = FlapRule {
        limit: 10,
        hold_ms: 5000,
    };

    #[test]
    fn a_few_reconnects_are_never_held() {
        let mut w = FlapWindow::default();
        for i in 0..5 {
            let (next, grace) = RULE.offline(w, 1_000_000 + i, 0);
            assert_eq!(grace, 0, "offline {} of 5 in the window", i + 1);
            w = next;
        }
        let (_, grace) = RULE.offline(w, 1_000_010, 0);
        assert_eq!(grace, 5000, "the sixth makes twelve transitions: held");
    }

    #[test]
    fn the_window_starts_again_after_ten_seconds() {
        let mut w = FlapWindow::default();
        for i in 0..8 {
            w = RULE.offline(w, i, 0).0;
        }
        let (w, grace) = RULE.offline(w, 10_000_000, 0);
        assert_eq!((w.offlines, grace), (1, 0));
    }

    #[test]
    fn a_longer_grace_is_kept_and_zero_switches_it_off() {
        let w = FlapWindow {
            start_us: 0,
            offlines: 9,
        };
        assert_eq!(RULE.offline(w, 1, 7000).1, 7000);
        let off = FlapRule {
            limit: 0,
            hold_ms: 5000,
        };
        assert_eq!(off.offline(w, 1, 0), (w, 0));
    }
}
