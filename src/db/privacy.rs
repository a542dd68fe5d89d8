//! The user's own settings (section 11), kept in `user_privacy` (migration 0009): written
//! before the engine is told, read at each handshake (so a Redis that lost them gets them
//! back before the user is announced to anyone).

use super::{Database, DbError};
use crate::domain::{LastSeen, PrivacyChange, PrivacySettings, UserId};
use sqlx::Row;

fn settings(invisible: bool, nobody: bool) -> PrivacySettings {
    PrivacySettings {
        invisible,
        last_seen: if nobody {
            LastSeen::Nobody
        } else {
            LastSeen::Everyone
        },
    }
}

impl Database {
    /// The user's settings; the defaults when they never set any.
    pub async fn privacy_of(&self, user: &UserId) -> Result<PrivacySettings, DbError> {
        let row =
            sqlx::query("SELECT invisible, last_seen_nobody FROM user_privacy WHERE user_id = $1")
                .bind(user.as_str())
                .fetch_optional(self.pool())
                .await
                .map_err(DbError::from);
        self.observe(&row);
        Ok(row?.map_or(settings(false, false), |r| settings(r.get(0), r.get(1))))
    }

    /// Apply `change` (a field left out keeps its value) in one statement; returns the
    /// settings after it.
    pub async fn set_privacy(
        &self,
        user: &UserId,
        change: PrivacyChange,
    ) -> Result<PrivacySettings, DbError> {
        let row = sqlx::query(
            "INSERT INTO user_privacy (user_id, invisible, last_seen_nobody) \
             VALUES ($1, coalesce($2, false), coalesce($3, false)) \
             ON CONFLICT (user_id) DO UPDATE SET \
               invisible = coalesce($2, user_privacy.invisible), \
               last_seen_nobody = coalesce($3, user_privacy.last_seen_nobody), \
               updated_at = now() \
             RETURNING invisible, last_seen_nobody",
        )
        .bind(user.as_str())
        .bind(change.invisible)
        .bind(change.last_seen.map(|l| l == LastSeen::Nobody))
        .fetch_one(self.pool())
        .await
        .map_err(DbError::from);
        self.observe(&row);
        let r = row?;
        Ok(settings(r.get(0), r.get(1)))
    }
}
