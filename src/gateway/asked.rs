//! The questions the admin API puts to every replica (`super::cluster`), their answers, and
//! the questions this replica asked that wait for answers.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use tokio::sync::mpsc;

/// What the admin API asks every replica about its own sockets.
#[derive(Serialize, Deserialize, Clone)]
#[serde(tag = "q", rename_all = "camelCase")]
pub enum Question {
    /// The user's `/` connections here.
    Connections { user: String },
    /// Close the user's `/` connections here with a namespace disconnect; `by` is the caller,
    /// for the audit log.
    Disconnect { user: String, by: String },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "a", rename_all = "camelCase")]
pub enum Answer {
    Connections { connections: Vec<Value> },
    Disconnected { connections: u64 },
}

/// Questions this replica asked that wait for answers, by question id.
#[derive(Default)]
pub struct Asked {
    waiting: Mutex<HashMap<String, mpsc::UnboundedSender<(String, Answer)>>>,
    pub next: AtomicU64,
}

impl Asked {
    pub fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<(String, Answer)>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}
