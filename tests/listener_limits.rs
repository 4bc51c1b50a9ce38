//! The listeners' limits, in process over real sockets on 127.0.0.1: the webhook's HTTPS
//! server (`serve_tls`) and the admin server (`admin::serve`) with small limits. A slow request
//! head is cut off by the header-read timeout, a connection that sends nothing after the TLS
//! handshake too; a `Content-Length` over the body limit is refused before the body is sent, a
//! streamed body as soon as it passes the limit; a slow body ends with 408; connections over the
//! cap are closed at once, and served again once others close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use userns_labeler::admin::{self, AdminState, Readiness};
use userns_labeler::capability::DriverTable;
use userns_labeler::config::TableState;
use userns_labeler::controller::ControllerMetrics;
use userns_labeler::keys::Keys;
use userns_labeler::limits::Limits;
use userns_labeler::webhook::{
    AdmissionSettings, MAX_BODY_BYTES, MUTATE_PODS_PATH, SelfSigned, ServerTls, serve_tls,
};
use userns_labeler_test_support::webhook::*;

const HEADER_TIMEOUT: Duration = Duration::from_millis(400);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(800);

fn limits(max_connections: usize) -> Limits {
    Limits {
        header_read_timeout: HEADER_TIMEOUT,
        request_timeout: REQUEST_TIMEOUT,
        max_connections,
        max_requests: 4,
        max_body_bytes: MAX_BODY_BYTES,
    }
}

struct Webhook {
    addr: SocketAddr,
    ca_pem: String,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn webhook(limits: Limits) -> Webhook {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pair = SelfSigned::generate(&[]).unwrap();
    let tls = ServerTls::from_pem(&pair.cert_pem, &pair.key_pem)
        .await
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let settings = AdmissionSettings {
        limits,
        ..AdmissionSettings::default()
    };
    let state = state(storage_world(&Keys::default()));
    tokio::spawn(serve_tls(listener, tls, state, settings, shutdown.clone()));
    Webhook {
        addr,
        ca_pem: pair.ca_pem,
        _shutdown: shutdown.drop_guard(),
    }
}

impl Webhook {
    async fn tls(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        TlsConnector::from(https::trusting(&self.ca_pem))
            .connect(name, tcp)
            .await
    }

    /// One admission over a new connection: its status.
    async fn admit(&self) -> Result<http::StatusCode, https::Error> {
        let mut sender =
            https::connect(self.addr, "127.0.0.1", https::trusting(&self.ca_pem)).await?;
        let body = serde_json::to_vec(&review("CREATE", "app", &pod("web"))).unwrap();
        let (status, _) = https::post(&mut sender, MUTATE_PODS_PATH, body.into()).await?;
        Ok(status)
    }
}

/// Reads until the peer closes (or fails); everything read.
async fn read_to_close<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection is still open after {within:?}"
    );
    String::from_utf8_lossy(&seen).into_owned()
}

/// Writes `head` one byte at a time, `pause` apart, until the write fails (the server closed)
/// or the head is sent.
async fn trickle<S: AsyncWrite + Unpin>(stream: &mut S, head: &[u8], pause: Duration) -> usize {
    for (sent, byte) in head.iter().enumerate() {
        if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
            return sent;
        }
        tokio::time::sleep(pause).await;
    }
    head.len()
}

/// A request head trickling in never completes: the connection is closed once the header-read
/// timeout has passed, though bytes keep arriving. So is a connection that sends nothing after
/// its TLS handshake, and an idle keep-alive connection after a request.
#[tokio::test]
async fn a_slow_request_head_is_cut_off_by_the_header_read_timeout() {
    let webhook = webhook(limits(16)).await;
    let head = format!(
        "POST {MUTATE_PODS_PATH} HTTP/1.1\r\nhost: webhook\r\n{}",
        "x-slow: 1\r\n".repeat(40)
    );
    let started = Instant::now();
    let stream = webhook.tls().await.unwrap();
    let (mut read, mut write) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        trickle(&mut write, head.as_bytes(), Duration::from_millis(20)).await
    });
    let answer = read_to_close(&mut read, Duration::from_secs(5)).await;
    let closed_after = started.elapsed();
    assert!(closed_after >= HEADER_TIMEOUT, "{closed_after:?}");
    assert!(closed_after < HEADER_TIMEOUT * 4, "{closed_after:?}");
    assert!(!answer.contains("200 OK"), "{answer}");
    writer.abort();
    println!("slow head: closed after {closed_after:?}");

    // Nothing at all after the handshake.
    let started = Instant::now();
    let mut silent = webhook.tls().await.unwrap();
    read_to_close(&mut silent, Duration::from_secs(5)).await;
    let closed_after = started.elapsed();
    assert!(closed_after < HEADER_TIMEOUT * 4, "{closed_after:?}");

    // An admission, then the connection idles: closed, and the next connection is served.
    let mut stream = webhook.tls().await.unwrap();
    let body = serde_json::to_vec(&review("CREATE", "app", &pod("web"))).unwrap();
    let request = format!(
        "POST {MUTATE_PODS_PATH} HTTP/1.1\r\nhost: webhook\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let answer = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert_eq!(webhook.admit().await.unwrap(), http::StatusCode::OK);
}

/// A `Content-Length` over the limit is answered 413 at once, none of the body sent.
#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let webhook = webhook(limits(16)).await;
    let mut stream = webhook.tls().await.unwrap();
    let head = format!(
        "POST {MUTATE_PODS_PATH} HTTP/1.1\r\nhost: webhook\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        100 * 1024 * 1024
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        started.elapsed() < REQUEST_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
}

/// A chunked body (no `Content-Length`) streaming far past the limit: 413 as soon as the limit
/// is passed, with little more than the limit sent, and the connection closed.
#[tokio::test]
async fn a_streamed_body_over_the_limit_is_refused_as_it_arrives() {
    let webhook = webhook(limits(16)).await;
    let stream = webhook.tls().await.unwrap();
    let (mut read, mut write) = tokio::io::split(stream);
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST {MUTATE_PODS_PATH} HTTP/1.1\r\nhost: webhook\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        // 64 MiB, 16 times the limit.
        for _ in 0..1024 {
            write
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            write.write_all(&chunk).await?;
            write.write_all(b"\r\n").await?;
            counted.fetch_add(chunk.len(), Ordering::Relaxed);
        }
        write.write_all(b"0\r\n\r\n").await?;
        std::io::Result::Ok(())
    });
    let answer = read_to_close(&mut read, Duration::from_secs(10)).await;
    let at_answer = sent.load(Ordering::Relaxed);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // What the client wrote includes what sits in the socket buffers (on loopback, autotuned
    // up to about 6 MiB received and 4 MiB sent): far below the 64 MiB offered.
    assert!(at_answer < MAX_BODY_BYTES + 12 * 1024 * 1024, "{at_answer}");
    let finished = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer stops once the connection is closed")
        .unwrap();
    assert!(finished.is_err(), "the whole 64 MiB body was accepted");
    println!(
        "streamed body: 413 after {} KiB sent, writer stopped at {} KiB",
        at_answer / 1024,
        sent.load(Ordering::Relaxed) / 1024
    );
}

/// A body that trickles in: 408 once the request timeout has passed.
#[tokio::test]
async fn a_slow_body_is_cut_off_by_the_request_timeout() {
    let webhook = webhook(limits(16)).await;
    let stream = webhook.tls().await.unwrap();
    let (mut read, mut write) = tokio::io::split(stream);
    let head = format!(
        "POST {MUTATE_PODS_PATH} HTTP/1.1\r\nhost: webhook\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    );
    write.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let writer =
        tokio::spawn(
            async move { trickle(&mut write, &[b' '; 1000], Duration::from_millis(20)).await },
        );
    let answer = read_to_close(&mut read, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(elapsed >= REQUEST_TIMEOUT, "{elapsed:?}");
    assert!(elapsed < REQUEST_TIMEOUT * 4, "{elapsed:?}");
    writer.abort();
}

/// With the cap reached, a new connection is closed at once (its TLS handshake fails) while
/// the open ones are still served; once one closes, new connections are served again.
#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let webhook = webhook(limits(3)).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(webhook.tls().await.unwrap());
    }
    let started = Instant::now();
    let refused = webhook.tls().await;
    assert!(refused.is_err(), "a fourth connection was accepted");
    assert!(
        started.elapsed() < HEADER_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert!(webhook.admit().await.is_err());
    // One of the open connections is served.
    let stream = &mut open[0];
    let body = serde_json::to_vec(&review("CREATE", "app", &pod("web"))).unwrap();
    let request = format!(
        "POST {MUTATE_PODS_PATH} HTTP/1.1\r\nhost: webhook\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let answer = read_to_close(stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // Its permit is back once it is closed.
    drop(open.remove(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match webhook.admit().await {
            Ok(status) => {
                assert_eq!(status, http::StatusCode::OK);
                break;
            }
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("no connection served after one closed: {error}"),
        }
    }
}

async fn admin_server(limits: Limits) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let caches = caches(vec![], vec![], vec![], vec![]);
    let table = TableState::channel(DriverTable::defaults());
    let shutdown = CancellationToken::new();
    let readiness = Readiness::track(caches.clone(), table, shutdown.clone());
    let state = Arc::new(AdminState {
        readiness,
        registry: Default::default(),
        metrics: ControllerMetrics::default(),
        caches,
        keys: Keys::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin::serve(listener, state, limits, shutdown.clone()));
    (addr, shutdown.drop_guard())
}

/// The admin server: a slow head is cut off, connections over the cap are closed at once,
/// a body over its limit is refused before it is read, `/livez` answers throughout.
#[tokio::test]
async fn the_admin_server_has_the_same_limits() {
    let (addr, _shutdown) = admin_server(limits(2)).await;
    let livez = || async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        read_to_close(&mut stream, Duration::from_secs(5)).await
    };
    assert!(livez().await.starts_with("HTTP/1.1 200 OK"));

    let started = Instant::now();
    let slow = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = slow.into_split();
    let writer =
        tokio::spawn(
            async move { trickle(&mut write, &[b'G'; 200], Duration::from_millis(20)).await },
        );
    // While the slow one is open, one more connection fits, a third does not.
    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut third = TcpStream::connect(addr).await.unwrap();
    let refused = read_to_close(&mut third, Duration::from_secs(1)).await;
    assert_eq!(refused, "");
    second
        .write_all(b"GET /livez HTTP/1.1\r\nhost: admin\r\ncontent-length: 100000000\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut second, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    read_to_close(&mut read, Duration::from_secs(5)).await;
    let closed_after = started.elapsed();
    assert!(closed_after >= HEADER_TIMEOUT, "{closed_after:?}");
    assert!(closed_after < HEADER_TIMEOUT * 4, "{closed_after:?}");
    writer.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !livez().await.starts_with("HTTP/1.1 200 OK") {
        assert!(
            Instant::now() < deadline,
            "/livez not served after the others closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
