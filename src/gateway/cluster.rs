//! The cluster as the admin API and the console see it: every replica's report, and
//! questions put to every replica at once.
//!
//! - Each replica writes a small report (its sockets per namespace, its fan-out's totals and
//!   recent latency) to the engine every [`REPORT_EVERY`], and withdraws it when it stops; a
//!   report older than `figures::REPORT_MAX_AGE` is a replica that is gone.
//! - Questions ("which connections does this user have?", "disconnect this user") travel on
//!   the engine's admin topic; every replica answers about its own sockets, and the asker
//!   waits for an answer from each replica that reports, or the deadline, whichever is first.
//!   A replica that does not answer in time is left out of the answer rather than holding up
//!   the caller: the admin API is for people, who can ask again.

pub use super::asked::{Answer, Question};
use crate::domain::{Timestamp, UserId};
use crate::engine::{EngineError, Topic};
use crate::state::AppState;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a replica writes its report.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How long a question waits for the replicas' answers.
const ASK_DEADLINE: Duration = Duration::from_millis(1500);

/// One message on the admin topic.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum Message {
    Ask {
        id: String,
        from: String,
        question: Question,
    },
    Answer {
        id: String,
        to: String,
        node: String,
        answer: Answer,
    },
}

/// Put `q` to every replica (this one included); their answers, by node. Fails only when the
/// question cannot be sent.
pub async fn ask(state: &AppState, q: Question) -> Result<Vec<(String, Answer)>, EngineError> {
    let me = state.config.node_id.clone();
    let mut expected: BTreeSet<String> = crate::figures::nodes(state)
        .await?
        .iter()
        .filter_map(|n| n["node"].as_str().map(str::to_string))
        .collect();
    expected.insert(me.clone());
    let asked = &state.gateway.asked;
    let id = format!(
        "{me}/{}/{:x}",
        asked.next.fetch_add(1, Ordering::Relaxed),
        rand::random::<u64>()
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    asked.lock().insert(id.clone(), tx);
    let msg = Message::Ask {
        id: id.clone(),
        from: me,
        question: q,
    };
    let sent = state.engine.publish(Topic::Admin, encode(&msg)).await;
    let mut answers = Vec::new();
    if sent.is_ok() {
        let deadline = tokio::time::Instant::now() + ASK_DEADLINE;
        while !expected.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((node, a))) => {
                    if expected.remove(&node) {
                        answers.push((node, a));
                    }
                }
                _ => break,
            }
        }
        if !expected.is_empty() {
            tracing::warn!(missing = ?expected, "replicas did not answer an admin question in time");
        }
    }
    asked.lock().remove(&id);
    sent.map(|_| answers)
}

fn encode(m: &Message) -> String {
    serde_json::to_string(m).expect("admin messages serialize")
}

/// The loops: this replica's report, and answering the admin topic.
pub fn spawn(state: &AppState) {
    state.background.spawn(report(state.clone()));
    state.background.spawn(answer(state.clone()));
}

async fn report(state: AppState) {
    let started_at =
        Timestamp(Timestamp::now().as_micros() - state.started_at.elapsed().as_micros() as i64);
    let mut last = state.metrics.activity.read();
    let mut tick = crate::background::ticker(REPORT_EVERY);
    while state.background.tick(&mut tick).await {
        let now_totals = state.metrics.activity.read();
        let changes = now_totals.fanout_n - last.fanout_n;
        let latency = (changes > 0).then(|| {
            json!({
                "mean": (now_totals.fanout_us - last.fanout_us) as f64 / changes as f64 / 1000.0,
                "max": now_totals.fanout_us_max as f64 / 1000.0,
            })
        });
        last = now_totals;
        let now = Timestamp::now();
        let body = json!({
            "node": state.config.node_id,
            "startedAt": started_at,
            "lastSeenAt": now,
            "sockets": sockets(&state),
            "updatesPublished": now_totals.published,
            "updatesDelivered": now_totals.delivered,
            "fanoutLatencyMs": latency,
            "webhook": crate::metrics::webhook_status(),
        });
        if let Err(e) = state
            .engine
            .report_replica(Some(body.to_string()), now)
            .await
        {
            tracing::debug!(error = %e, "replica report not written");
        }
    }
    // Leaving: the others stop counting this replica at once rather than after its report ages.
    let withdraw = state.engine.report_replica(None, Timestamp::now());
    let _ = tokio::time::timeout(Duration::from_secs(1), withdraw).await;
}

/// This replica's sockets per namespace.
fn sockets(state: &AppState) -> Value {
    let count = |ns: &str| {
        state
            .gateway
            .io
            .get()
            .and_then(|io| io.of(ns))
            .map_or(0, |n| n.sockets().len())
    };
    json!({
        "/": state.gateway.sockets.len(),
        "/widget": count("/widget"),
        "/dashboard": count(super::dashboard::NAMESPACE),
    })
}

async fn answer(state: AppState) {
    let mut rx = state.engine.subscribe_topic(Topic::Admin);
    let me = state.config.node_id.clone();
    loop {
        let m = tokio::select! {
            _ = state.background.stop.cancelled() => break,
            m = rx.recv() => m,
        };
        let text = match m {
            Ok(t) => t,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => break,
        };
        match serde_json::from_str::<Message>(&text) {
            Ok(Message::Ask { id, from, question }) => {
                let answer = answer_here(&state, question);
                let reply = Message::Answer {
                    id,
                    to: from,
                    node: me.clone(),
                    answer,
                };
                let engine = state.engine.clone();
                state.background.spawn(async move {
                    if let Err(e) = engine.publish(Topic::Admin, encode(&reply)).await {
                        tracing::warn!(error = %e, "admin answer not sent");
                    }
                });
            }
            Ok(Message::Answer {
                id,
                to,
                node,
                answer,
            }) if to == me => {
                if let Some(tx) = state.gateway.asked.lock().get(&id) {
                    let _ = tx.send((node, answer));
                }
            }
            Ok(Message::Answer { .. }) => {}
            Err(e) => tracing::debug!(error = %e, "unreadable admin message"),
        }
    }
}

/// This replica's answer to `q`, about its own sockets.
fn answer_here(state: &AppState, q: Question) -> Answer {
    let Some(io) = state.gateway.io.get() else {
        return match q {
            Question::Connections { .. } => Answer::Connections {
                connections: vec![],
            },
            Question::Disconnect { .. } => Answer::Disconnected { connections: 0 },
        };
    };
    let theirs = |user: &str| {
        let Ok(user) = UserId::parse(user) else {
            return Vec::new();
        };
        let mut hs: Vec<_> = state
            .gateway
            .sockets
            .snapshot()
            .into_iter()
            .filter(|h| h.conn.user == user)
            .collect();
        hs.sort_by_key(|h| h.connected_at);
        hs
    };
    match q {
        Question::Connections { user } => Answer::Connections {
            connections: theirs(&user)
                .into_iter()
                .map(|h| {
                    let transport = crate::gateway::transport_of(io, h.sid);
                    json!({
                        "id": h.conn.id.to_string(),
                        "node": state.config.node_id,
                        "namespace": "/",
                        "transport": transport,
                        "connectedAt": h.connected_at,
                        "lastHeardAt": h.last_heard(),
                    })
                })
                .collect(),
        },
        Question::Disconnect { user, by } => {
            let mut n = 0;
            for h in theirs(&user) {
                // A namespace disconnect: socket.io-client does not reconnect from it.
                if let Some(s) = io.get_socket(h.sid)
                    && s.disconnect().is_ok()
                {
                    n += 1;
                }
            }
            // A dashboard opened with the user's token is the user's too.
            for s in super::dashboard::sockets_of(state, &user) {
                if s.disconnect().is_ok() {
                    n += 1;
                }
            }
            tracing::info!(target: "audit", caller = ?by, user = ?user, connections = n,
                node = %state.config.node_id, "admin disconnected a user");
            Answer::Disconnected { connections: n }
        }
    }
}
