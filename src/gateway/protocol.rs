//! The Socket.IO protocol's shapes: typed requests, the one way an event is acknowledged, and
//! how a refused handshake reads.

use crate::error::AppError;
use crate::state::AppState;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use socketioxide::extract::AckSender;

/// `presence:set-status`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetStatus {
    pub status: String,
    #[serde(default)]
    pub details: Option<Value>,
}

/// `presence:block` / `presence:unblock`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Block {
    pub user_id: String,
}

/// `presence:get`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetPresences {
    pub user_ids: Vec<String>,
}

/// `presence:subscribe`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribe {
    pub user_ids: Vec<String>,
}

/// `presence:unsubscribe`: some ids, or `{"all":true}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unsubscribe {
    #[serde(default)]
    pub user_ids: Option<Vec<String>>,
    #[serde(default)]
    pub all: Option<bool>,
}

/// `presence:list-online` (no payload at all means the defaults).
#[derive(Deserialize, Default)]
pub struct ListOnline {
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub cursor: Option<String>,
}

/// `widget:message`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WidgetMessage {
    pub text: String,
    #[serde(default)]
    pub human_mode: Option<bool>,
}

/// A request's payload as `T`; anything else is `bad_request` saying what is wrong.
pub fn request<T: DeserializeOwned>(
    data: Result<Value, socketioxide::ParserError>,
) -> Result<T, AppError> {
    match data {
        Ok(v @ Value::Object(_)) => serde_json::from_value(v)
            .map_err(|e| AppError::bad_request(format!("invalid payload: {e}"))),
        _ => Err(AppError::bad_request("payload must be a JSON object")),
    }
}

/// Like [`request`], but no payload (or `null`) is the default request.
pub fn request_or_default<T: DeserializeOwned + Default>(
    data: Result<Value, socketioxide::ParserError>,
) -> Result<T, AppError> {
    match data {
        Ok(Value::Null) | Err(_) => Ok(T::default()),
        other => request(other),
    }
}

/// Answer through the ack, if one was asked for: `{"ok":true,...}` with the result's fields,
/// or `{"ok":false,"error":{code,message}}` (counted by code). The socket may have closed
/// meanwhile; then nobody is waiting for the answer.
pub fn answer(state: &AppState, ack: AckSender, result: Result<Value, AppError>) {
    let body = match result {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                o.insert("ok".into(), Value::Bool(true));
            }
            v
        }
        Err(e) => {
            state.metrics.rejected(e.code());
            json!({"ok": false, "error": e.body()})
        }
    };
    let _ = ack.send(&body);
}

/// A refused handshake, on any namespace: the client's `connect_error` message is
/// `"<code>: <message>"` (`unauthorized`, `forbidden`, `unavailable`, `rate_limited`).
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    message: String,
}

impl Refusal {
    pub fn unauthorized(m: impl Into<String>) -> Self {
        AppError::Unauthorized(m.into()).into()
    }

    pub fn unavailable(m: impl Into<String>) -> Self {
        AppError::Unavailable(m.into()).into()
    }

    pub fn rate_limited(m: impl Into<String>) -> Self {
        Refusal {
            code: AppError::RateLimited.code(),
            message: m.into(),
        }
    }
}

impl From<AppError> for Refusal {
    fn from(e: AppError) -> Self {
        Refusal {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<crate::auth::AuthError> for Refusal {
    fn from(e: crate::auth::AuthError) -> Self {
        AppError::from(e).into()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Refusal {}

/// Every namespace's admission, around its own checks: a replica that is shutting down
/// refuses at once, and a refusal is counted by code and logged at debug level.
pub async fn admission<F>(state: &AppState, ns: &str, admit: F) -> Result<(), Refusal>
where
    F: Future<Output = Result<(), Refusal>>,
{
    let r = if state.is_closing() {
        Err(Refusal::unavailable("this replica is shutting down"))
    } else {
        admit.await
    };
    if let Err(e) = &r {
        state.metrics.handshake_failed(e.code);
        tracing::debug!(namespace = ns, error = %e, "handshake refused");
    }
    r
}
