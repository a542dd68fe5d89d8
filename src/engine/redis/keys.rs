//! Every Redis key and channel of a deployment (`REDIS_KEY_PREFIX`), built in one place.
//!
//! A user's keys and their bucket's indexes share the bucket's hash tag, so one script runs on
//! one Redis Cluster slot; a replica's connection index and claimed set share the replica's.

use crate::domain::{Gender, UserId};
use crate::engine::Topic;

/// Buckets of the cluster-wide indexes.
pub const BUCKETS: u32 = 64;

/// FNV-1a: a stable bucket for a user id, the same on every replica and version.
pub fn bucket(uid: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in uid.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % BUCKETS
}

/// A connection's member in its replica's index: user id and connection id, split by a
/// control character, which neither may contain.
pub fn member(user: &UserId, conn: &str) -> String {
    format!("{user}\u{1f}{conn}")
}

pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// The hash tag of bucket `b`.
    fn tag(&self, b: u32) -> String {
        format!("{{{}:b{b}}}", self.prefix)
    }

    /// The seven keys of the scripts' common prelude for this user (`common.lua`).
    pub fn user(&self, uid: &str) -> Vec<String> {
        let b = bucket(uid);
        let t = self.tag(b);
        let p = &self.prefix;
        vec![
            format!("{p}:u:{t}:{uid}"),
            format!("{p}:c:{t}:{uid}"),
            self.online(b, Gender::Male),
            self.online(b, Gender::Female),
            self.online(b, Gender::Other),
            self.counters(b),
            self.pending(b),
        ]
    }

    /// A user's record (the prelude's first key).
    pub fn record(&self, uid: &str) -> String {
        format!("{}:u:{}:{uid}", self.prefix, self.tag(bucket(uid)))
    }

    /// Bucket `b`'s online users of gender `g` (sorted set, read by lex).
    pub fn online(&self, b: u32, g: Gender) -> String {
        format!("{}:on:{}:{}", self.prefix, self.tag(b), g.as_str())
    }

    /// Bucket `b`'s counters (hash: conns, disconns, swept).
    pub fn counters(&self, b: u32) -> String {
        format!("{}:cnt:{}", self.prefix, self.tag(b))
    }

    /// Bucket `b`'s pending offlines (sorted set, score = deadline).
    pub fn pending(&self, b: u32) -> String {
        format!("{}:pend:{}", self.prefix, self.tag(b))
    }

    /// Buckets holding pending offlines, scored by their earliest deadline: an idle sweep reads
    /// this one key instead of every bucket.
    pub fn pending_buckets(&self) -> String {
        format!("{}:pendb", self.prefix)
    }

    /// A replica's connection index (sorted set, score = last heard or indexed, µs).
    pub fn node_set(&self, node: &str) -> String {
        format!("{}:nc:{{{node}}}", self.prefix)
    }

    /// A replica's claimed members: taken from its index for expiry, not yet expired (see
    /// `claim.lua`). Same hash tag as the index.
    pub fn claimed_set(&self, node: &str) -> String {
        format!("{}:ncx:{{{node}}}", self.prefix)
    }

    /// Bucket `b`'s webhook events (stream, consumer group `wh`), appended by the transition
    /// scripts in the same step as the change (`common.lua`'s `commit`) when webhooks are on.
    pub fn webhook_stream(&self, b: u32) -> String {
        format!("{}:wh:{}", self.prefix, self.tag(b))
    }

    /// Who sends bucket `b`'s webhook events (a replica's id, with a TTL: `lease.lua`).
    pub fn webhook_lease(&self, b: u32) -> String {
        format!("{}:whl:{}", self.prefix, self.tag(b))
    }

    /// The live replicas (set).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Cluster-wide figures (hash: online, peak, lastSweep).
    pub fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }

    /// The channel of bucket `b`'s committed changes: it shares the bucket's hash tag, so on
    /// Redis Cluster a transition script can `SPUBLISH` to it from the slot it runs on, and the
    /// bus spreads over the shards as the keys do.
    pub fn event_channel(&self, b: u32) -> String {
        format!("{}:ev:{}", self.prefix, self.tag(b))
    }

    /// Every bucket's change channel.
    pub fn event_channels(&self) -> Vec<String> {
        (0..BUCKETS).map(|b| self.event_channel(b)).collect()
    }

    /// The channel of an opaque topic (statistics batches keep their original name).
    pub fn topic_channel(&self, t: Topic) -> String {
        match t {
            Topic::Stats => format!("{}:stats", self.prefix),
            Topic::Admin => format!("{}:admin", self.prefix),
            Topic::Rules => format!("{}:rules", self.prefix),
        }
    }

    /// Whom a user blocked (set; section 11).
    pub fn blocks(&self, uid: &str) -> String {
        format!("{}:blk:{}:{uid}", self.prefix, self.tag(bucket(uid)))
    }

    /// Who blocked a user (set).
    pub fn blockers(&self, uid: &str) -> String {
        format!("{}:blkby:{}:{uid}", self.prefix, self.tag(bucket(uid)))
    }

    /// The replicas' reports (hash: node → "µs when reported" and the report, split by a
    /// space).
    pub fn replicas(&self) -> String {
        format!("{}:replicas", self.prefix)
    }
}
