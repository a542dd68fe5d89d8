//! Room names: how visibility audiences and users map onto Socket.IO rooms.

use crate::domain::{Audience, Gender, UserId, VisibilityPolicy};

pub fn audience(a: Audience) -> String {
    format!("aud:{}", a.as_str())
}

pub fn user(u: &UserId) -> String {
    format!("user:{u}")
}

/// The rooms a viewer's socket joins.
pub fn for_viewer(policy: VisibilityPolicy, user_id: &UserId, gender: Gender) -> Vec<String> {
    let mut rooms = vec![audience(policy.audience_of(gender))];
    if policy.self_delivery_needed(gender) {
        rooms.push(user(user_id));
    }
    rooms
}

/// The rooms a change of this user is sent to: each allowed viewer is in exactly one.
pub fn for_change(policy: VisibilityPolicy, user_id: &UserId, gender: Gender) -> Vec<String> {
    let mut rooms: Vec<String> = policy
        .audiences_for(gender)
        .iter()
        .map(|a| audience(*a))
        .collect();
    if policy.self_delivery_needed(gender) {
        rooms.push(user(user_id));
    }
    rooms
}
