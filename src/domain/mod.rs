//! The presence domain: what a user, a status, a presence and a visibility rule are.
//!
//! Nothing here knows about sockets, HTTP, Redis or PostgreSQL. The engines store what these
//! types describe and the transports carry it; the rules themselves (when a version grows,
//! when a change is a change, who may see whom) live only here, so the memory engine, the
//! Redis engine's scripts and every transport path agree by construction.

pub mod presence;
pub mod stats;
pub mod text;
pub mod time;
pub mod user;
pub mod visibility;

pub use presence::{Details, Presence, PresenceRecord, Status, StatusError};
pub use time::Timestamp;
pub use user::{Gender, UserId, UserIdError};
pub use visibility::{Audience, GenderSet, VisibilityPolicy};
