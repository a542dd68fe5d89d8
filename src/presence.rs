//! Presence queries with the visibility rule applied: the one place both transports
//! (Socket.IO events and the HTTP API) read presence through, so the rule holds on every path.

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
    policy: VisibilityPolicy,
    viewer: &Viewer,
    ids: &[UserId],
) -> Result<Vec<Presence>, AppError> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let ids: Vec<UserId> = ids.iter().filter(|u| seen.insert(*u)).cloned().collect();
    let found = engine.get(&ids).await?;
    Ok(ids
        .into_iter()
        .zip(found)
        // A user never seen is offline; their gender is unknown here, so `other`.
        .map(|(id, p)| p.unwrap_or_else(|| Presence::unseen(id, Gender::Other)))
        .filter(|p| {
            policy.can_see(
                (viewer.user.as_str(), viewer.gender),
                (p.user_id.as_str(), p.gender),
            )
        })
        .collect())
}

/// One page of the online users `viewer` may see.
pub async fn list_online(
    engine: &dyn PresenceEngine,
    policy: VisibilityPolicy,
    viewer: &Viewer,
    cursor: Option<&str>,
    limit: usize,
) -> Result<OnlinePage, AppError> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(AppError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    if cursor.is_some_and(|c| c.len() > 1024) {
        return Err(AppError::bad_request("malformed cursor"));
    }
    let filter = ListFilter {
        genders: policy.visible_genders(viewer.gender),
        include: Some(viewer.user.clone()),
    };
    Ok(engine.list_online(&filter, cursor, limit).await?)
}
