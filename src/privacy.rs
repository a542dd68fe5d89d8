//! Setting a user's privacy (section 11), for both transports: `presence:set-privacy` and
//! `PUT /api/users/{userId}/privacy`. The engine stores the settings with the presence and
//! announces the change; what each viewer gets of it is `domain::privacy`'s rule.

use crate::domain::{PrivacyChange, PrivacySettings, Timestamp, UserId};
use crate::engine::PresenceEngine;
use crate::error::AppError;

/// Apply `change` to `user`'s settings; returns them as they are after it.
pub async fn set(
    engine: &dyn PresenceEngine,
    user: &UserId,
    change: PrivacyChange,
) -> Result<PrivacySettings, AppError> {
    let p = engine.set_privacy(user, change, Timestamp::now()).await?;
    Ok(p.privacy.settings())
}

/// `user`'s settings (the defaults for a user the engine does not know).
pub async fn get(engine: &dyn PresenceEngine, user: &UserId) -> Result<PrivacySettings, AppError> {
    let p = engine
        .get(std::slice::from_ref(user))
        .await?
        .pop()
        .flatten();
    Ok(p.map(|p| p.privacy.settings())
        .unwrap_or_else(|| crate::domain::Privacy::default().settings()))
}
