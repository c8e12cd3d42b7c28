//! Liveness, the OpenAPI document and the dashboard's static files.

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::assets::{self, Asset};
use crate::error::ApiError;

/// The HTTP contract, kept at the repository root and compiled in.
pub const OPENAPI_YAML: &str = include_str!("../../../openapi.yaml");

pub async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"))],
        OPENAPI_YAML,
    )
        .into_response()
}

fn serve(asset: &Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            // Compiled in, so they change with every build: revalidate rather than cache.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        asset.body,
    )
        .into_response()
}

fn lookup(name: &str) -> Result<Response, ApiError> {
    assets::find(name)
        .map(serve)
        .ok_or_else(|| ApiError::NotFound(format!("no asset named {name:?}")))
}

pub async fn index() -> Result<Response, ApiError> {
    lookup("index.html")
}

pub async fn asset(name: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    lookup(&super::path_param(name)?)
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
