//! `/widget`: anonymous website chat widgets. Each connection records statistics events:
//! `widget_opened` when it connects (the visitor is not online yet), `new_message` for each
//! `widget:message`, `user_online` with its first message only, `user_offline` when it closes
//! if it had gone online. Widget sockets are not presence users: nothing here touches the
//! presence engine.

use super::protocol::{Refusal, WidgetMessage, admission, answer, request};
use super::ratelimit::TokenBucket;
use crate::domain::Timestamp;
use crate::domain::stats::{
    Channel, EventType, MAX_LABEL_CHARS, MAX_TEXT_CHARS, Message, NewEvent, Sender, Visitor,
    valid_visitor_id,
};
use crate::error::AppError;
use crate::state::AppState;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct WidgetConn {
    visitor: Visitor,
    /// `user_online` was recorded (so `user_offline` is due on close).
    online: AtomicBool,
    /// The request budget; parked when the socket closes, so a namespace reconnect inside the
    /// session gets it back.
    rate: Mutex<TokenBucket>,
}

fn label(auth: &Value, key: &str) -> Result<Option<String>, Refusal> {
    match auth.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !crate::domain::text::storable(s) => Err(Refusal::unauthorized(
            format!("{key}: {}", crate::domain::text::UNSTORABLE),
        )),
        Some(Value::String(s)) if s.chars().count() <= MAX_LABEL_CHARS => {
            Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty()))
        }
        Some(_) => Err(Refusal::unauthorized(format!(
            "{key} must be a string of at most {MAX_LABEL_CHARS} characters"
        ))),
    }
}

fn visitor(auth: &Value) -> Result<Visitor, Refusal> {
    let id = auth
        .get("visitorId")
        .and_then(Value::as_str)
        .filter(|s| valid_visitor_id(s))
        .ok_or_else(|| Refusal::unauthorized("visitorId must match ^[A-Za-z0-9_-]{1,64}$"))?;
    let channel = auth
        .get("channel")
        .and_then(Value::as_str)
        .and_then(Channel::parse)
        .ok_or_else(|| Refusal::unauthorized("channel must be web or premium"))?;
    Ok(Visitor {
        id: id.to_string(),
        channel,
        name: label(auth, "name")?,
        country: label(auth, "country")?,
        city: label(auth, "city")?,
    })
}

fn event(kind: EventType, v: &Visitor, message: Option<Message>) -> NewEvent {
    NewEvent {
        kind,
        visitor: v.clone(),
        at: Timestamp::now(),
        message,
        idempotency_key: None,
    }
}

/// Connect middleware: validate, record `widget_opened` (stored before the client is told
/// it is connected), register the handlers.
pub async fn admit(
    s: SocketRef,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), Refusal> {
    let admit = async {
        // Each join pays from the session's budget (a rejoin does not refill it) before it
        // stores a row.
        super::handshake::charge_join(&state, s.id, "/widget")?;
        // And from the address's budget: every join stores a row, and new sessions are free.
        if let Some(super::ClientIp(ip)) = s.req_parts().extensions.get::<super::ClientIp>()
            && !state
                .widget_join_limits
                .allow(&crate::limits::limit_key(*ip))
        {
            return Err(Refusal::rate_limited(
                "too many widget joins from this address; slow down",
            ));
        }
        let v = visitor(&auth.unwrap_or(Value::Null))?;
        let stats = state
            .stats
            .as_ref()
            .ok_or_else(|| Refusal::unavailable("statistics need DATABASE_URL"))?;
        stats
            .record_widget(vec![event(EventType::WidgetOpened, &v, None)])
            .await
            .map_err(|_| Refusal::unavailable("statistics store unreachable; retry shortly"))?;
        s.extensions.insert(Arc::new(WidgetConn {
            visitor: v,
            online: AtomicBool::new(false),
            // The budget the join was charged to (`charge_join` parked it).
            rate: Mutex::new(super::handshake::session_budget(&state, s.id, "/widget")),
        }));
        s.on("widget:message", message);
        s.on_disconnect(closed);
        Ok(())
    };
    admission(&state, "/widget", admit).await
}

pub async fn connected(State(state): State<AppState>) {
    state.metrics.sockets_widget.increment(1.0);
}

async fn message(
    ack: AckSender,
    TryData(data): TryData<Value>,
    State(state): State<AppState>,
    Extension(w): Extension<Arc<WidgetConn>>,
) {
    let r = record_message(&state, &w, data).await;
    answer(&state, ack, r.map(|seq| json!({"seq": seq})));
}

async fn record_message(
    state: &AppState,
    w: &WidgetConn,
    data: Result<Value, socketioxide::ParserError>,
) -> Result<i64, AppError> {
    if !w.rate.lock().unwrap_or_else(|e| e.into_inner()).try_take() {
        return Err(AppError::RateLimited);
    }
    let WidgetMessage { text, human_mode } = request(data)?;
    if text.trim().is_empty() {
        return Err(AppError::bad_request("text is required"));
    }
    let text = text.as_str();
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(AppError::bad_request(format!(
            "text: at most {MAX_TEXT_CHARS} characters"
        )));
    }
    if !crate::domain::text::storable(text) {
        return Err(AppError::bad_request(format!(
            "text: {}",
            crate::domain::text::UNSTORABLE
        )));
    }
    let human_mode = human_mode.unwrap_or(false);
    let stats = state
        .stats
        .as_ref()
        .ok_or_else(|| AppError::Unavailable("statistics need DATABASE_URL".into()))?;
    let msg = Message {
        sender: Sender::User,
        text: text.to_string(),
        human_mode,
    };
    let mut events = vec![event(EventType::NewMessage, &w.visitor, Some(msg))];
    // The first message, not the widget opening, makes the visitor online.
    let first = !w.online.swap(true, Ordering::AcqRel);
    if first {
        events.push(event(EventType::UserOnline, &w.visitor, None));
    }
    match stats.record_widget(events).await {
        Ok(stored) => Ok(match stored.first() {
            Some(crate::db::stats::Stored::New(u)) => u.seq,
            Some(crate::db::stats::Stored::Duplicate(seq)) => *seq,
            None => 0,
        }),
        Err(e) => {
            if first {
                w.online.store(false, Ordering::Release);
            }
            Err(e)
        }
    }
}

async fn closed(
    s: SocketRef,
    State(state): State<AppState>,
    Extension(w): Extension<Arc<WidgetConn>>,
) {
    state.metrics.sockets_widget.decrement(1.0);
    let left = w.rate.lock().unwrap_or_else(|e| e.into_inner()).clone();
    state.session_budgets.park((s.id, "/widget"), left);
    if !w.online.load(Ordering::Acquire) {
        return;
    }
    let Some(stats) = state.stats.clone() else {
        return;
    };
    let ev = event(EventType::UserOffline, &w.visitor, None);
    // Stored in the background: a shutting-down replica still waits for it (task tracker).
    state.background.tasks.spawn(async move {
        if let Err(e) = stats.record(vec![ev]).await {
            tracing::warn!(error = %e, "user_offline not recorded");
        }
    });
}
