//! Blocks as this replica applies them (section 11): every block made or lifted on any
//! replica (`crate::blocks`, the engine's `Rules` topic) goes into the index of the users
//! connected here ([`super::blocks::BlockIndex`]), and their sockets are told: made, each that
//! could see the other online gets them once as offline with a greater version, then nothing;
//! lifted, each gets the other's current presence (if the other rules allow) with a greater
//! version still.

use crate::domain::{Presence, UserId};
use crate::engine::Topic;
use crate::state::AppState;

/// Apply every replica's blocks to this one's index and sockets, until the replica stops.
pub async fn run(state: AppState) {
    let mut rx = state.engine.subscribe_topic(Topic::Rules);
    let mut resyncs = Some(state.engine.subscribe_resyncs());
    loop {
        let msg = tokio::select! {
            _ = state.background.stop.cancelled() => return,
            m = rx.recv() => m,
            // The bus was re-established: what was announced meanwhile never arrived.
            r = async {
                match resyncs.as_mut()?.recv().await {
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
                    _ => Some(()),
                }
            }, if resyncs.is_some() => {
                match r {
                    Some(_) => reload(&state).await,
                    None => resyncs = None,
                }
                continue;
            }
        };
        let text = match msg {
            Ok(t) => t,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // Blocks made meanwhile are missing from the index: reload every local user's.
                tracing::warn!(missed = n, "block announcements missed; reloading");
                reload(&state).await;
                continue;
            }
            Err(_) => return,
        };
        let Some((a, b, on)) = crate::blocks::decode(&text) else {
            continue;
        };
        let (a_here, b_here) = state.gateway.blocks.apply(&a, &b, on);
        if a_here || b_here {
            tell(&state, &a, &b, on, a_here, b_here).await;
        }
    }
}

/// Reads of a reload in flight at once.
const RELOAD_READS: usize = 16;

/// Reload the blocks of every user connected here (announcements were missed), and tell
/// their sockets what the missed announcements would have told them.
async fn reload(state: &AppState) {
    let users: std::collections::HashSet<UserId> = state
        .gateway
        .viewers
        .all()
        .into_iter()
        .map(|v| v.handle.conn.user.clone())
        .collect();
    let mut users = users.into_iter();
    let mut reads = tokio::task::JoinSet::new();
    let mut changed = Vec::new();
    loop {
        while reads.len() < RELOAD_READS
            && let Some(u) = users.next()
        {
            let st = state.clone();
            reads.spawn(async move {
                let read = crate::blocks::store::hidden(&*st.engine, st.db.as_deref(), &u).await;
                (u, read)
            });
        }
        let Some(done) = reads.join_next().await else {
            break;
        };
        match done {
            Ok((u, Ok(hidden))) => {
                let (made, lifted) = state.gateway.blocks.replace(&u, hidden);
                if !made.is_empty() || !lifted.is_empty() {
                    changed.push((u, made, lifted));
                }
            }
            Ok((_, Err(e))) => tracing::warn!(error = %e, "blocks not reloaded"),
            Err(e) => tracing::warn!(error = %e, "a blocks reload failed"),
        }
    }
    // Each side tells its own sockets (the other's reload tells theirs).
    for (u, made, lifted) in changed {
        for (others, on) in [(made, true), (lifted, false)] {
            for other in others {
                tell(state, &u, &other, on, true, false).await;
            }
        }
    }
}

/// Tell the sockets here of a block between `a` and `b` made (`on`) or lifted.
async fn tell(state: &AppState, a: &UserId, b: &UserId, on: bool, a_here: bool, b_here: bool) {
    let found = match state.engine.get(&[a.clone(), b.clone()]).await {
        Ok(f) => f,
        Err(e) => {
            // Their sockets stop hearing of each other (the index); what they show now may
            // stay until they refetch.
            tracing::warn!(error = %e, "a block's presences not read; not told");
            return;
        }
    };
    let [pa, pb] = [&found[0], &found[1]];
    if a_here && let Some(pb) = pb {
        show(state, a, pb, on);
    }
    if b_here && let Some(pa) = pa {
        show(state, b, pa, on);
    }
}

/// Show `viewer`'s sockets that may see `p`'s user what a block made or lifted means.
fn show(state: &AppState, viewer: &UserId, p: &Presence, on: bool) {
    let policy = state.config.visibility_policy;
    let reciprocal = state.config.last_seen_reciprocal;
    for v in state
        .gateway
        .viewers
        .for_change(policy, &p.user_id, p.gender)
        .into_iter()
        .filter(|v| v.handle.conn.user == *viewer)
    {
        let hides = reciprocal && v.handle.hides_last_seen();
        let seen = crate::domain::privacy::seen_by_others(p, hides);
        let told = if on {
            if !seen.online {
                // They see them offline already: nothing to take back.
                continue;
            }
            // Once, as offline, above any version they showed (a version of the presence's
            // own, never committed: the user's next change goes past it, and they hear of no
            // change of theirs while the block holds); no lastSeen the rules would hide.
            Presence {
                version: seen.version + 1,
                ..crate::domain::privacy::seen_by_others(&p.gone_for(p.gender), hides)
            }
        } else {
            // Above the offline they were told of when the block was made.
            Presence {
                version: seen.version + 2,
                ..seen
            }
        };
        super::fanout::offer_one(state, &v, &told);
    }
}
