//! A per-socket token bucket for requests.

use std::time::Instant;

#[derive(Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// A bucket shared by whoever holds it (a socket's handle, the session's budget table).
pub type SharedBucket = std::sync::Arc<std::sync::Mutex<TokenBucket>>;

impl TokenBucket {
    /// `rate` 0 means unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// A new bucket nobody else holds.
    pub fn shared(rate: u32, burst: u32) -> SharedBucket {
        std::sync::Arc::new(std::sync::Mutex::new(TokenBucket::new(rate, burst)))
    }

    /// Take one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_n(1)
    }

    /// The tokens left (as of the last take).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// Take `n` tokens if there are that many (none otherwise). A cost above the burst less
    /// one (the request that carries it already paid one) is that: what a full budget buys is
    /// never refused for ever, however small `RATE_LIMIT_BURST` is.
    pub fn try_take_n(&mut self, n: u32) -> bool {
        let n = f64::from(n).min((self.burst - 1.0).max(1.0));
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal() {
        let mut b = TokenBucket::new(1, 3);
        assert!((0..3).all(|_| b.try_take()));
        assert!(!b.try_take(), "burst spent, and a second has not passed");
        let mut unlimited = TokenBucket::new(0, 0);
        assert!((0..10_000).all(|_| unlimited.try_take()));
    }

    #[test]
    fn a_costly_request_takes_its_cost_or_nothing() {
        let mut b = TokenBucket::new(1, 10);
        assert!(b.try_take_n(9));
        assert!(!b.try_take_n(2), "one left: a cost of two is refused");
        assert!(b.try_take(), "and nothing was taken by the refusal");
    }
}
