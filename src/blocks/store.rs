//! Where blocks are kept (section 11): the database when one is configured, else the engine
//! (Redis, or this process). With a database the engine keeps a copy too (written after it),
//! which a handshake reads while the database is down. Reads here are for a handshake or a
//! request, never a delivery.

use crate::db::Database;
use crate::domain::UserId;
use crate::engine::{BlockStore, PresenceEngine};
use crate::error::AppError;
use std::collections::HashSet;

pub fn of<'a>(engine: &'a dyn PresenceEngine, db: Option<&'a Database>) -> &'a dyn BlockStore {
    match db {
        Some(db) => db,
        None => engine.block_store(),
    }
}

/// Everyone `user` is hidden from, both ways (whom they blocked, who blocked them). With the
/// database down, the engine's copy for a user it knows (its copy is the database's, unless
/// Redis lost its data, and then it would not know them); a user it does not know is refused.
pub async fn hidden(
    engine: &dyn PresenceEngine,
    db: Option<&Database>,
    user: &UserId,
) -> Result<HashSet<UserId>, AppError> {
    let both =
        |(mine, theirs): (Vec<UserId>, Vec<UserId>)| mine.into_iter().chain(theirs).collect();
    let Some(db) = db else {
        return Ok(both(engine.block_store().blocks_of(user).await?));
    };
    let read = if db.is_up() && db.schema_within(std::time::Duration::from_secs(5)).await {
        db.blocks_of(user).await.map_err(AppError::from)
    } else {
        Err(AppError::Unavailable("the database is unreachable".into()))
    };
    match read {
        Ok(b) => Ok(both(b)),
        Err(e) => {
            if !crate::privacy::known(engine, user).await? {
                return Err(e);
            }
            Ok(both(engine.block_store().blocks_of(user).await?))
        }
    }
}
