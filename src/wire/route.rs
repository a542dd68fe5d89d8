//! How one `/` socket's presence frames reach its client: written onto its connection
//! ([`super::line`]) while the line can prove that is right, else through the library.
//!
//! The direct way is taken by a socket whose Engine.IO session was created over a WebSocket
//! (its handshake request, which the library keeps, is then the connection's own upgrade
//! request), or that joined after its long-polling session upgraded (the connection that asked
//! to carry the session); a socket that joined while its session was on long-polling is sent
//! to by the library, which alone knows when its frames move. Either way the line writes
//! nothing before it has itself carried the socket's CONNECT. A route that leaves the direct
//! way never comes back
//! to it: the library's queue could then hold frames that ours would overtake. Leaving it is
//! always in order, since whatever we wrote is on the connection before anything the library
//! writes next. Every departure is named ([`Fallback`]) so that it can be counted.

use super::line::{Binding, LineRef, WebSocketLine, Wrote};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a frame may wait for the socket's CONNECT to be written (it takes milliseconds),
/// or for a socket whose client left `/` to be closed, before the library is asked instead.
pub const WAIT_LIMIT: Duration = Duration::from_secs(5);

/// Why a socket's frames go through the library (`presence_direct_fallbacks_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The session is on long-polling, or was when the socket joined (it upgrades later).
    Polling,
    /// The WebSocket was not its connection's first request, or the request carried a body.
    SharedConnection,
    /// The socket's CONNECT was not seen on the connection within [`WAIT_LIMIT`].
    NoConnect,
    /// The client left `/` and the socket was not closed within [`WAIT_LIMIT`].
    Left,
    /// The connection is closing or closed (the library then reports the socket closed).
    Closed,
    /// A later CONNECT of `/` on the session superseded the socket's (it is closed).
    Superseded,
    /// The line met bytes it does not understand: what the library writes has changed.
    Unreadable,
}

impl Fallback {
    pub const ALL: [Fallback; 7] = [
        Fallback::Polling,
        Fallback::SharedConnection,
        Fallback::NoConnect,
        Fallback::Left,
        Fallback::Closed,
        Fallback::Superseded,
        Fallback::Unreadable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Polling => "polling_session",
            Fallback::SharedConnection => "shared_connection",
            Fallback::NoConnect => "no_connect",
            Fallback::Left => "left",
            Fallback::Closed => "closed",
            Fallback::Superseded => "superseded",
            Fallback::Unreadable => "unreadable",
        }
    }
}

/// What became of a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Via {
    /// Written onto the connection.
    Sent,
    /// Not now: no room, or the line waits for the socket's CONNECT; offer it again later.
    Later,
    /// The library must send it; `Some` the first time (the route just left the direct way).
    Library(Option<Fallback>),
}

/// One socket's route. Shared by every handle the socket has (a gender change rebuilds it).
pub struct Route {
    direct: Option<Direct>,
    /// The library sends from now on.
    library: AtomicBool,
    /// Since when frames have been waiting for the line (µs after `born`; 0: not waiting).
    waiting: AtomicU64,
    born: Instant,
}

struct Direct {
    line: LineRef,
    sid: Box<str>,
    /// Which CONNECT of `/` on the connection is the socket's.
    at: Binding,
    /// A write was sent: the line has seen `at`'s CONNECT carry `sid` (it needs no asking again).
    proven: AtomicBool,
}

impl Route {
    /// The route of the `/` socket `sid`, decided in its middleware, before the library
    /// writes its CONNECT: onto the connection its session was created on (`parts`, the
    /// session's handshake request, carries it), or, for a session that began on long-polling
    /// and has upgraded, onto the connection that asked to carry it (`upgraded`). With the
    /// reason the library sends, if it does from the start.
    pub fn for_socket(
        parts: &http::request::Parts,
        sid: &str,
        upgraded: Option<LineRef>,
    ) -> (Route, Option<Fallback>) {
        let route = |direct, fallback: Option<Fallback>| {
            let r = Route {
                direct,
                library: AtomicBool::new(fallback.is_some()),
                waiting: AtomicU64::new(0),
                born: Instant::now(),
            };
            (r, fallback)
        };
        let created = parts.extensions.get::<WebSocketLine>().map(|w| w.0.clone());
        let Some(line) = created.or(upgraded) else {
            let websocket = parts
                .uri
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "transport=websocket"));
            let why = if websocket {
                Fallback::SharedConnection
            } else {
                Fallback::Polling
            };
            return route(None, Some(why));
        };
        let at = line.bind();
        let direct = Direct {
            line,
            sid: sid.into(),
            at,
            proven: AtomicBool::new(false),
        };
        route(Some(direct), None)
    }

    /// Whether frames still go onto the connection.
    pub fn is_direct(&self) -> bool {
        !self.library.load(Ordering::Relaxed)
    }

    /// Send `frame` (built only if it goes direct) the way the route goes now.
    pub fn send(&self, frame: impl FnOnce() -> std::sync::Arc<[u8]>) -> Via {
        let Some(d) = self.direct.as_ref().filter(|_| self.is_direct()) else {
            return Via::Library(None);
        };
        let wait = |why| {
            let now = self.born.elapsed().as_micros().max(1) as u64;
            let since =
                match self
                    .waiting
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => now,
                    Err(since) => since,
                };
            if now - since > WAIT_LIMIT.as_micros() as u64 {
                self.leave(why)
            } else {
                Via::Later
            }
        };
        let proven = d.proven.load(Ordering::Relaxed);
        match d
            .line
            .write_as((!proven).then_some(&*d.sid), d.at, &frame())
        {
            Wrote::Sent => {
                if !proven {
                    d.proven.store(true, Ordering::Relaxed);
                }
                // Read first: a store on every write would bounce the line between cores.
                if self.waiting.load(Ordering::Relaxed) != 0 {
                    self.waiting.store(0, Ordering::Relaxed);
                }
                Via::Sent
            }
            Wrote::Full => Via::Later,
            Wrote::NotYet => wait(Fallback::NoConnect),
            Wrote::Left => wait(Fallback::Left),
            Wrote::Closed => self.leave(Fallback::Closed),
            Wrote::Superseded => self.leave(Fallback::Superseded),
            Wrote::Unreadable => self.leave(Fallback::Unreadable),
        }
    }

    fn leave(&self, why: Fallback) -> Via {
        let first = !self.library.swap(true, Ordering::Relaxed);
        Via::Library(first.then_some(why))
    }
}
