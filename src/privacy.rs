//! Setting a user's privacy (section 11), for both transports: `presence:set-privacy` and
//! `PUT /api/users/{userId}/privacy`. The engine stores the settings with the presence and
//! announces the change; what each viewer gets of it is `domain::privacy`'s rule. With a
//! database, the settings are kept there first (they outlive Redis), and the engine is given
//! them whole: it converges on the database's.

use crate::db::Database;
use crate::domain::{PrivacyChange, PrivacySettings, Timestamp, UserId};
use crate::engine::PresenceEngine;
use crate::error::AppError;

/// Apply `change` to `user`'s settings; returns them as they are after it.
pub async fn set(
    engine: &dyn PresenceEngine,
    db: Option<&Database>,
    user: &UserId,
    change: PrivacyChange,
) -> Result<PrivacySettings, AppError> {
    let change = match db {
        Some(db) => whole(db.set_privacy(user, change).await?),
        None => change,
    };
    let p = engine.set_privacy(user, change, Timestamp::now()).await?;
    Ok(p.privacy.settings())
}

/// Whether the engine holds a record of `user`: then what it keeps of their rules is what the
/// database had (written after it), unless Redis lost its data, and then it would not know
/// them. The fallback of a handshake while the database is down.
pub async fn known(engine: &dyn PresenceEngine, user: &UserId) -> Result<bool, AppError> {
    Ok(engine
        .get(std::slice::from_ref(user))
        .await?
        .pop()
        .flatten()
        .is_some())
}

/// How long a handshake waits for the schema of a replica that is migrating.
const SCHEMA_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Settings as a change that sets both.
fn whole(s: PrivacySettings) -> PrivacyChange {
    PrivacyChange {
        invisible: Some(s.invisible),
        last_seen: Some(s.last_seen),
    }
}

/// At a handshake, with a database: give the engine the user's kept settings before the
/// connection announces them (a Redis that lost its data would announce an invisible user
/// online). When the database cannot answer, a user the engine knows keeps the settings it
/// holds (written after the database's, so the same unless Redis lost them, and then it
/// would not know the user); one it does not know is refused: when in doubt, hide.
pub async fn restore(
    engine: &dyn PresenceEngine,
    db: &Database,
    user: &UserId,
) -> Result<(), AppError> {
    // Known to be down: no query waits for its timeout on every handshake.
    let kept = if db.is_up() && db.schema_within(SCHEMA_WAIT).await {
        db.privacy_of(user).await
    } else {
        Err(crate::db::DbError::Sql(sqlx::Error::PoolTimedOut))
    };
    let kept = match kept {
        Ok(kept) => kept,
        Err(e) => {
            return if known(engine, user).await? {
                Ok(())
            } else {
                Err(e.into())
            };
        }
    };
    if kept != crate::domain::Privacy::default().settings() {
        // The same settings again change nothing (and announce nothing).
        engine
            .set_privacy(user, whole(kept), Timestamp::now())
            .await?;
    }
    Ok(())
}

/// `user`'s settings (the defaults for a user who never set any): the database's when one is
/// configured, else the engine's.
pub async fn get(
    engine: &dyn PresenceEngine,
    db: Option<&Database>,
    user: &UserId,
) -> Result<PrivacySettings, AppError> {
    if let Some(db) = db {
        return Ok(db.privacy_of(user).await?);
    }
    let p = engine
        .get(std::slice::from_ref(user))
        .await?
        .pop()
        .flatten();
    Ok(p.map(|p| p.privacy.settings())
        .unwrap_or_else(|| crate::domain::Privacy::default().settings()))
}
