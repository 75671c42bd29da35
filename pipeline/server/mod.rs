//! `tre serve`: the research environment as an HTTP service (axum on tokio).
//!
//! Owns the HTTP API of the service contract (docs/service.md, HTTP API): [`app`] builds the one router used
//! by the server and by the tests; [`App`] is the shared state (workspace, audit log, job
//! queue, the release lock); [`auth`] makes callers and capabilities; [`error`] maps
//! every refusal to its status code; handlers live one file per resource ([`me`],
//! [`jobs`], [`releases`]) and only extract, authorise, call the library and map the
//! result. Every refusal is audited here, in [`App::refusal`]; every action is audited
//! by its handler before its effect. [`http`] is the connection layer (timeouts, body
//! limits, graceful shutdown with a deadline); [`serve_with`] ties it to the job workers
//! so a stop kills the running jobs and is audited and checkpointed. Danger: this is the only process that reads and
//! writes the workspace while people use it; it listens on loopback only (put a TLS
//! reverse proxy in front), and never returns row-level data.

pub mod alerts;
pub mod auth;
pub mod error;
pub mod http;
pub mod jobs;
pub mod limiter;
pub mod me;
pub mod register;
pub mod releases;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::audit::{AuditError, EntryDraft};
use crate::clock::Clock;
use crate::jobs::JobError;
use crate::jobs::runner::{self, JobQueue, Runner, Workers};
use crate::schema::SchemaSet;
use crate::tre::auditor::Auditor;
use crate::tre::id::Id;
use crate::tre::workspace::{Workspace, WorkspaceError};
use error::ApiError;

/// Shared state of the server.
#[derive(Debug)]
pub struct App {
    /// The workspace.
    pub ws: Workspace,
    /// Table schemas (for loading policies).
    pub schemas: SchemaSet,
    /// The audit log.
    pub auditor: Auditor,
    /// The job queue.
    pub queue: JobQueue,
    /// The job workers (stopped with the server).
    pub workers: Workers,
    /// Failed sign-ins, per address and token prefix.
    pub limiter: limiter::Limiter,
    /// Held while a release request is read, changed and written: one writer, so
    /// concurrent reviews are never lost.
    pub releases: tokio::sync::Mutex<()>,
}

impl App {
    /// Append an entry; the caller makes the action visible only after `Ok`.
    pub fn record(&self, draft: EntryDraft) -> Result<(), ApiError> {
        self.auditor.record(draft)?;
        Ok(())
    }

    /// Audit a refusal (or failure) of `action` by `actor`, and turn it into a response.
    /// If even that entry cannot be written, the answer is a 500.
    pub fn refusal(
        &self,
        actor: &str,
        action: &str,
        project: Option<&str>,
        route: Option<String>,
        err: ApiError,
    ) -> Response {
        let mut d = EntryDraft::new(actor, action);
        d = if err.is_refusal() {
            d.refused(err.to_string())
        } else {
            d.failed(err.to_string())
        };
        if let Some(p) = project {
            match Id::parse("project", p) {
                Ok(id) => d = d.project(id.as_str()),
                Err(_) => d = d.detail("project_id", "malformed"),
            }
        }
        if let Some(r) = route {
            d = d.detail("route", r);
        }
        d = d.detail("status", err.status().as_u16());
        match self.auditor.record(d) {
            Ok(_) => err.into_response(),
            Err(a) => ApiError::Audit(a).into_response(),
        }
    }

    /// Before checking a presented token (API or sign-in page): refused with 429 when
    /// its address or prefix is over the failure limit (the token is not looked up);
    /// the aggregates of closed windows are audited on the way.
    pub fn auth_gate(
        &self,
        addr: Option<std::net::IpAddr>,
        token: Option<&str>,
    ) -> Result<(), ApiError> {
        let (gate, closed) = self.limiter.check(addr, token, std::time::Instant::now());
        self.audit_failures(closed)?;
        gate.map_err(|wait| ApiError::TooManyFailures {
            retry_after: wait.as_secs().max(1),
        })
    }

    /// A failed authentication: whether it must be audited now (the first of its
    /// address's window, or one that `names` a person: a revoked or expired token) or
    /// is counted into the window's aggregate.
    pub fn auth_failed(
        &self,
        addr: Option<std::net::IpAddr>,
        token: Option<&str>,
        names: bool,
    ) -> bool {
        self.limiter
            .fail(addr, token, names, std::time::Instant::now())
            == limiter::Note::Audit
    }

    /// Write aggregated failed sign-ins.
    pub fn audit_failures(&self, aggregates: Vec<limiter::Aggregate>) -> Result<(), ApiError> {
        for a in aggregates {
            self.auditor.record(a.draft())?;
        }
        Ok(())
    }

    /// Finish a handler: a success as it is, an error audited as a refusal.
    pub fn finish<R: IntoResponse>(
        &self,
        actor: &Id,
        action: &str,
        project: Option<&str>,
        result: Result<R, ApiError>,
    ) -> Response {
        match result {
            Ok(r) => r.into_response(),
            Err(e) => self.refusal(actor.as_str(), action, project, None, e),
        }
    }
}

/// The matched route template of a request (never its raw path, which may be junk).
pub fn route_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "(unmatched)".into())
}

/// Every route of the API.
pub fn app(state: Arc<App>) -> Router {
    Router::new()
        .route("/api/me", get(me::show))
        .route("/api/alerts", get(alerts::list))
        .route("/api/alerts/{id}/ack", post(alerts::ack))
        .route("/register.json", get(register::json))
        .route("/register/{file}", get(register::csv))
        .route("/api/projects/{p}/jobs", post(jobs::submit))
        .route("/api/projects/{p}/jobs/{job}", get(jobs::show))
        .route("/api/projects/{p}/jobs/{job}/safe.csv", get(jobs::safe))
        .route("/api/projects/{p}/releases", post(releases::request))
        .route("/api/projects/{p}/releases/{r}", get(releases::show))
        .route(
            "/api/projects/{p}/releases/{r}/reviews",
            post(releases::review),
        )
        .route(
            "/api/projects/{p}/releases/{r}/export",
            post(releases::export),
        )
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut r: Response) -> Response {
    use axum::http::{HeaderValue, header};
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    r
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The workspace is not safe or not there.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// The audit log cannot be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// An export left under way could not be finished or rolled back.
    #[error("cannot recover the exports left under way: {0}")]
    Release(crate::tre::release::ReleaseError),
    /// The jobs a previous server left could not be recovered.
    #[error("cannot recover the jobs the previous server left: {0}")]
    Jobs(#[from] JobError),
    /// The alert rules are unusable.
    #[error(transparent)]
    Alerts(#[from] crate::transparency::TransparencyError),
    /// Not a loopback address.
    #[error(
        "tre serve listens on loopback only (127.0.0.1 or ::1), not {0}; put a TLS reverse proxy in front for remote users"
    )]
    NotLoopback(SocketAddr),
    /// Listening or serving failed.
    #[error("cannot serve on {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
}

impl crate::error::Classify for ServeError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ServeError::Workspace(w) => crate::error::Classify::kind(w),
            ServeError::Audit(a) => crate::error::Classify::kind(a),
            ServeError::Release(r) => crate::error::Classify::kind(r),
            ServeError::Jobs(j) => crate::error::Classify::kind(j),
            ServeError::Alerts(e) => crate::error::Classify::kind(e),
            ServeError::NotLoopback(_) => crate::error::ErrorKind::Refused,
            ServeError::Io { .. } => crate::error::ErrorKind::Failed,
        }
    }
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The workspace folder.
    pub workspace: PathBuf,
    /// Job workers.
    pub workers: usize,
    /// The `tre` binary that runs jobs.
    pub exe: PathBuf,
    /// Run jobs on the Ballista cluster of this scheduler (`HOST:PORT`), not embedded.
    pub scheduler: Option<String>,
    /// How the audit log is checkpointed and anchored (every N entries, every T
    /// seconds, the signing key's file, off-host checkpoint copies checked at start).
    pub audit: crate::tre::auditor::AuditorOptions,
}

/// Open and check the workspace, start the job workers, recover the jobs a previous
/// server left (running ones failed as interrupted, queued ones queued again: see
/// [`runner::recover`]), and build the state. Must be called inside a tokio runtime.
pub fn start(opts: &ServeOptions, clock: Arc<dyn Clock>) -> Result<Arc<App>, ServeError> {
    let ws = Workspace::open(&opts.workspace)?;
    ws.check_permissions()?;
    let auditor = Auditor::open(&ws, clock, opts.audit.clone())?;
    // Every action the log records since the previous start took effect or is rolled
    // back and recorded, before anything new happens.
    crate::tre::recover::reconcile(&ws, &auditor).map_err(|e| match e {
        crate::tre::recover::RecoverError::Audit(a) => ServeError::Audit(a),
    })?;
    // Exports under way finish or roll back, before anyone can ask again.
    crate::tre::release::recover(&ws, &auditor).map_err(ServeError::Release)?;
    let (queue, workers) = runner::start(
        Runner {
            ws: ws.clone(),
            auditor: auditor.clone(),
            exe: opts.exe.clone(),
            scheduler: opts.scheduler.clone(),
        },
        opts.workers,
    );
    runner::recover(&ws, &auditor, &queue)?;
    Ok(Arc::new(App {
        ws,
        schemas: SchemaSet::builtin(),
        auditor,
        queue,
        workers,
        limiter: limiter::Limiter::default(),
        releases: tokio::sync::Mutex::new(()),
    }))
}

/// Bind a loopback address.
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener, ServeError> {
    let io = |source| ServeError::Io {
        addr: listen.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    if !addr.ip().is_loopback() {
        return Err(ServeError::NotLoopback(addr));
    }
    Ok(listener)
}

/// [`serve_with`] with the default bounds of [`http::HttpOptions`].
pub async fn serve(
    state: Arc<App>,
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(
        state,
        router,
        listener,
        http::HttpOptions::default(),
        shutdown,
    )
    .await
}

/// Serve `router` (the API of [`app`], with the pages merged in by
/// [`crate::web::service`]) until `shutdown` completes, every route behind
/// [`http::guard_body`]; audit the start. At the stop: open requests get
/// `opts.shutdown` to finish, then their connections are dropped; the running jobs'
/// process groups are killed and their jobs recorded as failed ("the server stopped");
/// the stop is audited (with what was cut short) and a checkpoint written.
pub async fn serve_with(
    state: Arc<App>,
    router: Router,
    listener: tokio::net::TcpListener,
    opts: http::HttpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    state.auditor.record(
        EntryDraft::new("service", "serve.start")
            .detail("listen", addr.as_str())
            .detail(
                "checkpoint_key",
                if state.auditor.key_outside_workspace() {
                    "outside the workspace"
                } else {
                    "inside the workspace (give --checkpoint-key to keep it out of reach)"
                },
            ),
    )?;
    let router = router.layer(axum::middleware::from_fn_with_state(
        (state.clone(), opts.clone()),
        http::guard_body,
    ));
    let watcher =
        crate::transparency::alerts::Watcher::start(state.ws.clone(), state.auditor.clone())?;
    let served = http::accept_loop(router, listener, &opts, shutdown).await;
    watcher.stop();
    let jobs = state.workers.stop(opts.jobs_grace).await;
    for a in state.limiter.drain() {
        state.auditor.record(a.draft())?;
    }
    state.auditor.record(
        EntryDraft::new("service", "serve.stop")
            .detail("connections_dropped", served.dropped as u64)
            .detail("jobs_stopped", jobs as u64),
    )?;
    state.auditor.checkpoint()?;
    Ok(())
}
