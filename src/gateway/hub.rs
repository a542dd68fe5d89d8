//! What the Socket.IO side shares, one value in the application state ([`Hub`]), and the small
//! queues it holds. Nothing here reads the application state: the loops that work on these
//! (`fanout`, `heartbeats`, `expiry`, `cluster`) do.

use super::connection::{ConnHandle, SocketRegistry};
use socketioxide::SocketIo;
use socketioxide::socket::Sid;
use std::sync::{Arc, Mutex};

/// The Socket.IO side's shared pieces, one value in the application state.
#[derive(Default)]
pub struct Hub {
    /// Set once the Socket.IO layer is built.
    pub io: std::sync::OnceLock<SocketIo>,
    /// This replica's `/` sockets.
    pub sockets: SocketRegistry,
    /// Connections heard from since the last flush to the engine.
    pub heartbeats: HeartbeatBatch,
    /// Where the fan-out sends each change on this replica.
    pub viewers: super::viewers::Viewers,
    /// Sockets (`/` and `/dashboard`) whose outbox waits for room in their queues.
    pub backlogged: super::outbox::Waiting,
    /// Batching sockets gathering a batch, by when it is due.
    pub batches: Batches,
    /// Admin questions this replica put to the cluster, waiting for answers.
    pub asked: super::asked::Asked,
    /// Sockets to close when their tokens expire.
    pub expiries: super::expiries::Expiries,
    /// Blocks of the users connected here (section 11).
    pub blocks: super::blocks::BlockIndex,
}

/// Batching sockets whose batch is being gathered, by when it is due. Every batch is due the
/// same time after its first change, so arrival order is due order: a tick pops what is due
/// and looks at nothing else (polling every batching socket on every tick cost a replica more
/// than the frames it saved).
#[derive(Default)]
pub struct Batches(Mutex<std::collections::VecDeque<(std::time::Instant, Sid)>>);

impl Batches {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(std::time::Instant, Sid)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, due: std::time::Instant, sid: Sid) {
        self.lock().push_back((due, sid));
    }

    /// The sockets whose batch is due by `by`, in due order.
    pub fn take_due(&self, by: std::time::Instant) -> Vec<Sid> {
        let mut q = self.lock();
        let n = q.partition_point(|(due, _)| *due <= by);
        q.drain(..n).map(|(_, sid)| sid).collect()
    }
}

/// Connections heard from since the last flush (`super::heartbeats`).
#[derive(Default)]
pub struct HeartbeatBatch {
    queue: Mutex<Vec<Arc<ConnHandle>>>,
}

impl HeartbeatBatch {
    pub fn push(&self, h: Arc<ConnHandle>) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push(h);
    }

    pub fn take(&self) -> Vec<Arc<ConnHandle>> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
