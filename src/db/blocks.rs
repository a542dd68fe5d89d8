//! Blocks kept in `user_blocks` (migration 0010) when a database is configured (section 11).

use super::{Database, DbError};
use crate::domain::UserId;
use crate::engine::{BlockStore, Blocked, EngineError};
use async_trait::async_trait;
use sqlx::Row;

fn engine_error(e: DbError) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

impl Database {
    async fn checked<T>(&self, r: Result<T, sqlx::Error>) -> Result<T, EngineError> {
        let r = r.map_err(DbError::from);
        self.observe(&r);
        r.map_err(engine_error)
    }
}

fn ids(rows: Vec<sqlx::postgres::PgRow>) -> Vec<UserId> {
    rows.iter()
        .filter_map(|r| UserId::parse(r.get::<&str, _>(0)).ok())
        .collect()
}

#[async_trait]
impl BlockStore for Database {
    async fn block(
        &self,
        user: &UserId,
        other: &UserId,
        max: usize,
    ) -> Result<Blocked, EngineError> {
        // One statement: added only while the user holds fewer than `max` (two racing blocks
        // of one user may pass the count together; the limit bounds work, not a quota).
        let r = sqlx::query(
            "WITH held AS (SELECT count(*) AS n FROM user_blocks WHERE user_id = $1), \
                  there AS (SELECT 1 FROM user_blocks WHERE user_id = $1 AND blocked_id = $2) \
             INSERT INTO user_blocks (user_id, blocked_id) \
             SELECT $1, $2 WHERE (SELECT n FROM held) < $3 AND NOT EXISTS (SELECT 1 FROM there) \
             ON CONFLICT DO NOTHING \
             RETURNING 1",
        )
        .bind(user.as_str())
        .bind(other.as_str())
        .bind(max as i64)
        .fetch_optional(self.pool())
        .await;
        if self.checked(r).await?.is_some() {
            return Ok(Blocked::Added);
        }
        let there = sqlx::query("SELECT 1 FROM user_blocks WHERE user_id = $1 AND blocked_id = $2")
            .bind(user.as_str())
            .bind(other.as_str())
            .fetch_optional(self.pool())
            .await;
        Ok(if self.checked(there).await?.is_some() {
            Blocked::Already
        } else {
            Blocked::TooMany
        })
    }

    async fn unblock(&self, user: &UserId, other: &UserId) -> Result<bool, EngineError> {
        let r = sqlx::query("DELETE FROM user_blocks WHERE user_id = $1 AND blocked_id = $2")
            .bind(user.as_str())
            .bind(other.as_str())
            .execute(self.pool())
            .await;
        Ok(self.checked(r).await?.rows_affected() > 0)
    }

    async fn blocks(&self, user: &UserId, other: &UserId) -> Result<bool, EngineError> {
        let r = sqlx::query("SELECT 1 FROM user_blocks WHERE user_id = $1 AND blocked_id = $2")
            .bind(user.as_str())
            .bind(other.as_str())
            .fetch_optional(self.pool())
            .await;
        Ok(self.checked(r).await?.is_some())
    }

    async fn blocks_of(&self, user: &UserId) -> Result<(Vec<UserId>, Vec<UserId>), EngineError> {
        let mine = sqlx::query(
            "SELECT blocked_id FROM user_blocks WHERE user_id = $1 ORDER BY blocked_id",
        )
        .bind(user.as_str())
        .fetch_all(self.pool())
        .await;
        let mine = ids(self.checked(mine).await?);
        let theirs =
            sqlx::query("SELECT user_id FROM user_blocks WHERE blocked_id = $1 ORDER BY user_id")
                .bind(user.as_str())
                .fetch_all(self.pool())
                .await;
        Ok((mine, ids(self.checked(theirs).await?)))
    }
}
