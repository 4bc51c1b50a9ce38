//! A slow-client flood against the real `userns-labeler run` (default limits), all on
//! 127.0.0.1 and bounded in count and time: 300 TLS connections trickling a request head one
//! byte every 500 ms, 10 bodies of far more than the limit streamed in (chunked), 10 bodies
//! under the limit trickled slowly, 5 declaring 8 MiB. Meanwhile four clients keep sending
//! real AdmissionReviews over keep-alive TLS connections.
//!
//! Asserted: every admission is answered (200, allowed) during the flood, every flood
//! connection is closed by the timeouts or refused by the body limit, and the process' resident
//! memory stays below 200 MiB. Printed: admission latency (p50/p99) without and during the
//! flood, and VmRSS/VmHWM before, during and after.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use userns_labeler::webhook::{MUTATE_PODS_PATH, SelfSigned};
use userns_labeler_test_support::control_plane as common;
use userns_labeler_test_support::labeler::{self, Labeler};
use userns_labeler_test_support::webhook::{answer, https, pod, review};

/// The binary under test.
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");

const SLOW_HEADS: usize = 300;
const HUGE_BODIES: usize = 10;
const SLOW_BODIES: usize = 10;
const DECLARED_HUGE: usize = 5;
const ADMISSION_CLIENTS: usize = 4;
/// The binary's defaults.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const RSS_BOUND_KIB: u64 = 200 * 1024;

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Target {
    addr: SocketAddr,
    ca_pem: String,
    namespace: String,
}

impl Target {
    async fn tls(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(https::trusting(&self.ca_pem))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
    }
}

/// Admissions over one keep-alive connection per client until `stop` (or `count` each):
/// their latencies. Each must be answered 200 and allowed.
async fn admissions(target: Arc<Target>, stop: Arc<AtomicBool>, count: usize) -> Vec<Duration> {
    let clients = (0..ADMISSION_CLIENTS).map(|c| {
        let (target, stop) = (target.clone(), stop.clone());
        tokio::spawn(async move {
            let body = serde_json::to_vec(&review(
                "CREATE",
                &target.namespace,
                &pod(&format!("web-{c}")),
            ))
            .unwrap();
            let mut sender =
                https::connect(target.addr, "127.0.0.1", https::trusting(&target.ca_pem))
                    .await
                    .expect("admission connection");
            let mut latencies = Vec::new();
            while latencies.len() < count && !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, response) =
                    https::post(&mut sender, MUTATE_PODS_PATH, body.clone().into())
                        .await
                        .expect("admission answered");
                latencies.push(started.elapsed());
                assert_eq!(status, http::StatusCode::OK);
                let answer = answer(&response);
                assert!(answer.allowed);
                assert!(
                    answer.patch.is_some(),
                    "the pod was decided, not failed safe"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for client in clients.collect::<Vec<_>>() {
        all.extend(client.await.unwrap());
    }
    all.sort();
    all
}

/// How a flood connection ended, and after how long.
#[derive(Debug)]
struct Ended {
    kind: &'static str,
    answer: String,
    after: Duration,
}

/// Reads until the server closes; what it said.
async fn until_closed<R: tokio::io::AsyncRead + Unpin>(read: &mut R) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) if seen.len() < 4096 => seen.extend_from_slice(&buf[..n]),
            Ok(_) => {}
        }
    }
    String::from_utf8_lossy(&seen)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A head trickling in one byte every 500 ms.
async fn slow_head(target: Arc<Target>) -> Ended {
    let started = Instant::now();
    let stream = target.tls().await.expect("flood connection");
    let (mut read, mut write) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST {MUTATE_PODS_PATH} HTTP/1.1\r\nhost: webhook\r\n{}",
            "x-slow: 1\r\n".repeat(100)
        );
        for byte in head.as_bytes() {
            if write.write_all(&[*byte]).await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let answer = until_closed(&mut read).await;
    writer.abort();
    Ended {
        kind: "slow head",
        answer,
        after: started.elapsed(),
    }
}

/// A body streamed in `chunk`s every `pause`, declared with `length` (else chunked), up to
/// `total` bytes.
async fn slow_body(
    target: Arc<Target>,
    kind: &'static str,
    length: Option<usize>,
    chunk: usize,
    pause: Duration,
    total: usize,
) -> Ended {
    let started = Instant::now();
    let stream = target.tls().await.expect("flood connection");
    let (mut read, mut write) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let framing = match length {
            Some(n) => format!("content-length: {n}"),
            None => "transfer-encoding: chunked".to_string(),
        };
        let head = format!(
            "POST {MUTATE_PODS_PATH} HTTP/1.1\r\nhost: webhook\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
        );
        write.write_all(head.as_bytes()).await?;
        let data = vec![b' '; chunk];
        let mut sent = 0;
        while sent < total {
            if length.is_none() {
                write.write_all(format!("{chunk:x}\r\n").as_bytes()).await?;
            }
            write.write_all(&data).await?;
            if length.is_none() {
                write.write_all(b"\r\n").await?;
            }
            write.flush().await?;
            sent += chunk;
            tokio::time::sleep(pause).await;
        }
        std::io::Result::Ok(())
    });
    let answer = until_closed(&mut read).await;
    writer.abort();
    Ended {
        kind,
        answer,
        after: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_are_answered_and_memory_stays_bounded_during_a_slow_client_flood() {
    common::install_crypto_provider();
    let cp = common::shared();
    let admin = cp.client().await;
    let controller_ns = cp.namespace("flood").await;
    let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
    let dir = tempfile::tempdir().unwrap();
    let pair = SelfSigned::generate(&[]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    let labeler = Labeler::spawn(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "flood",
        &[
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ],
    );
    labeler.wait_ready(Duration::from_secs(30));
    let pid = labeler.pid();
    let target = Arc::new(Target {
        addr: labeler.webhook.parse().unwrap(),
        ca_pem: pair.ca_pem.clone(),
        namespace: controller_ns.to_string(),
    });

    // Without a flood.
    let idle = admissions(target.clone(), Arc::new(AtomicBool::new(false)), 100).await;
    let before = memory(pid);

    // The flood, and admissions until it is over.
    let started = Instant::now();
    let mut flood = Vec::new();
    for i in 0..SLOW_HEADS {
        flood.push(tokio::spawn(slow_head(target.clone())));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for _ in 0..HUGE_BODIES {
        // 64 MiB chunked, 64 KiB every 100 ms: passes the 4 MiB limit after about 6.5 s.
        let target = target.clone();
        flood.push(tokio::spawn(slow_body(
            target,
            "huge chunked body",
            None,
            64 * 1024,
            Duration::from_millis(100),
            64 << 20,
        )));
    }
    for _ in 0..SLOW_BODIES {
        // 3 MiB declared (under the limit), 32 KiB every 200 ms: not done within 10 s.
        let target = target.clone();
        flood.push(tokio::spawn(slow_body(
            target,
            "slow body",
            Some(3 << 20),
            32 * 1024,
            Duration::from_millis(200),
            3 << 20,
        )));
    }
    for _ in 0..DECLARED_HUGE {
        let target = target.clone();
        flood.push(tokio::spawn(slow_body(
            target,
            "8 MiB declared",
            Some(8 << 20),
            64 * 1024,
            Duration::from_millis(100),
            8 << 20,
        )));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(admissions(target.clone(), stop.clone(), usize::MAX));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak_rss = 0;
            while !stop.load(Ordering::Relaxed) {
                peak_rss = peak_rss.max(memory(pid).0);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak_rss
        })
    };
    let mut ended = Vec::new();
    for connection in flood {
        let end = tokio::time::timeout(Duration::from_secs(60), connection)
            .await
            .expect("a flood connection still open after 60 s")
            .unwrap();
        ended.push(end);
    }
    let flood_took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = during.await.unwrap();
    let peak_rss = sampler.await.unwrap();
    let (_, hwm_during) = memory(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = memory(pid);

    // Figures.
    let summary = |what: &str, l: &[Duration]| {
        println!(
            "{what}: {} admissions, p50 {:?}, p99 {:?}, max {:?}",
            l.len(),
            percentile(l, 0.5),
            percentile(l, 0.99),
            l.last().unwrap()
        )
    };
    summary("without a flood", &idle);
    summary("during the flood", &during);
    let mut kinds =
        std::collections::BTreeMap::<(&str, String), (usize, Duration, Duration)>::new();
    for end in &ended {
        let status = end
            .answer
            .split_whitespace()
            .nth(1)
            .unwrap_or("closed")
            .to_string();
        let entry = kinds
            .entry((end.kind, status))
            .or_insert((0, Duration::MAX, Duration::ZERO));
        entry.0 += 1;
        entry.1 = entry.1.min(end.after);
        entry.2 = entry.2.max(end.after);
    }
    for ((kind, status), (n, first, last)) in &kinds {
        println!("flood: {n} × {kind} ended with {status} after {first:?}..{last:?}");
    }
    println!(
        "memory (KiB): before VmRSS {} VmHWM {}; during peak VmRSS {peak_rss} VmHWM {hwm_during}; after VmRSS {} VmHWM {}; flood over after {flood_took:?}",
        before.0, before.1, after.0, after.1
    );

    // Behaviour.
    assert!(
        during.len() >= 50,
        "only {} admissions during the flood",
        during.len()
    );
    assert!(
        *during.last().unwrap() < REQUEST_TIMEOUT,
        "{:?}",
        during.last()
    );
    for end in &ended {
        let status = end.answer.split_whitespace().nth(1).unwrap_or("closed");
        match end.kind {
            "slow head" => {
                assert_eq!(status, "closed", "{end:?}");
                assert!(
                    end.after < HEADER_TIMEOUT + Duration::from_secs(5),
                    "{end:?}"
                );
            }
            "huge chunked body" | "8 MiB declared" => {
                assert_eq!(status, "413", "{end:?}")
            }
            _ => {
                assert_eq!(status, "408", "{end:?}");
                assert!(
                    end.after < REQUEST_TIMEOUT + Duration::from_secs(5),
                    "{end:?}"
                );
            }
        }
    }
    assert!(
        peak_rss < RSS_BOUND_KIB,
        "VmRSS {peak_rss} KiB during the flood"
    );
    assert!(hwm_during < RSS_BOUND_KIB, "VmHWM {hwm_during} KiB");
    labeler.stop();
}
