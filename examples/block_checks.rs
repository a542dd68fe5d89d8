//! What blocks cost a replica (section 11), for a user holding 10,000 of them: the fan-out's
//! check per change and per delivery, a handshake's load into the index, a block made
//! elsewhere. `cargo run --release --example block_checks`; prints one JSON line.

use presence_gateway::domain::UserId;
use presence_gateway::gateway::blocks::BlockIndex;
use presence_gateway::gateway::hidden::key_of;
use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

fn id(s: String) -> UserId {
    UserId::parse(&s).unwrap()
}

fn main() {
    const BLOCKS: usize = 10_000;
    const VIEWERS: usize = 10_000;
    let ix = BlockIndex::default();
    // 10,000 viewers connected here; the heavy user blocked every one of them.
    let heavy = id("heavy".into());
    let viewers: Vec<UserId> = (0..VIEWERS).map(|i| id(format!("v{i}"))).collect();
    let t = Instant::now();
    for (i, v) in viewers.iter().enumerate() {
        let conn: Arc<str> = format!("c{i}").into();
        ix.hold(v, &conn);
        ix.merge(v, HashSet::from([heavy.clone()]));
    }
    let hold_viewers = t.elapsed();
    // The heavy user connects here too: their 10,000 blocks loaded at once.
    let blocked: HashSet<UserId> = viewers.iter().cloned().collect();
    let conn: Arc<str> = "heavy-conn".into();
    let t = Instant::now();
    ix.hold(&heavy, &conn);
    ix.merge(&heavy, blocked.clone());
    let hold_heavy = t.elapsed();

    // The fan-out of one change of the heavy user: one lookup, then a check per viewer (each
    // connection carries its user's key, as `ConnHandle::user_key`).
    let keys: Vec<(u64, &UserId)> = viewers.iter().map(|v| (key_of(v), v)).collect();
    const CHANGES: usize = 200;
    let t = Instant::now();
    let mut skipped = 0usize;
    for _ in 0..CHANGES {
        let hidden = ix.hidden_from(black_box(&heavy));
        for (k, v) in &keys {
            if let Some(h) = &hidden
                && h.holds(black_box(*k), v)
            {
                skipped += 1;
            }
        }
    }
    let per_check = t.elapsed().as_nanos() as f64 / (CHANGES * VIEWERS) as f64;
    assert_eq!(skipped, CHANGES * VIEWERS);
    // The common case: a change hidden from one user here, checked against every viewer.
    let t = Instant::now();
    let mut skipped = 0usize;
    for _ in 0..CHANGES {
        let hidden = ix.hidden_from(black_box(&viewers[0]));
        for (k, v) in &keys {
            if let Some(h) = &hidden
                && h.holds(black_box(*k), v)
            {
                skipped += 1;
            }
        }
    }
    let per_check_miss = t.elapsed().as_nanos() as f64 / (CHANGES * VIEWERS) as f64;
    assert_eq!(skipped, 0);
    // A change of a user nobody here blocked: the lookup alone.
    let other = id("free".into());
    let t = Instant::now();
    for _ in 0..1_000_000 {
        black_box(ix.hidden_from(black_box(&other)));
    }
    let lookup_none = t.elapsed().as_nanos() as f64 / 1e6;
    // A viewer's change, with one local user (the heavy one) hidden from it.
    let t = Instant::now();
    for v in viewers.iter().cycle().take(1_000_000) {
        let h = ix.hidden_from(black_box(v));
        black_box(h.is_some_and(|h| h.contains(&heavy)));
    }
    let lookup_some = t.elapsed().as_nanos() as f64 / 1e6;
    // Blocks made and lifted elsewhere (the rules channel), touching the heavy user's set.
    let t = Instant::now();
    for i in 0..10_000 {
        let x = id(format!("x{i}"));
        ix.apply(&heavy, &x, true);
        ix.apply(&heavy, &x, false);
    }
    let apply = t.elapsed().as_nanos() as f64 / 20_000.0;
    println!(
        "{{\"blocks\": {BLOCKS}, \"ns_per_delivery_check_hidden\": {per_check:.1}, \"ns_per_delivery_check_not_hidden\": {per_check_miss:.1}, \"ns_per_change_lookup_none\": {lookup_none:.1}, \"ns_per_change_lookup_some\": {lookup_some:.1}, \"ns_per_rule_applied\": {apply:.1}, \"ms_hold_10000_viewers\": {:.1}, \"ms_hold_user_with_10000_blocks\": {:.2}}}",
        hold_viewers.as_secs_f64() * 1e3,
        hold_heavy.as_secs_f64() * 1e3
    );
}
