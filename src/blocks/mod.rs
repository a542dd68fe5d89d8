//! Blocks (section 11): `presence:block` / `presence:unblock` and the HTTP paths. A block is
//! kept ([`store`]), then announced to every replica over the engine's `Rules` topic; each
//! replica applies it to its index of the users connected there and tells their sockets
//! (`crate::gateway::rules`).

pub mod store;

use crate::db::Database;
use crate::domain::UserId;
use crate::engine::{Blocked, PresenceEngine, Topic};
use crate::error::AppError;
use serde::{Deserialize, Serialize};

/// A block made or lifted, as the replicas tell each other.
#[derive(Serialize, Deserialize)]
struct Rule {
    a: String,
    b: String,
    on: bool,
}

/// Where blocks are kept and how many a user may hold (`PRESENCE_MAX_BLOCKS`).
#[derive(Clone, Copy)]
pub struct Blocks<'a> {
    pub engine: &'a dyn PresenceEngine,
    pub db: Option<&'a Database>,
    pub max: usize,
}

/// `user` blocks `other`.
pub async fn block(b: Blocks<'_>, user: &UserId, other: &UserId) -> Result<(), AppError> {
    if user == other {
        return Err(AppError::bad_request("a user cannot block themselves"));
    }
    let max = b.max;
    let made = store::of(b.engine, b.db).block(user, other, max).await?;
    if made != Blocked::TooMany
        && b.db.is_some()
        && let Err(e) = b.engine.block_store().block(user, other, usize::MAX).await
    {
        // The engine's copy is read while the database is down (`store::hidden`).
        tracing::warn!(error = %e, "block not copied to the engine");
    }
    match made {
        Blocked::TooMany => Err(AppError::bad_request(format!(
            "at most {max} blocks (PRESENCE_MAX_BLOCKS)"
        ))),
        // Announced again when it was there already: a request retried after the first
        // announcement failed must still reach every replica (applying one twice is harmless).
        Blocked::Already => announce(b.engine, user, other, true).await,
        Blocked::Added => {
            metrics::counter!("presence_blocks_total").increment(1);
            announce(b.engine, user, other, true).await
        }
    }
}

/// `user` lifts their block of `other` (nothing to lift is not an error). While `other`
/// blocks `user` the two stay hidden from each other: the lift is not announced then.
pub async fn unblock(b: Blocks<'_>, user: &UserId, other: &UserId) -> Result<(), AppError> {
    let store = store::of(b.engine, b.db);
    store.unblock(user, other).await?;
    if b.db.is_some()
        && let Err(e) = b.engine.block_store().unblock(user, other).await
    {
        tracing::warn!(error = %e, "unblock not copied to the engine");
    }
    if store.blocks(other, user).await? {
        return Ok(());
    }
    // Announced even when there was nothing to lift: a retry after a failed announcement.
    announce(b.engine, user, other, false).await
}

/// Whom `user` blocked.
pub async fn list(b: Blocks<'_>, user: &UserId) -> Result<Vec<UserId>, AppError> {
    Ok(store::of(b.engine, b.db).blocks_of(user).await?.0)
}

async fn announce(
    engine: &dyn PresenceEngine,
    a: &UserId,
    b: &UserId,
    on: bool,
) -> Result<(), AppError> {
    let rule = Rule {
        a: a.to_string(),
        b: b.to_string(),
        on,
    };
    let text = serde_json::to_string(&rule).map_err(|_| AppError::Internal)?;
    engine.publish(Topic::Rules, text).await?;
    Ok(())
}

/// A `Rules` message: `(a, b, made)`; `None` if it is not one.
pub fn decode(text: &str) -> Option<(UserId, UserId, bool)> {
    let rule: Rule = serde_json::from_str(text).ok()?;
    Some((
        UserId::parse(&rule.a).ok()?,
        UserId::parse(&rule.b).ok()?,
        rule.on,
    ))
}
