//! The webhook's cursor over the statistics events (migration 0008): the last seq sent as
//! `stats.event`.

use super::{Database, DbError};

const STATS: &str = "stats";

impl Database {
    /// The cursor; created at the newest event the first time (a new webhook does not replay
    /// the history).
    pub async fn webhook_stats_cursor(&self) -> Result<i64, DbError> {
        let r = sqlx::query_scalar::<_, i64>(
            "WITH made AS (
                INSERT INTO webhook_cursors (name, seq)
                SELECT $1, COALESCE(max(seq), 0) FROM stats_events
                ON CONFLICT (name) DO NOTHING RETURNING seq)
             SELECT seq FROM made UNION ALL SELECT seq FROM webhook_cursors WHERE name = $1
             LIMIT 1",
        )
        .bind(STATS)
        .fetch_one(self.pool())
        .await
        .map_err(DbError::from);
        self.observe(&r);
        r
    }

    /// Move the cursor to `seq` (never back).
    pub async fn advance_webhook_stats_cursor(&self, seq: i64) -> Result<(), DbError> {
        let r = sqlx::query("UPDATE webhook_cursors SET seq = greatest(seq, $2) WHERE name = $1")
            .bind(STATS)
            .bind(seq)
            .execute(self.pool())
            .await
            .map(|_| ())
            .map_err(DbError::from);
        self.observe(&r);
        r
    }
}
