//! The web console (`/ui/`): a few static files compiled into the binary, so the page needs
//! nothing but this process, and nothing from another origin. `GET /` sends people there.
//!
//! Every file is served with a Content-Security-Policy that allows this origin only (scripts,
//! styles, the WebSocket, images) and no inline script or style: names typed by strangers that
//! reached the page as markup still could not run. The page itself never builds markup from
//! data (`ui/app.js` sets text, not HTML).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

pub const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self'; \
    style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// (name, content type, bytes) of every file of the console.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "sio.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/sio.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/chart.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../ui/favicon.svg"),
    ),
];

/// `GET /`: the console.
#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 302, description = "to /ui/")))]
pub async fn root() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/ui/")]).into_response()
}

/// `GET /ui`: the console's address ends with a slash (its files are relative to it).
pub async fn bare() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`: the console's page.
#[utoipa::path(get, path = "/ui/", tag = "console",
    responses((status = 200, description = "the web console", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
    serve("index.html")
}

/// `GET /ui/{file}`: the console's scripts, styles and icon.
#[utoipa::path(get, path = "/ui/{file}", tag = "console",
    params(("file" = String, Path, description = "one of the console's files")),
    responses((status = 200, description = "a file of the web console", body = String),
        (status = 404, body = super::error::ErrorResponse)))]
pub async fn file(Path(name): Path<String>) -> Response {
    serve(&name)
}

fn serve(name: &str) -> Response {
    let Some((_, kind, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return crate::error::AppError::NotFound("no such file".into()).into_response();
    };
    let mut r = (StatusCode::OK, *body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Small, and must change with the binary: revalidate rather than cache a stale console.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    /// A file added to `ui/` but not to [`super::FILES`] would be missing from the binary.
    #[test]
    fn every_file_of_ui_is_served() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/ui");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                super::FILES.iter().any(|(n, _, _)| *n == name),
                "ui/{name} is not in FILES"
            );
        }
    }
}
