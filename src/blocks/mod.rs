//! Blocks (section 11): `presence:block` / `presence:unblock` and the HTTP paths. A block is
//! kept ([`store`]), then announced to every replica over the engine's `Rules` topic; each
//! replica applies it to its index of the users connected there
//! ([`crate::gateway::blocks::BlockIndex`]) and tells their sockets: made, each who could see
//! the other online gets them once as offline with a greater version, then nothing; lifted,
//! each gets the other's current presence (if the other rules allow) with a greater version
//! still.

pub mod store;

use crate::domain::{Presence, UserId};
use crate::engine::{Blocked, Topic};
use crate::error::AppError;
use crate::state::AppState;
use serde::{Deserialize, Serialize};

/// A block made or lifted, as the replicas tell each other.
#[derive(Serialize, Deserialize)]
struct Rule {
    a: String,
    b: String,
    on: bool,
}

/// `user` blocks `other`.
pub async fn block(state: &AppState, user: &UserId, other: &UserId) -> Result<(), AppError> {
    if user == other {
        return Err(AppError::bad_request("a user cannot block themselves"));
    }
    let max = state.config.max_blocks;
    let store = store::of(&*state.engine, state.db.as_deref());
    let made = store.block(user, other, max).await?;
    if made != Blocked::TooMany && state.db.is_some() {
        // The engine's copy, read while the database is down (`store::hidden`).
        if let Err(e) = state
            .engine
            .block_store()
            .block(user, other, usize::MAX)
            .await
        {
            tracing::warn!(error = %e, "block not copied to the engine");
        }
    }
    match made {
        Blocked::TooMany => Err(AppError::bad_request(format!(
            "at most {max} blocks (PRESENCE_MAX_BLOCKS)"
        ))),
        Blocked::Already => Ok(()),
        Blocked::Added => {
            metrics::counter!("presence_blocks_total").increment(1);
            announce(state, user, other, true).await
        }
    }
}

/// `user` lifts their block of `other` (nothing to lift is not an error).
pub async fn unblock(state: &AppState, user: &UserId, other: &UserId) -> Result<(), AppError> {
    let store = store::of(&*state.engine, state.db.as_deref());
    let had = store.unblock(user, other).await?;
    if state.db.is_some()
        && let Err(e) = state.engine.block_store().unblock(user, other).await
    {
        tracing::warn!(error = %e, "unblock not copied to the engine");
    }
    if had {
        announce(state, user, other, false).await?;
    }
    Ok(())
}

/// Whom `user` blocked.
pub async fn list(state: &AppState, user: &UserId) -> Result<Vec<UserId>, AppError> {
    let store = store::of(&*state.engine, state.db.as_deref());
    Ok(store.blocks_of(user).await?.0)
}

async fn announce(state: &AppState, a: &UserId, b: &UserId, on: bool) -> Result<(), AppError> {
    let rule = Rule {
        a: a.to_string(),
        b: b.to_string(),
        on,
    };
    let text = serde_json::to_string(&rule).map_err(|_| AppError::Internal)?;
    state.engine.publish(Topic::Rules, text).await?;
    Ok(())
}

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
        let Ok(rule) = serde_json::from_str::<Rule>(&text) else {
            continue;
        };
        let (Ok(a), Ok(b)) = (UserId::parse(&rule.a), UserId::parse(&rule.b)) else {
            continue;
        };
        let (a_here, b_here) = state.gateway.blocks.apply(&a, &b, rule.on);
        if a_here || b_here {
            tell(&state, &a, &b, rule.on, a_here, b_here).await;
        }
    }
}

/// Reload the blocks of every user connected here (announcements were missed).
async fn reload(state: &AppState) {
    let users: std::collections::HashSet<UserId> = state
        .gateway
        .viewers
        .all()
        .into_iter()
        .map(|v| v.handle.conn.user.clone())
        .collect();
    for u in users {
        match store::hidden(&*state.engine, state.db.as_deref(), &u).await {
            Ok(hidden) => state.gateway.blocks.replace(&u, hidden),
            Err(e) => tracing::warn!(error = %e, "blocks not reloaded"),
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
            // change of theirs while the block holds).
            Presence {
                version: seen.version + 1,
                ..seen.gone_for(seen.gender)
            }
        } else {
            // Above the offline they were told of when the block was made.
            Presence {
                version: seen.version + 2,
                ..seen
            }
        };
        crate::gateway::fanout::offer_one(state, &v, &told);
    }
}
