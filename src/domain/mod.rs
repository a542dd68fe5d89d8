//! The presence domain: what a user, a status, a presence and a visibility rule are.
//!
//! Nothing here knows about sockets, HTTP, Redis or PostgreSQL. The engines store what these
//! types describe and the transports carry it. The rules themselves (when a version grows,
//! when a change is a change, which status may be set, who may see whom) are written here:
//! the memory engine applies these transitions, and the Redis engine's Lua scripts restate
//! them for atomicity inside Redis — held to them by `tests/it/conformance.rs`, which runs
//! random sequences of operations against both engines and a model built on these types.

pub mod devices;
pub mod flap;
pub mod presence;
pub mod privacy;
pub mod stats;
pub mod text;
pub mod time;
pub mod user;
pub mod visibility;
pub mod webhook;

pub use devices::DeviceStatus;
pub use flap::{FlapRule, FlapWindow};
pub use presence::{Details, Presence, PresenceRecord, Status, StatusError};
pub use privacy::{LastSeen, Privacy, PrivacyChange, PrivacySettings};
pub use time::Timestamp;
pub use user::{Gender, UserId, UserIdError};
pub use visibility::{Audience, GenderSet, VisibilityPolicy};
