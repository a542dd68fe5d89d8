//! `GET /api/openapi.json`: OpenAPI 3.1 for every HTTP path, generated from the handlers'
//! annotations and their own request and response types, so it cannot drift from them. The
//! test command runs a property-based fuzzer (schemathesis) against it: every response must
//! match what this says.

use axum::Json;
use axum::response::IntoResponse;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorDetail, ErrorResponse};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or ADMIN_TOKEN")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "presence-gateway",
        description = "Presence and live statistics. Socket.IO events are in docs/protocol.md."
    ),
    paths(
        super::health::healthz,
        super::health::readyz,
        super::health::health,
        super::metrics,
        openapi,
        super::presence::one,
        super::presence::many,
        super::users::search,
        super::privacy::get,
        super::privacy::put,
        super::blocks::list,
        super::blocks::put,
        super::blocks::delete,
        super::stats::report,
        super::stats::publish,
        super::debug::presence,
        super::debug::socket_status,
        super::debug::check_online_status,
        super::admin::nodes,
        super::admin::user,
        super::admin::disconnect,
        super::ui::root,
        super::ui::index,
        super::ui::file,
    ),
    components(schemas(ErrorResponse, ErrorDetail)),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn openapi() -> impl IntoResponse {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    Json(
        DOC.get_or_init(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or_default())
            .clone(),
    )
}
