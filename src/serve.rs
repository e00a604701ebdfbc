//! The HTTP accept loop of a node: hyper's HTTP/1 server with the limits
//! `axum::serve` does not set. A connection must send a complete request
//! head within [`ConnLimits::header_read_timeout`] (also between requests
//! on a kept-alive connection, so idle connections are closed), and the
//! number of open connections is capped per node and per client address;
//! connections over a cap are closed at once. Shutdown stops accepting,
//! lets the requests in hand finish, and returns.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::Recover;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Longest a request may take before it is answered 408 (the call timeout
/// ceiling plus slack); the presence stream is exempt, it never ends.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

/// Connection limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Open connections per node.
    pub max_connections: usize,
    /// Open connections per client IP address.
    pub max_connections_per_ip: usize,
    /// Time a connection has to send a request head, and longest idle time
    /// between requests.
    pub header_read_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            max_connections_per_ip: 4096,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Open connections per address; a slot is given back when its guard drops.
#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().recover();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

fn take_slot(counts: &Arc<Mutex<Counts>>, ip: IpAddr, limits: &ConnLimits) -> Option<Slot> {
    let mut c = counts.lock().recover();
    let for_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
    if c.total >= limits.max_connections || for_ip >= limits.max_connections_per_ip {
        return None;
    }
    c.total += 1;
    *c.per_ip.entry(ip).or_insert(0) += 1;
    Some(Slot {
        counts: counts.clone(),
        ip,
    })
}

/// Serves `app` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause, do not spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(slot) = take_slot(&counts, peer.ip(), &limits) else {
            debug!(peer = %peer, "connection refused: connection limit reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Requests in hand finish; the caller bounds how long it waits.
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a one-route app with `limits` on a loopback port.
    async fn start(limits: ConnLimits) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, app, limits, stopped));
        (addr, stop)
    }

    /// Reads until the server closes the connection; the bytes read.
    async fn read_to_close(
        stream: &mut tokio::net::TcpStream,
        within: Duration,
    ) -> Option<Vec<u8>> {
        let mut all = Vec::new();
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(all),
                Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    #[tokio::test]
    async fn silent_and_idle_connections_are_closed_after_the_header_read_timeout() {
        let limits = ConnLimits {
            header_read_timeout: Duration::from_millis(300),
            ..ConnLimits::default()
        };
        let (addr, _stop) = start(limits).await;
        // Connects and sends nothing.
        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(
            read_to_close(&mut silent, Duration::from_secs(10))
                .await
                .is_some(),
            "a silent connection must be closed"
        );
        // One request, then idle on the kept-alive connection.
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = read_to_close(&mut idle, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&answer.expect("an idle connection must be closed"))
            .to_string();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn a_connection_over_the_per_address_cap_is_closed_at_once() {
        let limits = ConnLimits {
            max_connections_per_ip: 2,
            ..ConnLimits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).await.expect("answer");
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            held.push(stream);
        }
        let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = third.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let answer = read_to_close(&mut third, Duration::from_secs(5)).await;
        assert_eq!(
            answer.as_deref(),
            Some(&b""[..]),
            "closed without an answer"
        );
        drop(held);
    }

    #[test]
    fn slots_are_capped_per_address_and_in_total_and_given_back() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let limits = ConnLimits {
            max_connections: 3,
            max_connections_per_ip: 2,
            header_read_timeout: Duration::from_secs(1),
        };
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let a1 = take_slot(&counts, a, &limits).expect("first");
        let _a2 = take_slot(&counts, a, &limits).expect("second");
        assert!(take_slot(&counts, a, &limits).is_none(), "per-address cap");
        let _b1 = take_slot(&counts, b, &limits).expect("other address");
        assert!(take_slot(&counts, b, &limits).is_none(), "total cap");
        drop(a1);
        assert!(take_slot(&counts, b, &limits).is_some(), "slot given back");
    }
}
