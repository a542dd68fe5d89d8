//! The HTTP router, driven in-process with `oneshot`: no port, no client library.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use presence_gateway::Gateway;
use presence_gateway::auth::Role;
use presence_gateway::config::Config;
use presence_gateway::domain::Gender;
use serde_json::Value;
use tower::ServiceExt;

async fn call(gw: &Gateway, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = gw
        .router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn gateway() -> Gateway {
    let mut c = Config::development();
    c.node_id = "router-test".into();
    Gateway::build(c).await.unwrap()
}

#[tokio::test]
async fn health_reports_the_memory_engine() {
    let gw = gateway().await;
    let (status, body) = call(&gw, "/api/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["node"], "router-test");
    assert_eq!(body["dependencies"]["redis"], "disabled");
    assert_eq!(body["presence"]["onlineUsers"], 0);
}

#[tokio::test]
async fn readiness_turns_off_when_draining() {
    let gw = gateway().await;
    assert_eq!(call(&gw, "/readyz", None).await.0, StatusCode::OK);
    gw.state.start_draining();
    assert_eq!(
        call(&gw, "/readyz", None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(call(&gw, "/healthz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn errors_are_json_with_stable_codes_and_no_internals() {
    let gw = gateway().await;
    let (status, body) = call(&gw, "/api/presence/u1", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let dash = gw
        .state
        .auth
        .issue("d", None, None, &[Role::Dashboard], 60)
        .unwrap();
    let (status, body) = call(&gw, "/api/presence/u1", Some(&dash)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let user = gw
        .state
        .auth
        .issue("u", Some(Gender::Female), None, &[Role::User], 60)
        .unwrap();
    let (status, body) = call(
        &gw,
        &format!("/api/presence/{}", "x".repeat(129)),
        Some(&user),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (status, body) = call(&gw, "/api/presence/never-seen", Some(&user)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], 0);
}
