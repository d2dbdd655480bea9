//! The HTTP routes: the page and its assets, the JSON API, the event stream and the actions,
//! behind `guard` (token, `Host` and CSRF checks, security headers).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the page (HTML with the CSRF token) |
//! | `GET /assets/app.js`, `GET /assets/style.css` | its script and style |
//! | `GET /api/state` | nodes and tasks ([`super::view::StateView`]) |
//! | `GET /api/timeline` | recent fires and runs ([`super::hub::TimelineEntry`]) |
//! | `GET /api/events` | server-sent events: `dcron` (a `dcronctl watch --json` event), `warning`, `ready`, `resync` |
//! | `POST /api/tasks/{name}/{pause,resume,trigger,delete,reuse}[?static=true]` | an action, through the same functions as the CLI commands |

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::auth::{host_is_local, Access};
use super::AppState;
use crate::duration::format_instant;
use crate::error::{CliError, ErrorKind};

const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const INDEX_HTML: &str = include_str!("assets/index.html");

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page with this process's CSRF token and the registry's name (without credentials).
pub fn render_index(csrf: &str, registry_name: &str) -> String {
    INDEX_HTML
        .replace("{{CSRF}}", &escape_html(csrf))
        .replace("{{REGISTRY}}", &escape_html(registry_name))
}

/// The console's router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .route("/api/state", get(api_state))
        .route("/api/timeline", get(api_timeline))
        .route("/api/events", get(api_events))
        .route("/api/tasks/{name}/{action}", post(api_action))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Checks every request (host, token, CSRF on `POST`) and adds the security headers.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if !st.guard.has_token() && !host_is_local(headers) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "this console answers only to an IP address or localhost\n",
        );
    }
    match st.guard.check(headers, req.uri().query()) {
        Access::Open | Access::Granted => {}
        Access::Login if req.method() == Method::GET => {
            let path = req.uri().path().to_string();
            let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, path)]).into_response();
            if let Ok(v) = HeaderValue::from_str(&st.guard.session_cookie()) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            return secure(resp);
        }
        Access::Login | Access::Denied => {
            let mut resp = text(
                StatusCode::UNAUTHORIZED,
                "this console needs its access token: open /?token=<token> once, or send Authorization: Bearer <token>\n",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return secure(resp);
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD && !st.guard.csrf_ok(headers) {
        return secure(text(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token: actions are taken from the console's own page\n",
        ));
    }
    secure(next.run(req).await)
}

fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (k, v) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    resp
}

async fn index(State(st): State<Arc<AppState>>) -> Html<String> {
    Html(st.index_html.clone())
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
        .into_response()
}

fn status_of(e: &CliError) -> StatusCode {
    match e.kind() {
        ErrorKind::Usage => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response(st: &AppState, e: CliError) -> Response {
    let e = e.scrubbed(&st.secrets);
    (
        status_of(&e),
        Json(json!({ "ok": false, "error": e.message() })),
    )
        .into_response()
}

async fn api_state(State(st): State<Arc<AppState>>) -> Response {
    match super::view::state(
        st.registry.as_ref(),
        &st.registry_name,
        st.strategy,
        Utc::now(),
    )
    .await
    {
        Ok(view) => Json(view).into_response(),
        Err(e) => error_response(&st, e),
    }
}

async fn api_timeline(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({ "now": Utc::now(), "entries": st.hub.timeline() })).into_response()
}

async fn api_events(State(st): State<Arc<AppState>>) -> Response {
    let rx = st.hub.subscribe();
    let mut shutdown = st.shutdown.clone();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(m) => Event::default().event(m.name).data(m.data.as_str()),
            Err(RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), rx))
    })
    // Open streams would hold a graceful shutdown forever: they end with the console.
    .take_until(async move {
        let _ = shutdown.wait_for(|s| *s).await;
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `?static=true`: the task is defined in code (accept a name the registry barely knows).
#[derive(Debug, Default, Deserialize)]
struct ActionQuery {
    #[serde(default, rename = "static")]
    allow_static: bool,
}

async fn api_action(
    State(st): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
    Query(q): Query<ActionQuery>,
) -> Response {
    let registry = st.registry.as_ref();
    let now = Utc::now();
    let allow = q.allow_static;
    let done = match action.as_str() {
        "pause" => crate::admin::pause(registry, &name, allow, now)
            .await
            .map(|already| {
                let message = if already {
                    format!("task `{name}` was already paused")
                } else {
                    format!("paused task `{name}`: its fires are skipped on every node until it is resumed")
                };
                (message, None)
            }),
        "resume" => crate::admin::resume(registry, &name, allow, now)
            .await
            .map(|was| {
                let message = if was {
                    format!("resumed task `{name}`")
                } else {
                    format!("task `{name}` was not paused")
                };
                (message, None)
            }),
        "trigger" => crate::admin::trigger(registry, &name, allow, now)
            .await
            .map(|t| {
                (
                    format!(
                        "triggered task `{name}` (request {}): its owner runs it once within a poll interval",
                        t.record.id
                    ),
                    t.warning,
                )
            }),
        "delete" => crate::ops::delete(registry, &name, allow, now)
            .await
            .map(|o| {
                let message = if o.already {
                    format!(
                        "task `{name}` was already marked deleted at {}",
                        format_instant(o.deleted_at)
                    )
                } else {
                    format!(
                        "marked task `{name}` deleted at {}: it fires nowhere until reused",
                        format_instant(o.deleted_at)
                    )
                };
                (message, None)
            }),
        "reuse" => crate::ops::reuse(registry, &name)
            .await
            .map(|()| (format!("task `{name}` is no longer marked deleted"), None)),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({ "ok": false, "error": format!("unknown action `{action}`") })),
            )
                .into_response()
        }
    };
    match done {
        Ok((message, warning)) => Json(json!({
            "ok": true,
            "action": action,
            "task": name,
            "message": st.secrets.scrub(&message),
            "warning": warning.map(|w| st.secrets.scrub(&w)),
        }))
        .into_response(),
        Err(e) => error_response(&st, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_rendered_escaped() {
        let page = render_index("abc123", "redis://h:1 <ns>");
        assert!(page.contains(r#"content="abc123""#), "{page}");
        assert!(page.contains("redis://h:1 &lt;ns&gt;"));
        assert!(!page.contains("{{"));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external resource"
        );
    }
}
