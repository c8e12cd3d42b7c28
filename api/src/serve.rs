//! Serving the router on a listener, the way the binary and every in-process harness do.
//!
//! A hand-written accept loop over hyper's HTTP/1 connection builder rather than
//! `axum::serve`, because three defences need the connection itself:
//!
//! - a header-read timeout (hyper's own), so a client that connects and sends nothing, or half
//!   a request, is dropped before it reaches auth;
//! - an idle timeout: no byte either way for [`ApiConfig::idle_timeout`] closes the connection.
//!   SSE streams write a keep-alive every [`ApiConfig::keepalive`], so they stay open;
//! - a cap on open connections ([`ApiConfig::max_connections`]): at the cap the loop stops
//!   accepting, says so once in the log, and further clients wait in the listen backlog
//!   instead of exhausting file descriptors for everyone.
//!
//! [`ApiConfig::idle_timeout`]: crate::ApiConfig::idle_timeout
//! [`ApiConfig::keepalive`]: crate::ApiConfig::keepalive
//! [`ApiConfig::max_connections`]: crate::ApiConfig::max_connections

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::guard::MAX_HEADERS;
use crate::{AppState, router};

/// How long shutdown waits for connections to finish their current response.
const DRAIN: Duration = Duration::from_secs(5);
/// How long the loop pauses after a failed accept (e.g. EMFILE), so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves lpcmon on `listener` until `shutdown` resolves, then ends every SSE stream and
/// closes connections once their current response is written.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let config = state.config();
    let limits = Limits {
        header_read: config.header_read_timeout,
        idle: config.idle_timeout,
    };
    let max_connections = config.max_connections.max(1);
    let app = router(state.clone());
    let permits = Arc::new(Semaphore::new(max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    // Whether the loop is at the cap: logged once on the way in and once on the way out, not
    // once per client in a flood.
    let mut capped = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                if std::mem::take(&mut capped) {
                    tracing::info!(max_connections, "HTTP connections below the limit again");
                }
                permit
            }
            Err(_) => {
                if !std::mem::replace(&mut capped, true) {
                    tracing::warn!(
                        max_connections,
                        "HTTP connection limit reached: new clients wait in the listen backlog \
                         until a connection closes (--max-http-connections)"
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Events are small writes that must leave at once: without TCP_NODELAY, Nagle and
        // delayed ACKs held SSE frames back by up to ~40 ms (measured by the pipeline bench).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        connections.spawn(serve_connection(
            tcp,
            app.clone(),
            limits,
            closing.clone(),
            permit,
        ));
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    state.close_streams();
    closing_tx.send_replace(true);
    if tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::debug!(
            left = connections.len(),
            "closing connections still busy after the drain"
        );
        connections.shutdown().await;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read: Duration,
    idle: Duration,
}

async fn serve_connection(
    tcp: TcpStream,
    app: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let mut activity = Activity::new();
    let io = TokioIo::new(Watched {
        inner: tcp,
        moves: activity.counter(),
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        // Room beyond the guard's limit, so the guard answers (in JSON) before hyper does.
        .max_headers(MAX_HEADERS * 2);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut check = tokio::time::interval((limits.idle / 4).max(Duration::from_millis(50)));
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = closing.changed(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = check.tick() => {
                if activity.idle_at_check() >= limits.idle {
                    tracing::debug!(idle = ?limits.idle, "closing an idle HTTP connection");
                    return;
                }
            }
        }
    }
}

/// Whether a connection moved a byte lately. Reads and writes only bump a counter (no clock
/// read per write: a thousand SSE streams write a million times a second); the connection's
/// periodic check, every quarter of the idle timeout, notes when the counter last changed. So a
/// connection is closed between `idle` and `idle` plus one check period after its last byte.
struct Activity {
    moves: Arc<AtomicU64>,
    seen_moves: u64,
    seen_at: Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            moves: Arc::new(AtomicU64::new(0)),
            seen_moves: 0,
            seen_at: Instant::now(),
        }
    }

    fn counter(&self) -> Arc<AtomicU64> {
        self.moves.clone()
    }

    /// How long the counter has stood still, as of this check.
    fn idle_at_check(&mut self) -> Duration {
        let moves = self.moves.load(Ordering::Relaxed);
        if moves != self.seen_moves {
            self.seen_moves = moves;
            self.seen_at = Instant::now();
        }
        self.seen_at.elapsed()
    }
}

fn touch(moves: &AtomicU64) {
    moves.fetch_add(1, Ordering::Relaxed);
}

/// A TCP stream that records every read or write of at least one byte.
struct Watched {
    inner: TcpStream,
    moves: Arc<AtomicU64>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            touch(&self.moves);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            touch(&self.moves);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            touch(&self.moves);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
