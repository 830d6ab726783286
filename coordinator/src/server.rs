//! Serving connections: HTTP/1.1 by hyper, with the bound axum's own
//! `serve` does not set: a client has [`HEADER_READ_TIMEOUT`] to send a
//! request's headers, from the moment the connection is ready for one (its
//! opening, or the end of the previous answer), so neither a slow-headers
//! client nor an idle keep-alive connection holds a connection forever.
//! (The SDK's client drops idle connections sooner, so that it does not
//! reuse one the coordinator is closing.) Shutdown is graceful: stop
//! accepting, let every connection finish the request it is serving, then
//! return.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tower::ServiceExt;

/// How long a client may take to send a request's headers, and how long a
/// keep-alive connection may wait for its next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `stop` resolves, then waits for the
/// connections to finish their requests.
pub async fn serve<L>(listener: L, router: Router, stop: impl Future<Output = ()>)
where
    L: axum::serve::Listener,
{
    serve_with(listener, router, stop, HEADER_READ_TIMEOUT).await;
}

/// [`serve`] with another header-read timeout (tests).
pub async fn serve_with<L>(mut listener: L, router: Router, stop: impl Future<Output = ()>, header_timeout: Duration)
where
    L: axum::serve::Listener,
{
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    tokio::pin!(stop);
    loop {
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let service = TowerToHyperService::new(
            router.clone().map_request(|req: axum::http::Request<Incoming>| req.map(axum::body::Body::new)),
        );
        let io = TokioIo::new(io);
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_slow_to_send_its_headers_is_disconnected_and_others_are_served() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let stop = tokio_util::sync::CancellationToken::new();
        let server =
            tokio::spawn(serve_with(listener, router, stop.clone().cancelled_owned(), Duration::from_millis(300)));

        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.expect("write");
        let mut fast = tokio::net::TcpStream::connect(addr).await.expect("connect");
        fast.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut answer = String::new();
        fast.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");

        // The slow one is closed once its time is up (hyper may answer 408 first).
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the slow connection was closed");
        let text = String::from_utf8_lossy(&rest);
        assert!(rest.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("stops").expect("no panic");
    }
}
