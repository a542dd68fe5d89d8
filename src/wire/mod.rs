//! The direct path: presence frames written straight onto a WebSocket client's connection.
//!
//! Why: socketioxide sends every event through a per-socket channel to a per-socket writer
//! task, which frames it and makes one `write`. Reaching 10,000 sockets with one change then
//! costs 10,000 encodes, channel sends and task wake-ups before the first byte of most of them
//! leaves. A frame written here is encoded once for every socket and costs each socket one
//! non-blocking `write`, made by the fan-out itself, as Node's `socket.write` does.
//!
//! The library does not know we write: what makes it safe is read from the bytes themselves,
//! at frame boundaries, on both directions of the connection ([`frames`]). The connection
//! ([`line`]) owns the writes and decides whether a frame may go; a socket's [`Route`] decides
//! whether the direct way is still the socket's, and hands its frames back to the library
//! (named, to be counted) whenever it cannot prove it is. The crates whose bytes this reads
//! are pinned exactly in `Cargo.toml`, and the end-to-end delivery matrix runs every client
//! shape against them.
//!
//! The accept loop ([`crate::http::serve`]) wraps every connection in a [`LineIo`] and tells
//! it of each request ([`LineRef::request`]); the fan-out asks a socket's route to send and
//! knows nothing of sids or frames.

pub mod frames;
pub mod line;
pub mod route;

pub use line::{LineIo, LineRef, Upgrades, WebSocketLine, event_frame};
pub use route::{Fallback, Route, Via};
