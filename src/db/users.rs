//! Reads: a user's gender (cached), offline users' last presence, search, and the users the
//! database believes online. (Over 400 lines with the search's two SQL forms, written out
//! so they can be read as SQL.)

use super::{Database, DbError};
use crate::domain::{Gender, GenderSet, Presence, Status, Timestamp, UserId};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How long a looked-up gender is trusted. A user's gender rarely changes, and a token that
/// carries one refreshes the cache at once.
const GENDER_TTL: Duration = Duration::from_secs(300);
/// Entries kept before the cache sheds expired ones (then, if still full, everything).
const GENDER_CAP: usize = 200_000;

type Slot = Arc<OnceCell<Option<Gender>>>;

/// Genders looked up for tokens without one. A reconnect storm of N such users costs at
/// most N queries, and concurrent handshakes of one user share a single query.
#[derive(Default)]
pub struct Users {
    genders: Mutex<HashMap<UserId, (Slot, Instant)>>,
    /// How common each one- and two-character substring of names is (see [`Database::search`]),
    /// and when that was read.
    grams: Mutex<Option<(Instant, GramShares)>>,
}

/// Share of names containing each listed substring.
type GramShares = Arc<HashMap<String, f32>>;

/// How long the substring frequencies are trusted before they are read again.
const GRAM_STATS_TTL: Duration = Duration::from_secs(600);
/// A substring in at least this share of names is looked for by reading names in order (the
/// page fills within a few thousand rows); a rarer one through the substring index.
const DENSE_GRAM: f32 = 0.02;

impl Users {
    fn slot(&self, user: &UserId) -> Slot {
        let mut map = self.genders.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((slot, at)) = map.get(user)
            && now.duration_since(*at) < GENDER_TTL
        {
            return slot.clone();
        }
        if map.len() >= GENDER_CAP {
            map.retain(|_, (_, at)| now.duration_since(*at) < GENDER_TTL);
            if map.len() >= GENDER_CAP {
                map.clear();
            }
        }
        let slot = Slot::default();
        map.insert(user.clone(), (slot.clone(), now));
        slot
    }

    /// The database says the gender changed: the next lookup asks it again.
    pub fn forget_gender(&self, user: &UserId) {
        self.genders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user);
    }

    /// A token said so: later handshakes without a gender claim use it without a query.
    pub fn remember_gender(&self, user: &UserId, gender: Gender) {
        let mut map = self.genders.lock().unwrap_or_else(|e| e.into_inner());
        // A reconnect with the same claim (the common case) changes nothing and allocates
        // nothing.
        if let Some((slot, at)) = map.get(user)
            && slot.get() == Some(&Some(gender))
            && at.elapsed() < GENDER_TTL
        {
            return;
        }
        let slot = Slot::new(OnceCell::new_with(Some(Some(gender))));
        map.insert(user.clone(), (slot, Instant::now()));
    }
}

/// The channel `migrations/0005_user_gender_notify.sql` notifies, with the user's id.
pub const GENDER_CHANNEL: &str = "pgw_user_gender";

impl Database {
    /// Users whose gender changed in the database, as they change (their cached gender is
    /// dropped first). Reconnects after a lost connection; what changed meanwhile is covered
    /// by the cache's lifetime.
    pub async fn gender_changes(
        &self,
        mut each: impl FnMut(UserId),
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut listener = loop {
            match sqlx::postgres::PgListener::connect_with(self.pool()).await {
                Ok(mut l) => match l.listen(GENDER_CHANNEL).await {
                    Ok(()) => break l,
                    Err(e) => tracing::debug!(error = %e, "gender changes: listen failed"),
                },
                Err(e) => tracing::debug!(error = %e, "gender changes: no connection"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        };
        loop {
            let n = tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.recv() => n,
            };
            match n {
                Ok(n) => {
                    if let Ok(user) = UserId::parse(n.payload()) {
                        self.users.forget_gender(&user);
                        each(user);
                    }
                }
                // recv reconnects by itself on the next call.
                Err(e) => {
                    tracing::debug!(error = %e, "gender changes: connection lost");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// The stored gender of `user`, `None` if unknown. Fails only when the database does.
    pub async fn gender_of(&self, user: &UserId) -> Result<Option<Gender>, DbError> {
        let slot = self.users.slot(user);
        let r = slot
            .get_or_try_init(|| async {
                let row = sqlx::query("SELECT gender FROM users WHERE id = $1")
                    .bind(user.as_str())
                    .fetch_optional(self.pool())
                    .await
                    .map_err(DbError::from);
                self.observe(&row);
                Ok::<_, DbError>(
                    row?.and_then(|r| r.get::<Option<String>, _>(0))
                        .and_then(|g| g.parse().ok()),
                )
            })
            .await;
        r.copied()
    }

    /// What the database remembers of users the engine does not know (their keys expired
    /// long ago, or Redis lost them): offline, with their last `lastSeen`, version and gender,
    /// under their own settings (section 11). Users the database does not know either are
    /// absent from the map.
    pub async fn last_known(&self, users: &[UserId]) -> Result<HashMap<UserId, Presence>, DbError> {
        let users = self.unknown.worth_asking(users);
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        metrics::counter!("gateway_database_queries_total", "query" => "last_known").increment(1);
        let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
        const SQL: &str = "SELECT q.id, u.gender, p.online,
                (extract(epoch FROM p.last_seen) * 1000000)::int8, p.version,
                (extract(epoch FROM p.updated_at) * 1000000)::int8,
                coalesce(s.invisible, false), coalesce(s.last_seen_nobody, false)
             FROM UNNEST($1::text[]) AS q(id)
             LEFT JOIN users u ON u.id = q.id
             LEFT JOIN user_presence p ON p.user_id = q.id
             LEFT JOIN user_privacy s ON s.user_id = q.id
             WHERE u.id IS NOT NULL OR p.user_id IS NOT NULL";
        let r = sqlx::query(SQL)
            .bind(ids)
            .fetch_all(self.pool())
            .await
            .map_err(DbError::from);
        self.observe(&r);
        let mut out = HashMap::with_capacity(users.len());
        for row in r? {
            let p = with_settings(offline_presence(&row)?, &row)?;
            out.insert(p.user_id.clone(), p);
        }
        self.unknown
            .remember(users.into_iter().filter(|u| !out.contains_key(u)));
        Ok(out)
    }

    /// Users whose name contains `q` (case-insensitive, every character literal) that a
    /// viewer of `genders` (plus `viewer` themselves) may see: names starting with `q` first,
    /// by name, then the others.
    pub async fn search(
        &self,
        q: &str,
        genders: GenderSet,
        viewer: &UserId,
        limit: usize,
    ) -> Result<Vec<SearchHit>, DbError> {
        let pattern = escape_like(q);
        let genders: Vec<&str> = genders.iter().map(Gender::as_str).collect();
        // Names that start with `q` first, in name order (a range scan of the "C"-collated
        // btree that stops at `limit`), then other names containing it (the trigram index,
        // or for one or two characters the substring index of migration 0006), unordered
        // among themselves. The outer LIMIT stops the second branch from running at all when
        // the first filled the page: a common query costs a few index entries, not every
        // match.
        // For one or two characters the planner cannot tell a common substring from a rare
        // one (its estimate of "contains" is ten times off), and each mistake costs: a
        // 100,000-entry bitmap for a common one, or the substring function evaluated on every
        // name read for a rare one. The substring index's own statistics tell, so the query
        // says which way.
        let short = q.chars().count() < MIN_TRIGRAM_CHARS;
        // `$5`: the one- or two-character substring the short form looks up.
        let (sql, gram) = if short && self.gram_share(&q.to_lowercase()).await < DENSE_GRAM {
            (SEARCH_SHORT_SQL, q.to_string())
        } else if !short && !trigram_servable(q) {
            // Punctuation alone: the trigram index has nothing to look up, the substring index
            // has its first two characters; names holding them are the candidates.
            (SEARCH_SHORT_SQL, q.chars().take(2).collect())
        } else {
            (SEARCH_SQL, q.to_string())
        };
        metrics::counter!("gateway_database_queries_total", "query" => "search").increment(1);
        // Unnamed statement: planned with the actual pattern, so the planner can choose
        // between the trigram index (rare patterns) and walking names in order (common ones).
        let r = sqlx::query(sql)
            .persistent(false)
            .bind(pattern)
            .bind(genders)
            .bind(viewer.as_str())
            .bind(limit as i64)
            .bind(gram)
            .fetch_all(self.pool())
            .await
            .map_err(DbError::from);
        self.observe(&r);
        r?.iter()
            .map(|row| {
                Ok(SearchHit {
                    presence: offline_presence(row)?,
                    name: row.try_get::<Option<String>, _>(6).map_err(DbError::from)?,
                })
            })
            .collect()
    }

    /// The share of names containing `gram` (one or two characters), from the statistics of
    /// the substring index (0 for one too rare to be listed there, or when they cannot be read).
    async fn gram_share(&self, gram: &str) -> f32 {
        let cached = self
            .users
            .grams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let map = match cached {
            Some((at, map)) if at.elapsed() < GRAM_STATS_TTL => map,
            _ => {
                let rows: Vec<(String, f32)> = sqlx::query_as(
                    "SELECT e, f FROM pg_stats s,
                        unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS t(e, f)
                     WHERE s.tablename = 'users_name_grams' AND e IS NOT NULL AND f IS NOT NULL",
                )
                .fetch_all(self.pool())
                .await
                .unwrap_or_default();
                let map = Arc::new(rows.into_iter().collect::<HashMap<_, _>>());
                *self.users.grams.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), map.clone()));
                map
            }
        };
        map.get(gram).copied().unwrap_or(0.0)
    }

    /// Users the database believes online, with their stored status and version.
    pub async fn believed_online(
        &self,
        limit: usize,
    ) -> Result<Vec<(UserId, Status, i64)>, DbError> {
        let r = sqlx::query(
            "SELECT user_id, status, version FROM user_presence WHERE online ORDER BY user_id LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(self.pool())
        .await
        .map_err(DbError::from);
        self.observe(&r);
        Ok(r?.iter().filter_map(status_row).collect())
    }

    /// The stored status and version of these users (for the comparison with live presence).
    pub async fn stored_status(
        &self,
        users: &[UserId],
    ) -> Result<HashMap<UserId, (Status, i64)>, DbError> {
        let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let r = sqlx::query(
            "SELECT user_id, status, version FROM user_presence WHERE user_id = ANY($1::text[])",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await
        .map_err(DbError::from);
        self.observe(&r);
        Ok(r?
            .iter()
            .filter_map(status_row)
            .map(|(id, status, version)| (id, (status, version)))
            .collect())
    }
}

/// `user_id, status, version`; a row with an id or status this build does not accept is
/// skipped (the schema's checks make that a corrupted row, not a user).
fn status_row(row: &sqlx::postgres::PgRow) -> Option<(UserId, Status, i64)> {
    let id: String = row.try_get(0).ok()?;
    let status: String = row.try_get(1).ok()?;
    Some((
        UserId::parse(&id).ok()?,
        status.parse().ok()?,
        row.try_get(2).ok()?,
    ))
}

impl Database {
    /// Mark offline every user the database believes online (a single replica starting
    /// empty). Returns how many.
    pub async fn settle_all_offline(&self, now: Timestamp, seen_now: bool) -> Result<u64, DbError> {
        // `seen_now`: they were online until now (a clean shutdown); otherwise the last
        // change is the last time known to have seen them.
        const SQL: &str = "UPDATE user_presence
             SET status = 'offline', online = false, details = NULL,
                 last_seen = CASE WHEN $2 THEN 'epoch'::timestamptz + ($1::int8 * interval '1 microsecond')
                                  ELSE COALESCE(updated_at, 'epoch'::timestamptz + ($1::int8 * interval '1 microsecond')) END,
                 updated_at = 'epoch'::timestamptz + ($1::int8 * interval '1 microsecond'),
                 version = GREATEST(version + 1, $1::int8)
             WHERE online";
        let r = sqlx::query(SQL)
            .bind(now.as_micros())
            .bind(seen_now)
            .execute(self.pool())
            .await
            .map_err(DbError::from);
        self.observe(&r);
        Ok(r?.rows_affected())
    }
}

/// Shortest query the trigram index finds inside names; shorter ones use the substring index.
const MIN_TRIGRAM_CHARS: usize = 3;

/// Whether the trigram index can find names containing `q`: pg_trgm takes its trigrams from
/// the letters and digits, so a query of punctuation alone (`---`) gives it none to look up,
/// and "contains" would read every name: the substring index serves those instead.
fn trigram_servable(q: &str) -> bool {
    q.chars().any(char::is_alphanumeric)
}

/// The search: `$1` the LIKE-escaped query, `$2` visible genders, `$3` the viewer, `$4` the
/// limit, `$5` the query as typed. The two forms differ only in how the second branch finds
/// names containing the query.
macro_rules! search_sql {
    ($infix:literal) => {
        concat!(
            r#"
SELECT m.id, m.gender, p.online,
       (extract(epoch FROM p.last_seen) * 1000000)::int8, p.version,
       (extract(epoch FROM p.updated_at) * 1000000)::int8, m.name
FROM (
    SELECT * FROM (
        (SELECT u.id, u.gender, u.name, 0 AS rank FROM users u
         WHERE lower(u.name) COLLATE "C" LIKE lower($1) || '%' ESCAPE '\'
           AND (COALESCE(u.gender, 'other') = ANY($2) OR u.id = $3)
         ORDER BY lower(u.name) COLLATE "C", u.id
         LIMIT $4)
        UNION ALL
        (SELECT u.id, u.gender, u.name, 1 FROM users u
         WHERE "#,
            $infix,
            r#"
           AND lower(u.name) LIKE '%' || lower($1) || '%' ESCAPE '\'
           AND NOT (lower(u.name) COLLATE "C" LIKE lower($1) || '%' ESCAPE '\')
           AND (COALESCE(u.gender, 'other') = ANY($2) OR u.id = $3)
         LIMIT $4)
    ) matches
    LIMIT $4
) m
LEFT JOIN user_presence p ON p.user_id = m.id
ORDER BY m.rank, lower(m.name) COLLATE "C", m.id"#
        )
    };
}

/// Three characters or more (the trigram index serves the LIKE), or a common substring of
/// one or two (names read in order until the page is full); `$5` unused.
const SEARCH_SQL: &str = search_sql!("($5::text IS NOT NULL)");
/// One or two characters, or punctuation alone ([`trigram_servable`]): the substring index
/// finds the candidates (`$5`, one or two characters of the query).
const SEARCH_SHORT_SQL: &str = search_sql!("user_name_grams(lower(u.name)) @> ARRAY[lower($5)]");

pub struct SearchHit {
    /// As the database has it, offline; the caller overlays live presence.
    pub presence: Presence,
    pub name: Option<String>,
}

/// Columns: id, gender, online, last_seen µs, version, updated_at µs. The
/// presence is always offline: whoever asks has found no live record, so whatever the
/// database believed, the user is not online now. A row it believed online (its offline
/// write never landed) gives its last update as the last-seen time.
fn offline_presence(row: &sqlx::postgres::PgRow) -> Result<Presence, DbError> {
    let id: String = row.try_get(0)?;
    let user_id = UserId::parse(&id).map_err(|e| DbError::Sql(sqlx::Error::Decode(e.into())))?;
    let gender = row
        .try_get::<Option<String>, _>(1)?
        .and_then(|g| g.parse().ok())
        .unwrap_or(Gender::Other);
    let online: Option<bool> = row.try_get(2)?;
    let last_seen: Option<i64> = row.try_get(3)?;
    let version: Option<i64> = row.try_get(4)?;
    let updated: Option<i64> = row.try_get(5)?;
    let mut p = Presence::unseen(user_id, gender);
    p.version = version.unwrap_or(0);
    p.updated_at = updated.map(Timestamp);
    p.last_seen = last_seen
        .or(if online == Some(true) { updated } else { None })
        .map(Timestamp);
    Ok(p)
}

/// `p` under the user's settings as `last_known` reads them (columns 6 and 7).
fn with_settings(mut p: Presence, row: &sqlx::postgres::PgRow) -> Result<Presence, DbError> {
    if row.try_get::<bool, _>(7)? {
        p.privacy.last_seen = crate::domain::LastSeen::Nobody;
    }
    if row.try_get::<bool, _>(6)? {
        // The moment they turned invisible is the engine's to keep, and it lost it: others
        // get no lastSeen rather than the one the user hid (their true last connection).
        p.privacy.invisible = true;
        p.privacy.hidden = Some(crate::domain::privacy::Hidden {
            version: p.version,
            last_seen: None,
            updated_at: p.updated_at,
        });
    }
    Ok(p)
}

/// Make every character of `q` literal in a `LIKE ... ESCAPE '\'` pattern.
pub fn escape_like(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 8);
    for c in q.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_like;

    #[test]
    fn like_metacharacters_are_literal() {
        assert_eq!(escape_like(r"50%_a\b"), r"50\%\_a\\b");
        assert_eq!(escape_like(".*(["), ".*([");
    }
}
