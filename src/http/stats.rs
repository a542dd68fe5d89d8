//! `GET /api/stats` (roles `dashboard`, `admin`) and `POST /api/events` (role `publisher`).

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery, Caller};
use crate::auth::Role;
use crate::db::stats::{ReportQuery, Stored};
use crate::domain::Timestamp;
use crate::domain::stats::{
    Channel, EventType, MAX_LABEL_CHARS, MAX_TEXT_CHARS, Message, NewEvent, Sender, Visitor,
    valid_visitor_id,
};
use crate::error::AppError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

const DAY_US: i64 = 24 * 3600 * 1_000_000;
/// Default report window.
const DEFAULT_DAYS: i64 = 7;
/// Longest report window.
const MAX_DAYS: i64 = 366;
pub const DEFAULT_SESSIONS: usize = 100;
pub const MAX_SESSIONS: usize = 1000;
/// A default window ends at the next multiple of this, so that reports asked within it
/// share a cache entry (the entry is still refused once a newer event was delivered).
const WINDOW_STEP_US: i64 = 10_000_000;

fn stats_of(state: &AppState) -> Result<&Arc<crate::stats::Stats>, AppError> {
    state.stats.as_ref().ok_or_else(super::database_missing)
}

fn instant(name: &str, v: &str) -> Result<Timestamp, AppError> {
    Timestamp::parse_rfc3339(v).ok_or_else(|| {
        AppError::bad_request(format!(
            "{name}: expected an RFC 3339 time, e.g. 2026-11-22T10:30:00Z"
        ))
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportParams {
    from: Option<String>,
    to: Option<String>,
    tz: Option<String>,
    limit: Option<String>,
}

/// The report `GET /api/stats` answers (built by PostgreSQL, `src/db/report.sql`; this type
/// describes it).
#[derive(utoipa::ToSchema)]
#[schema(as = StatsReport)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub struct StatsReportSchema {
    last_event_seq: i64,
    total_users: i64,
    total_sessions: i64,
    total_messages: i64,
    widget_opens: i64,
    web_unique_users: i64,
    premium_unique_users: i64,
    online: OnlineSchema,
    users: Vec<SessionSchema>,
    countries: Vec<CountrySchema>,
    /// 7 rows (Sunday first) of 24 hourly message counts in `tz`.
    heatmap: Vec<Vec<i64>>,
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    tz: String,
}

#[derive(utoipa::ToSchema)]
#[schema(as = StatsOnline)]
#[allow(dead_code)]
pub struct OnlineSchema {
    web: i64,
    premium: i64,
}

#[derive(utoipa::ToSchema)]
#[schema(as = StatsCountry)]
#[allow(dead_code)]
pub struct CountrySchema {
    country: String,
    users: i64,
}

/// One session: a visitor's run of messages.
#[derive(utoipa::ToSchema)]
#[schema(as = StatsSession)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub struct SessionSchema {
    user_id: String,
    original_user_id: String,
    session_number: i64,
    total_sessions: i64,
    user_name: Option<String>,
    #[schema(format = DateTime)]
    first_activity: String,
    #[schema(format = DateTime)]
    last_activity: String,
    message_count: i64,
    message_timestamps: Vec<String>,
    is_human_mode: bool,
    country: Option<String>,
    city: Option<String>,
    channel: String,
}

#[utoipa::path(get, path = "/api/stats", tag = "statistics", security(("bearer" = [])), params(ReportParams),
    responses((status = 200, body = StatsReportSchema), (status = 400, body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<ReportParams>,
) -> ApiResult<Json<Value>> {
    caller.require(&[Role::Dashboard, Role::Admin])?;
    let stats = stats_of(&state)?;
    let to = match p.to.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => instant("to", t)?,
        None => {
            let now = Timestamp::now().as_micros();
            Timestamp(now - now.rem_euclid(WINDOW_STEP_US) + WINDOW_STEP_US)
        }
    };
    let from = match p.from.as_deref().filter(|s| !s.is_empty()) {
        Some(f) => instant("from", f)?,
        None => Timestamp(to.as_micros() - DEFAULT_DAYS * DAY_US),
    };
    if from >= to {
        return Err(AppError::bad_request("from must be before to"));
    }
    if to.as_micros() - from.as_micros() > MAX_DAYS * DAY_US {
        return Err(AppError::bad_request(format!(
            "at most {MAX_DAYS} days per report"
        )));
    }
    let tz =
        p.tz.filter(|t| !t.is_empty())
            .unwrap_or_else(|| "UTC".into());
    if tz.len() > 64
        || !tz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-:".contains(c))
    {
        return Err(AppError::bad_request(
            "tz: expected an IANA time zone such as Europe/Istanbul",
        ));
    }
    let limit = super::limit_param(p.limit.as_deref(), DEFAULT_SESSIONS, MAX_SESSIONS)?;
    let q = ReportQuery {
        from,
        to,
        tz,
        session_gap_ms: state.config.stats_session_gap_ms,
        limit,
    };
    let v = stats.report(q).await?;
    Ok(Json((*v).clone()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventBody {
    #[serde(rename = "type")]
    kind: String,
    visitor_id: String,
    channel: String,
    sender: Option<String>,
    text: Option<String>,
    human_mode: Option<bool>,
    name: Option<String>,
    country: Option<String>,
    city: Option<String>,
    at: Option<String>,
    idempotency_key: Option<String>,
}

fn bounded(name: &str, v: Option<String>) -> Result<Option<String>, AppError> {
    match v {
        Some(s) if s.chars().count() > MAX_LABEL_CHARS => Err(AppError::bad_request(format!(
            "{name}: at most {MAX_LABEL_CHARS} characters"
        ))),
        other => Ok(other.filter(|s| !s.trim().is_empty())),
    }
}

/// `POST /api/events`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Published {
    pub seq: i64,
    /// A retry with an idempotency key already stored: nothing stored or announced again.
    pub duplicate: bool,
}

#[utoipa::path(post, path = "/api/events", tag = "statistics", security(("bearer" = [])),
    request_body = EventBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes a retry return the first seq")),
    responses((status = 202, body = Published), (status = 400, body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 413, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<ApiJson<EventBody>, AppError>,
) -> ApiResult<(StatusCode, Json<Published>)> {
    caller.require(&[Role::Publisher])?;
    let ApiJson(b) = body?;
    let stats = stats_of(&state)?;
    let kind = EventType::parse(&b.kind).ok_or_else(|| {
        AppError::bad_request(
            "type must be widget_opened, new_message, user_online or user_offline",
        )
    })?;
    if !valid_visitor_id(&b.visitor_id) {
        return Err(AppError::bad_request(
            "visitorId must match ^[A-Za-z0-9_-]{1,64}$",
        ));
    }
    let channel = Channel::parse(&b.channel)
        .ok_or_else(|| AppError::bad_request("channel must be web or premium"))?;
    let message = if kind == EventType::NewMessage {
        let sender = match b.sender.as_deref() {
            None => Sender::User,
            Some(s) => Sender::parse(s)
                .ok_or_else(|| AppError::bad_request("sender must be user, bot or agent"))?,
        };
        let text = b.text.unwrap_or_default();
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(AppError::bad_request(format!(
                "text: at most {MAX_TEXT_CHARS} characters"
            )));
        }
        Some(Message {
            sender,
            text,
            human_mode: b.human_mode.unwrap_or(false),
        })
    } else {
        None
    };
    let now = Timestamp::now();
    let at = match b.at.as_deref() {
        None => now,
        Some(a) => instant("at", a)?,
    };
    if at.as_micros() > now.as_micros() + DAY_US {
        return Err(AppError::bad_request("at: more than a day in the future"));
    }
    // It would be deleted at once, and its rollups could not be kept exact.
    let days = state.config.stats_retention_days;
    if at < crate::domain::stats::retention_horizon(now, days) {
        return Err(AppError::bad_request(format!(
            "at: older than the statistics retention ({days} days)"
        )));
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(b.idempotency_key);
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 128) {
        return Err(AppError::bad_request(
            "idempotency key: 1 to 128 characters",
        ));
    }
    let event = NewEvent {
        kind,
        visitor: Visitor {
            id: b.visitor_id,
            channel,
            name: bounded("name", b.name)?,
            country: bounded("country", b.country)?,
            city: bounded("city", b.city)?,
        },
        at,
        message,
        idempotency_key: key,
    };
    let stored = stats.record(vec![event]).await?;
    let (seq, duplicate) = match stored.first() {
        Some(Stored::New(u)) => (u.seq, false),
        Some(Stored::Duplicate(s)) => (*s, true),
        None => return Err(AppError::Internal),
    };
    Ok((StatusCode::ACCEPTED, Json(Published { seq, duplicate })))
}
