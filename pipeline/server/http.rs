//! The HTTP connection layer of `tre serve`: our own accept loop over hyper, with every
//! time and size bound a half-open or hostile client could otherwise stretch forever.
//!
//! Owns how connections are accepted, read, and ended: a header read timeout (which in
//! hyper also bounds how long an idle keep-alive connection waits for its next request),
//! a body size limit (413, audited as a refusal) and a body read timeout (408, audited)
//! applied to every route by [`guard_body`] before any handler runs, the client's address
//! ([`axum::extract::ConnectInfo`]) on every request, and a graceful shutdown with a
//! deadline after which the remaining connections are dropped. Danger: no timeout cancels
//! a running handler (it may have audited an action whose effect it is writing); only
//! reading the request is bounded. Dropping a connection at the shutdown deadline can
//! stop a handler only at an `.await`, and the handlers await only before their audit
//! entry (the release lock), never between it and its effect: keep it so. Nothing here
//! reads a token or a body's content.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

use super::App;
use crate::tre::actions::ActionError;

/// The largest request body any route accepts: a job's SQL (64 KiB) and purpose, a
/// release's texts, or the same as a form (urlencoded, up to three times longer).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The time and size bounds of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Time to receive a request's whole header; also how long an idle keep-alive
    /// connection is kept open waiting for its next request.
    pub header_read: Duration,
    /// Time to receive a request's whole body.
    pub body_read: Duration,
    /// The largest body accepted (413 above it).
    pub max_body_bytes: usize,
    /// At shutdown, how long open requests may take to finish before their connections
    /// are dropped.
    pub shutdown: Duration,
    /// At shutdown, how long the job workers get to record the jobs they were running.
    pub jobs_grace: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            max_body_bytes: MAX_BODY_BYTES,
            shutdown: Duration::from_secs(10),
            jobs_grace: Duration::from_secs(5),
        }
    }
}

/// What the accept loop did, for the stop's audit entry.
#[derive(Debug, Default, Clone, Copy)]
pub struct Served {
    /// Connections still open at the shutdown deadline, dropped.
    pub dropped: usize,
}

/// Middleware on every route: read the whole body within its time and size bounds
/// before the handler runs, refusing (and auditing, as `anonymous`: the token is not
/// looked at) a body over the limit with 413 and a slow one with 408.
pub async fn guard_body(
    State((app, opts)): State<(Arc<App>, HttpOptions)>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let limit = opts.max_body_bytes;
    let refuse = |err: ActionError| {
        let route = format!("{} {}", parts.method, super::route_of(&parts));
        app.tre
            .refusal("anonymous", "request", None, Some(route), err)
            .into_response()
    };
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return refuse(ActionError::TooLarge { limit });
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| ActionError::BadBody {
                problem: "the body could not be read (the connection broke)".into(),
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(ActionError::TooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    let bytes = match tokio::time::timeout(opts.body_read, read).await {
        Err(_) => {
            return refuse(ActionError::SlowBody {
                seconds: opts.body_read.as_secs(),
            });
        }
        Ok(Err(e)) => return refuse(e),
        Ok(Ok(b)) => b,
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Accept connections on `listener` and serve `router` (with [`guard_body`] already
/// applied) until `shutdown` completes; then stop accepting, let open requests finish
/// for `opts.shutdown`, and drop the connections still open.
pub async fn accept_loop(
    router: Router,
    listener: tokio::net::TcpListener,
    opts: &HttpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Served {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, never spin or stop.
                    eprintln!("tre serve: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = router
            .clone()
            .map_request(move |mut r: Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                r
            });
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        conns.spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let mut served = Served::default();
    if tokio::time::timeout(opts.shutdown, graceful.shutdown())
        .await
        .is_err()
    {
        while conns.try_join_next().is_some() {}
        served.dropped = conns.len();
        conns.abort_all();
    }
    while conns.join_next().await.is_some() {}
    served
}
