//! The one HTTP listener: `/metrics`, `/healthz` and `/readyz`.
//!
//! Plain HTTP/1.1 on the config's `http_address` (meant for the node's loopback or the pod's
//! own address under a DaemonSet). Bounded like everything else: a few connections at once,
//! each given a few seconds.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::Ops;
use crate::core::Inbox;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 8;
/// How long one connection may take.
const CONNECTION_BOUND: Duration = Duration::from_secs(10);
/// How long the core's event loop may take to answer before `/healthz` calls it stuck.
const LOOP_BOUND: Duration = Duration::from_secs(1);

/// Binds `address` (synchronously, so a bad address is reported at once).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Serves `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, ops: Arc<Ops>, inbox: Inbox) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "http listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ops = Arc::clone(&ops);
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let ops = Arc::clone(&ops);
                let inbox = inbox.clone();
                async move { Ok::<_, Infallible>(answer(&ops, &inbox, &req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_BOUND, conn).await {
                Ok(Err(e)) => debug!(error = %e, "http listener: connection failed"),
                Err(_) => debug!("http listener: connection took too long"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

const PLAIN: &str = "text/plain; charset=utf-8";

async fn answer<B>(ops: &Ops, inbox: &Inbox, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ops.encode(),
        ),
        "/readyz" => {
            if ops.ready() {
                text(StatusCode::OK, PLAIN, "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    "not registered with the runtime and synchronized\n".into(),
                )
            }
        }
        "/healthz" => health(ops, inbox).await,
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

async fn health(ops: &Ops, inbox: &Inbox) -> Response<Full<Bytes>> {
    if let Some(age) = ops.oldest_request() {
        if age > ops.stuck_after() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!(
                    "a runtime request has been in the plugin for {:.1}s (more than twice the runtime's timeout)\n",
                    age.as_secs_f64()
                ),
            );
        }
    }
    match tokio::time::timeout(LOOP_BOUND, inbox.status()).await {
        Ok(Some(_)) => text(StatusCode::OK, PLAIN, "ok\n".into()),
        Ok(None) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "the event loop has ended\n".into(),
        ),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            format!("the event loop did not answer within {LOOP_BOUND:?}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let code = buf[9..12].parse().unwrap();
        let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (code, body)
    }

    #[tokio::test]
    async fn serves_metrics_readiness_and_health() {
        let ops = Arc::new(Ops::new());
        // A core whose loop is stopped: health says so.
        let (inbox, inlet) = crate::core::channel();
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::clone(&ops), inbox.clone()));

        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("nri_lifecycle_build_info"), "{body}");
        assert_eq!(get(addr, "/readyz").await.0, 503);
        ops.configured(2000);
        ops.synchronized();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/nope").await.0, 404);

        // Nobody takes inputs: the loop does not answer within its bound.
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503, "{body}");
        // An ended loop is unhealthy too.
        drop(inlet);
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!((code, body.as_str()), (503, "the event loop has ended\n"));
        server.abort();
    }
}
