//! `tre serve`: the research environment as an HTTP service (axum on tokio).
//!
//! Owns the HTTP API of the service contract (docs/service.md, HTTP API) as a thin
//! adapter over the action library ([`crate::tre::actions`]): [`app`] builds the one
//! router; [`App`] is the shared state (the actions' [`Tre`] and the job workers);
//! [`auth`] turns a bearer token into an actor; [`error`] maps every [`ActionError`] to
//! its response in one place; handlers live one file per resource ([`me`], [`jobs`],
//! [`releases`]) and only read the request, call one action and map its typed answer.
//! Actions audit themselves and their refusals; this module audits only what it refuses
//! before calling one ([`App::refuse`]). [`http`] is the connection layer (timeouts,
//! body limits, graceful shutdown with a deadline); [`serve_with`] ties it to the job
//! workers so a stop kills the running jobs and is audited and checkpointed. It never
//! uses the pages (`web`); the binary merges both routers. Danger: this is the
//! only process that reads and writes the workspace while people use it; it listens on
//! loopback only (put a TLS reverse proxy in front), and never returns row-level data.

pub mod alerts;
pub mod auth;
pub mod error;
pub mod http;
pub mod jobs;
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
use crate::tre::actions::{ActionError, Actor, Enqueue, Id, Tre};
use crate::tre::auditor::Auditor;
use crate::tre::workspace::{Workspace, WorkspaceError};

/// Shared state of the server: the actions' state, and the job workers it stops.
#[derive(Debug)]
pub struct App {
    /// What every action shares (also given to the pages).
    pub tre: Arc<Tre>,
    /// The job workers (stopped with the server).
    pub workers: Workers,
}

impl App {
    /// Audit a refusal by `actor` of `action` that this adapter decided before calling
    /// the action (a malformed body), and answer it.
    pub fn refuse(
        &self,
        actor: &Actor,
        action: &str,
        project: Option<&str>,
        err: ActionError,
    ) -> Response {
        self.tre
            .refusal(actor.user().as_str(), action, project, None, err)
            .into_response()
    }
}

/// The job runner's queue is where submitted jobs wait.
#[derive(Debug)]
struct Queue(JobQueue);

impl Enqueue for Queue {
    fn push(&self, project: Id, job: Id) -> Result<(), JobError> {
        self.0.push(project, job)
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
            "/api/projects/{p}/releases/{r}/versions",
            post(releases::resubmit),
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
        tre: Arc::new(Tre::new(ws, auditor, Box::new(Queue(queue)))),
        workers,
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
/// the binary) until `shutdown` completes, every route behind
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
    state.tre.auditor.record(
        EntryDraft::new("service", "serve.start")
            .detail("listen", addr.as_str())
            .detail(
                "checkpoint_key",
                if state.tre.auditor.key_outside_workspace() {
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
    let watcher = crate::transparency::alerts::Watcher::start(
        state.tre.ws.clone(),
        state.tre.auditor.clone(),
    )?;
    let served = http::accept_loop(router, listener, &opts, shutdown).await;
    watcher.stop();
    let jobs = state.workers.stop(opts.jobs_grace).await;
    for a in state.tre.limiter.drain() {
        state.tre.auditor.record(a.draft())?;
    }
    state.tre.auditor.record(
        EntryDraft::new("service", "serve.stop")
            .detail("connections_dropped", served.dropped as u64)
            .detail("jobs_stopped", jobs as u64),
    )?;
    state.tre.auditor.checkpoint()?;
    Ok(())
}
