//! The plugin endpoints: list, show, install, upgrade, remove and logs, at runtime.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /plugins` | `{"plugins":[PluginInfo…]}` (see `plugins::registry::PluginInfo`) |
//! | `GET /plugins/{name}` | one `PluginInfo` |
//! | `POST /plugins` | body: a bundle (`application/octet-stream`); installs and starts it; `201` + `PluginInfo` |
//! | `PUT /plugins/{name}?reset=true` | body: a bundle; upgrades, keeping state and offsets unless `reset`; `PluginInfo` |
//! | `DELETE /plugins/{name}?drop_state=true` | stops and deletes; `{"removed":name,"state_dropped":bool}` |
//! | `GET /plugins/{name}/logs?lines=N` | `{"name":…,"lines":[{ts_ms,level,source,message}…]}`, oldest first (N: 1..=10000, default 100) |
//!
//! Bodies may be up to `plugins.max_bundle_bytes`. The bearer token of `http.auth_token`
//! applies as everywhere. Errors are JSON `{"error_code":…,"message":…}` like the rest of the
//! API (`api::error`), with these codes of their own:
//!
//! | status | error_code | when |
//! |---|---|---|
//! | 400 | 40010 | the bundle is malformed, or the name or a query parameter is invalid |
//! | 403 | 40310 | the bundle is unsigned, signed by an unknown key, or its signature is bad |
//! | 404 | 40410 | no such plugin |
//! | 409 | 40910 | install of a name that is installed (use `PUT`) |
//! | 413 | 41310 | the body is larger than `plugins.max_bundle_bytes` |
//! | 415 | 41510 | a `Content-Type` other than `application/octet-stream` |
//! | 422 | 42210 | the module does not compile, misses the ABI, or its init failed; or the bundle names another plugin |
//! | 500 | 50010 | a file, state or task error on the box |
//! | 503 | 50310 | plugins are disabled (`plugins.enabled = false`) |
//!
//! The router of `api::router` mounts [`routes`]; the registry reaches the handlers as an
//! `Extension` added with [`with_registry`].

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use crate::plugins::bundle::BundleError;
use crate::plugins::manifest::name_problem;
use crate::plugins::registry::{PluginEngine, PluginRegistry, Registry, RegistryError, WasmEngine};
use http_body_util::BodyExt as _;

/// Default and largest `lines` of `GET /plugins/{name}/logs`.
pub const DEFAULT_LOG_LINES: usize = 100;
/// Largest `lines` of `GET /plugins/{name}/logs`.
pub const MAX_LOG_LINES: usize = 10_000;

/// Errors of the plugin endpoints.
#[derive(Debug, thiserror::Error)]
pub enum PluginApiError {
    /// A registry operation failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Plugins are turned off.
    #[error("plugins are disabled on this box (`plugins.enabled = false`)")]
    Disabled,
    /// The body is too large.
    #[error("the bundle is larger than {limit} bytes (`plugins.max_bundle_bytes`)")]
    BodyTooLarge { limit: usize },
    /// Wrong content type.
    #[error("unsupported Content-Type {0:?}; send the bundle as application/octet-stream")]
    UnsupportedMediaType(String),
    /// A bad path or query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// The body could not be read.
    #[error("the request body could not be read: {0}")]
    Body(String),
}

impl PluginApiError {
    /// The HTTP status and error code.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            PluginApiError::Registry(e) => match e {
                RegistryError::Bundle(
                    BundleError::Unsigned
                    | BundleError::UnknownKey { .. }
                    | BundleError::BadSignature { .. },
                ) => (StatusCode::FORBIDDEN, 40310),
                RegistryError::Bundle(BundleError::Io { .. }) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, 50010)
                }
                RegistryError::Bundle(_) | RegistryError::InvalidName(..) => {
                    (StatusCode::BAD_REQUEST, 40010)
                }
                RegistryError::NotInstalled(_) => (StatusCode::NOT_FOUND, 40410),
                RegistryError::AlreadyInstalled(_) => (StatusCode::CONFLICT, 40910),
                RegistryError::OverBudget { .. } => (StatusCode::CONFLICT, 40911),
                RegistryError::Cycle { .. } => (StatusCode::CONFLICT, 40912),
                RegistryError::OutputTaken { .. } => (StatusCode::CONFLICT, 40913),
                RegistryError::Compile { .. }
                | RegistryError::Init { .. }
                | RegistryError::NameMismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 42210),
                RegistryError::Start { .. }
                | RegistryError::Reset { .. }
                | RegistryError::Io { .. }
                | RegistryError::Corrupt { .. }
                | RegistryError::Encode { .. }
                | RegistryError::Host(_)
                | RegistryError::Task(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50010),
            },
            PluginApiError::BadRequest(_) | PluginApiError::Body(_) => {
                (StatusCode::BAD_REQUEST, 40010)
            }
            PluginApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, 41310),
            PluginApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 41510),
            PluginApiError::Disabled => (StatusCode::SERVICE_UNAVAILABLE, 50310),
        }
    }
}

impl IntoResponse for PluginApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(status = status.as_u16(), error = %self, "A plugin request failed on the server side.");
        }
        let body = json!({ "error_code": code, "message": self.to_string() });
        (status, Json(body)).into_response()
    }
}

/// The plugin routes of the box (mounted by `api::router` behind the token check).
pub fn routes() -> Router<ApiState> {
    routes_for::<WasmEngine>()
}

/// The plugin routes for a registry over engine `E` (tests use their own engine).
pub fn routes_for<E: PluginEngine>() -> Router<ApiState> {
    Router::new()
        .route("/plugins", get(list::<E>).post(install::<E>))
        .route(
            "/plugins/{name}",
            get(show::<E>).put(upgrade::<E>).delete(remove::<E>),
        )
        .route("/plugins/{name}/logs", get(logs::<E>))
}

/// Makes `registry` reachable from the plugin routes of `router`.
pub fn with_registry<E: PluginEngine>(router: Router, registry: Registry<E>) -> Router {
    router.layer(Extension(registry))
}

/// Makes the box's registry reachable; `None` when plugins are disabled.
pub fn with_plugins(router: Router, registry: Option<PluginRegistry>) -> Router {
    match registry {
        Some(registry) => with_registry(router, registry),
        None => router,
    }
}

type Reg<E> = Option<Extension<Registry<E>>>;

fn registry<E: PluginEngine>(reg: Reg<E>) -> Result<Registry<E>, PluginApiError> {
    reg.map(|Extension(r)| r).ok_or(PluginApiError::Disabled)
}

fn check_name(name: &str) -> Result<(), PluginApiError> {
    match name_problem(name) {
        Some(problem) => Err(PluginApiError::BadRequest(format!(
            "{name:?} is not a plugin name: it {problem}"
        ))),
        None => Ok(()),
    }
}

async fn bundle_body(
    limit: usize,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, PluginApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| {
        v.to_str()
            .unwrap_or("(not text)")
            .trim()
            .to_ascii_lowercase()
    });
    match content_type.as_deref() {
        None | Some("application/octet-stream") => {}
        Some(other) => return Err(PluginApiError::UnsupportedMediaType(other.to_string())),
    }
    let mut body = body;
    let mut bytes: Vec<u8> = Vec::new();
    let declared_too_large = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len > limit as u64);
    if !declared_too_large {
        let mut over = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| PluginApiError::Body(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if bytes.len() + data.len() > limit {
                over = true;
                break;
            }
            bytes.extend_from_slice(&data);
        }
        if !over {
            return if bytes.is_empty() {
                Err(PluginApiError::BadRequest(
                    "the body is empty; send the bundle (.opb) as the body".into(),
                ))
            } else {
                Ok(bytes)
            };
        }
    }
    drain(body).await;
    Err(PluginApiError::BodyTooLarge { limit })
}

/// Bytes of a refused upload read and thrown away, at most, so that the client gets to read
/// its 413 instead of a broken pipe.
const DRAIN_MAX_BYTES: usize = 256 * 1024 * 1024;
/// How long a refused upload is read and thrown away, at most.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the rest of a refused body and discards it (bounded in bytes and time): a server that
/// answers and closes while the client is still sending makes the client's kernel see a reset
/// before it reads the answer.
async fn drain(mut body: Body) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > DRAIN_MAX_BYTES {
                    return;
                }
            }
        }
    })
    .await;
}

async fn list<E: PluginEngine>(reg: Reg<E>) -> Result<Response, PluginApiError> {
    let registry = registry(reg)?;
    Ok(Json(json!({ "plugins": registry.list() })).into_response())
}

async fn show<E: PluginEngine>(
    reg: Reg<E>,
    Path(name): Path<String>,
) -> Result<Response, PluginApiError> {
    let registry = registry(reg)?;
    check_name(&name)?;
    let info = registry
        .info(&name)
        .ok_or(RegistryError::NotInstalled(name))?;
    Ok(Json(info).into_response())
}

async fn install<E: PluginEngine>(
    reg: Reg<E>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PluginApiError> {
    let registry = registry(reg)?;
    let bytes = bundle_body(registry.config().max_bundle_bytes, &headers, body).await?;
    let info = registry.install(&bytes).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// Query of `PUT /plugins/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeParams {
    #[serde(default)]
    reset: bool,
}

async fn upgrade<E: PluginEngine>(
    reg: Reg<E>,
    Path(name): Path<String>,
    query: Result<Query<UpgradeParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PluginApiError> {
    let registry = registry(reg)?;
    check_name(&name)?;
    let Query(params) = query.map_err(|e| PluginApiError::BadRequest(e.body_text()))?;
    let bytes = bundle_body(registry.config().max_bundle_bytes, &headers, body).await?;
    let info = registry.upgrade(&name, &bytes, params.reset).await?;
    Ok(Json(info).into_response())
}

/// Query of `DELETE /plugins/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveParams {
    #[serde(default)]
    drop_state: bool,
}

async fn remove<E: PluginEngine>(
    reg: Reg<E>,
    Path(name): Path<String>,
    query: Result<Query<RemoveParams>, QueryRejection>,
) -> Result<Response, PluginApiError> {
    let registry = registry(reg)?;
    check_name(&name)?;
    let Query(params) = query.map_err(|e| PluginApiError::BadRequest(e.body_text()))?;
    registry.remove(&name, params.drop_state).await?;
    Ok(Json(json!({ "removed": name, "state_dropped": params.drop_state })).into_response())
}

/// Query of `GET /plugins/{name}/logs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsParams {
    lines: Option<usize>,
}

async fn logs<E: PluginEngine>(
    reg: Reg<E>,
    Path(name): Path<String>,
    query: Result<Query<LogsParams>, QueryRejection>,
) -> Result<Response, PluginApiError> {
    let registry = registry(reg)?;
    check_name(&name)?;
    let Query(params) = query.map_err(|e| PluginApiError::BadRequest(e.body_text()))?;
    let lines = params.lines.unwrap_or(DEFAULT_LOG_LINES);
    if lines == 0 || lines > MAX_LOG_LINES {
        return Err(PluginApiError::BadRequest(format!(
            "`lines` must be between 1 and {MAX_LOG_LINES}"
        )));
    }
    let lines = registry.logs(&name, lines)?;
    Ok(Json(json!({ "name": name, "lines": lines })).into_response())
}
