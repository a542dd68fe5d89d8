//! Presence queries with the visibility rule applied: the one place both transports
//! (Socket.IO events and the HTTP API) read presence through, so the rule holds on every path.

use crate::auth::Identity;
use crate::db::Database;
use crate::domain::{Gender, Presence, UserId, VisibilityPolicy};
use crate::engine::{ListFilter, OnlinePage, PresenceEngine};
use crate::error::AppError;

/// At most this many ids per `presence:get` or `GET /api/presence?ids=`.
pub const MAX_IDS: usize = 200;
/// At most this many users per `presence:list-online` page.
pub const MAX_PAGE: usize = 500;
pub const DEFAULT_PAGE: usize = 100;

/// Who is looking.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user: UserId,
    pub gender: Gender,
    /// Whether the viewer gets no one's `lastSeen` (their own setting, with
    /// `LAST_SEEN_RECIPROCAL`; section 11).
    pub hides_last_seen: bool,
    /// An operator sees the truth: no user's settings apply (section 11).
    pub operator: bool,
    /// Whom the viewer is hidden from by blocks, both ways (section 11).
    pub blocked: Option<crate::gateway::blocks::Hidden>,
}

impl Viewer {
    /// What this viewer gets of `p` (section 11: settings; the visibility rule is apart).
    pub fn sees(&self, p: Presence) -> Presence {
        if self.operator {
            return p;
        }
        crate::domain::privacy::seen_by(&p, &self.user, self.hides_last_seen)
    }

    /// Whether a block hides `user` from this viewer (as the visibility rule would).
    pub fn blocks(&self, user: &UserId) -> bool {
        !self.operator && self.blocked.as_ref().is_some_and(|b| b.contains(user))
    }

    /// Whether this viewer sees `p` online (an invisible user is not, to others).
    pub fn sees_online(&self, p: &Presence) -> bool {
        self.operator || p.user_id == self.user || crate::domain::privacy::online_to_others(p)
    }
}

/// The gender that decides whom this user sees and who sees them: the token's, else the
/// database's (cached), else `other` (no database configured, or a user it does not know).
///
/// A configured database that cannot answer is `unavailable`, never a guess: `other` sees
/// everyone, so guessing would show a man whom he may not see — and anyone able to slow the
/// database down (exhausting its pool with cheap requests) could force the guess.
pub async fn gender_of(db: Option<&Database>, identity: &Identity) -> Result<Gender, AppError> {
    let Some(db) = db else {
        return Ok(identity.gender.unwrap_or_default());
    };
    if let Some(g) = identity.gender {
        db.users.remember_gender(&identity.user_id, g);
        return Ok(g);
    }
    let unavailable =
        || AppError::Unavailable("the user directory is unreachable; retry shortly".into());
    if !db.is_up() {
        return Err(unavailable());
    }
    match db.gender_of(&identity.user_id).await {
        Ok(g) => Ok(g.unwrap_or_default()),
        Err(e) => {
            tracing::warn!(error = %e, "gender lookup failed; refusing rather than guessing");
            Err(unavailable())
        }
    }
}

/// Who is looking, with their gender resolved as for a connection, and their own last-seen
/// setting read (when `reciprocal`: it decides whose `lastSeen` they get).
pub async fn viewer_of(
    engine: &dyn PresenceEngine,
    db: Option<&Database>,
    reciprocal: bool,
    who: &Identity,
) -> Result<Viewer, AppError> {
    let hides_last_seen = reciprocal
        && engine
            .get(std::slice::from_ref(&who.user_id))
            .await?
            .pop()
            .flatten()
            .is_some_and(|p| p.privacy.hides_others_last_seen(true));
    let blocked = crate::blocks::store::hidden(engine, db, &who.user_id).await?;
    Ok(Viewer {
        user: who.user_id.clone(),
        gender: gender_of(db, who).await?,
        hides_last_seen,
        operator: false,
        blocked: Some(std::sync::Arc::new(blocked.into())),
    })
}

/// Parse and bound a list of requested ids.
pub fn parse_ids<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> Result<Vec<UserId>, AppError> {
    if ids.len() > MAX_IDS {
        return Err(AppError::bad_request(format!(
            "at most {MAX_IDS} user ids per request"
        )));
    }
    ids.map(|s| UserId::parse(s).map_err(|e| AppError::bad_request(format!("userIds: {e}"))))
        .collect()
}

/// The presences of `ids` that `viewer` may see, in the order asked, each once.
pub async fn get_visible(
    engine: &dyn PresenceEngine,
    db: Option<&Database>,
    policy: VisibilityPolicy,
    viewer: &Viewer,
    ids: &[UserId],
) -> Result<Vec<Presence>, AppError> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let ids: Vec<UserId> = ids.iter().filter(|u| seen.insert(*u)).cloned().collect();
    let found = engine.get(&ids).await?;
    // Users the engine has forgotten (or never had): the database may remember their gender
    // and when they were last seen. If it cannot answer, they are shown as never seen
    // rather than failing the whole request.
    let missing: Vec<UserId> = ids
        .iter()
        .zip(&found)
        .filter(|(_, p)| p.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    let mut remembered = match db {
        Some(db) if !missing.is_empty() && db.is_up() => {
            db.last_known(&missing).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "last presence not read from the database");
                Default::default()
            })
        }
        _ => Default::default(),
    };
    Ok(ids
        .into_iter()
        .zip(found)
        // A user never seen is offline; with no record of their gender, `other`.
        .map(|(id, p)| {
            p.or_else(|| remembered.remove(&id))
                .unwrap_or_else(|| Presence::unseen(id, Gender::Other))
        })
        .filter(|p| {
            policy.can_see(
                (viewer.user.as_str(), viewer.gender),
                (p.user_id.as_str(), p.gender),
            ) && !viewer.blocks(&p.user_id)
        })
        .map(|p| viewer.sees(p))
        .collect())
}

/// A page request's own checks (before it is charged or served).
pub fn check_page(cursor: Option<&str>, limit: usize) -> Result<(), AppError> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(AppError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    if cursor.is_some_and(|c| c.len() > 1024) {
        return Err(AppError::bad_request("malformed cursor"));
    }
    Ok(())
}

/// One page of the online users `viewer` may see.
pub async fn list_online(
    engine: &dyn PresenceEngine,
    policy: VisibilityPolicy,
    viewer: &Viewer,
    cursor: Option<&str>,
    limit: usize,
) -> Result<OnlinePage, AppError> {
    check_page(cursor, limit)?;
    let filter = ListFilter {
        genders: policy.visible_genders(viewer.gender),
        include: Some(viewer.user.clone()),
    };
    let mut page = engine.list_online(&filter, cursor, limit).await?;
    // The index is read by gender, the presences a moment later: a user whose gender changed
    // in between would come back with a gender this viewer may not see. Checked again on what
    // is returned, as every other path does.
    // An invisible user is offline to others: left out (a page may come back shorter than
    // `limit`; its cursor goes on from where the index was read).
    page.users.retain(|p| {
        policy.can_see(
            (viewer.user.as_str(), viewer.gender),
            (p.user_id.as_str(), p.gender),
        ) && viewer.sees_online(p)
            && !viewer.blocks(&p.user_id)
    });
    page.users = std::mem::take(&mut page.users)
        .into_iter()
        .map(|p| viewer.sees(p))
        .collect();
    Ok(page)
}
