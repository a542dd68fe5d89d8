//! The cluster figures as last read ([`super`] reads them): what requests get, and when a
//! request last looked. Nothing here reads the store or the application state.

use crate::engine::ClusterStats;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Reads go on this long after the last request that looked.
const LOOKED_AT: Duration = Duration::from_secs(3);

pub struct Figures {
    last: RwLock<Last>,
    /// When a request last looked at the figures, and at liveness only (ms since `epoch`).
    looked: AtomicU64,
    probed: AtomicU64,
    epoch: Instant,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            last: RwLock::default(),
            looked: AtomicU64::new(0),
            probed: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

#[derive(Default, Clone)]
struct Last {
    stats: Option<ClusterStats>,
    /// The live replicas' reports (`gateway::cluster`).
    replicas: Vec<serde_json::Value>,
    /// Whether the last read succeeded in time.
    answered: bool,
}

impl Figures {
    fn last(&self) -> std::sync::RwLockReadGuard<'_, Last> {
        self.last.read().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// Someone looks at the figures: keep them fresh for a while.
    pub fn looked_at(&self) {
        self.looked.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Someone asks whether the store answers (readiness): check it for a while.
    pub fn probed(&self) {
        self.probed.store(self.now_ms(), Ordering::Relaxed);
    }

    fn recent(&self, at: &AtomicU64) -> bool {
        let at = at.load(Ordering::Relaxed);
        at > 0 && self.now_ms() - at <= LOOKED_AT.as_millis() as u64
    }

    /// The last figures read, however old (none before the first read).
    pub fn stats(&self) -> Option<ClusterStats> {
        self.last().stats.clone()
    }

    /// Whether the presence store answered the last read in time.
    pub fn store_answers(&self) -> bool {
        self.last().answered
    }

    /// Whether a request looked at the figures lately (they are kept read then).
    pub fn looked_at_lately(&self) -> bool {
        self.recent(&self.looked)
    }

    /// Whether readiness was probed lately (the store is kept checked then).
    pub fn probed_lately(&self) -> bool {
        self.recent(&self.probed)
    }

    /// The live replicas' reports, as last read.
    pub fn replicas(&self) -> Vec<serde_json::Value> {
        self.last().replicas.clone()
    }

    /// A read that succeeded in time.
    pub fn read(&self, stats: ClusterStats, replicas: Vec<serde_json::Value>) {
        *self.last.write().unwrap_or_else(|e| e.into_inner()) = Last {
            stats: Some(stats),
            replicas,
            answered: true,
        };
    }

    /// Whether the store answered the last read or check in time (what was read stays).
    pub fn answered(&self, ok: bool) {
        self.last
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .answered = ok;
    }
}
