//! The metrics endpoint: a tiny HTTP/1.1 server on its own thread answering `GET /metrics` in
//! the Prometheus text format.
//!
//! One connection at a time, closed after each response, with read and write timeouts, so a
//! slow or silent client holds it for at most [`IO_TIMEOUT`] and never anything else: the
//! loop's numbers are atomics it only reads. The store backlog, the thermal state and the uplink
//! are read at scrape time, on this thread.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::metrics::Metrics;
use super::text::Writer;
use super::thermal::Thermal;
use crate::store::{Priority, Store, StoreConfig};
use crate::sync::SyncStats;

/// How long one client may take to send its request or take the response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8192;
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("metrics endpoint: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metrics endpoint: cannot start its thread: {0}")]
    Thread(std::io::Error),
}

/// What a scrape reports besides the loop's own numbers.
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub device: String,
    /// The uplink's counters, when the profile has `[sync]`.
    pub sync: Option<Arc<SyncStats>>,
    /// The pattern store, opened on the server thread at the first scrape.
    pub store: Option<(PathBuf, StoreConfig)>,
    /// Root of the sysfs tree the thermal state is read from (`/` on a device).
    pub fs_root: PathBuf,
}

pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port: see [`local_addr`](Self::local_addr)) and serves
    /// until [`stop`](Self::stop).
    pub fn start(addr: SocketAddr, sources: Sources) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(listener, &thread_stop, Scraper::new(sources)))
            .map_err(ServerError::Thread)?;
        Ok(Self { addr, stop, handle })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept; it sees the flag and returns.
        let _ = TcpStream::connect_timeout(&reachable(self.addr), Duration::from_secs(1));
        if self.handle.join().is_err() {
            tracing::error!("metrics thread panicked");
        }
    }
}

/// An address to connect to for one bound on `addr` (the wildcard is not connectable).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

fn serve(listener: TcpListener, stop: &AtomicBool, mut scraper: Scraper) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, &mut scraper) {
                    tracing::debug!("metrics client: {e}");
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin on it.
                tracing::warn!("metrics endpoint: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn answer(mut stream: TcpStream, scraper: &mut Scraper) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = read_head(&mut stream)?;
    let (status, body, extra) = match request_line(&head) {
        Some(("GET" | "HEAD", "/metrics")) => ("200 OK", scraper.scrape(), ""),
        Some((_, "/metrics")) => ("405 Method Not Allowed", "only GET\n".to_string(), "Allow: GET, HEAD\r\n"),
        Some(_) => ("404 Not Found", "not found: the metrics are at /metrics\n".to_string(), ""),
        None => ("400 Bad Request", "bad request\n".to_string(), ""),
    };
    let head_only = head.starts_with(b"HEAD ");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        if status.starts_with("200") { CONTENT_TYPE } else { "text/plain; charset=utf-8" },
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Reads up to the blank line ending the request head (a scrape has no body).
fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    Ok(head)
}

/// Method and path (query string dropped) of an HTTP/1.x request line.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

/// Builds one scrape's text from every source.
struct Scraper {
    src: Sources,
    store: Option<Store>,
    /// The last store error, logged once until it changes.
    store_error: Option<String>,
}

impl Scraper {
    fn new(src: Sources) -> Self {
        Self { src, store: None, store_error: None }
    }

    fn scrape(&mut self) -> String {
        let mut w = Writer::new();
        w.family("sideline_build_info", "gauge", "Version and device id of the running firmware.");
        w.sample(
            "sideline_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("device", &self.src.device)],
            1.0,
        );
        self.src.metrics.render(&mut w);
        self.render_store(&mut w);
        self.render_uplink(&mut w);
        Thermal::read(&self.src.fs_root).render(&mut w);
        w.finish()
    }

    fn render_store(&mut self, w: &mut Writer) {
        let Some((dir, cfg)) = &self.src.store else { return };
        if self.store.is_none() {
            match Store::open(dir, *cfg) {
                Ok(s) => self.store = Some(s),
                Err(e) => self.store_failed(e.to_string()),
            }
        }
        let read = self.store.as_ref().map(|s| s.backlog().and_then(|b| Ok((b, s.losses()?))));
        let (backlog, losses) = match read {
            Some(Ok(v)) => {
                self.store_error = None;
                v
            }
            Some(Err(e)) => {
                // Reopened at the next scrape.
                self.store = None;
                self.store_failed(e.to_string());
                w.single("sideline_store_readable", "gauge", STORE_READABLE, 0.0);
                return;
            }
            None => {
                w.single("sideline_store_readable", "gauge", STORE_READABLE, 0.0);
                return;
            }
        };
        w.single("sideline_store_readable", "gauge", STORE_READABLE, 1.0);
        w.family("sideline_store_backlog", "gauge", "Patterns in the store waiting for upstream, by class.");
        for p in Priority::ALL {
            w.sample("sideline_store_backlog", &[("class", p.name())], backlog.count[p as usize] as f64);
        }
        w.single(
            "sideline_store_backlog_bytes",
            "gauge",
            "Accounted size of the waiting patterns (against [storage] budget_mb).",
            backlog.bytes as f64,
        );
        w.family(
            "sideline_store_evicted_total",
            "counter",
            "Patterns evicted unsent to stay in budget, by class.",
        );
        for p in Priority::ALL {
            w.sample(
                "sideline_store_evicted_total",
                &[("class", p.name())],
                losses.evicted[p as usize] as f64,
            );
        }
        w.family("sideline_store_expired_total", "counter", "Patterns expired unsent, by class.");
        for p in Priority::ALL {
            w.sample(
                "sideline_store_expired_total",
                &[("class", p.name())],
                losses.expired[p as usize] as f64,
            );
        }
    }

    fn store_failed(&mut self, e: String) {
        if self.store_error.as_deref() != Some(&e) {
            tracing::warn!("metrics endpoint: {e}");
            self.store_error = Some(e);
        }
    }

    fn render_uplink(&self, w: &mut Writer) {
        w.single(
            "sideline_uplink_configured",
            "gauge",
            "1 when the profile has [sync] (an uplink to the fleet broker).",
            self.src.sync.is_some() as u8 as f64,
        );
        let connected = self.src.sync.as_ref().is_some_and(|s| s.connected.load(Ordering::Relaxed));
        w.single(
            "sideline_uplink_connected",
            "gauge",
            "1 while the uplink is connected.",
            connected as u8 as f64,
        );
        let Some(s) = &self.src.sync else { return };
        let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed) as f64;
        for (name, help, v) in [
            ("sideline_uplink_connects_total", "Connections made.", &s.connects),
            ("sideline_uplink_disconnects_total", "Connections lost.", &s.disconnects),
            ("sideline_uplink_messages_acked_total", "Messages the broker acknowledged.", &s.messages_acked),
            ("sideline_uplink_patterns_acked_total", "Patterns the broker acknowledged.", &s.patterns_acked),
            ("sideline_uplink_expired_total", "Patterns that expired before they could be sent.", &s.expired),
            ("sideline_rulepacks_accepted_total", "Rule packs accepted and applied.", &s.rulepacks_accepted),
            ("sideline_rulepacks_rejected_total", "Rule packs rejected.", &s.rulepacks_rejected),
            ("sideline_uplink_store_errors_total", "Store errors on the uplink thread.", &s.store_errors),
        ] {
            w.single(name, "counter", help, load(v));
        }
    }
}

const STORE_READABLE: &str = "1 when the pattern store could be read for this scrape.";

/// Fetches `http://addr/metrics` (for `sideline status` and tests): the body of a 200, else an
/// error naming the status.
pub fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&reachable(addr), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("no HTTP response head"))?;
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad("no HTTP status"))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(store: Option<(PathBuf, StoreConfig)>) -> MetricsServer {
        let sources = Sources {
            metrics: Arc::new(Metrics::new()),
            device: "t-1".into(),
            sync: None,
            store,
            fs_root: PathBuf::from("/nonexistent-root"),
        };
        MetricsServer::start("127.0.0.1:0".parse().unwrap(), sources).unwrap()
    }

    #[test]
    fn answers_metrics_404s_the_rest_and_survives_a_silent_client() {
        let dir = tempfile::tempdir().unwrap();
        let s = server(Some((dir.path().join("state"), StoreConfig::default())));
        let addr = s.local_addr();
        // A client that connects and says nothing holds the server for IO_TIMEOUT at most.
        let silent = TcpStream::connect(addr).unwrap();
        let t = std::time::Instant::now();
        let (code, body) = fetch(addr, "/metrics", Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < IO_TIMEOUT + Duration::from_secs(1), "{:?}", t.elapsed());
        drop(silent);
        assert_eq!(code, 200);
        let samples = super::super::text::parse(&body).unwrap();
        let has = |n: &str| samples.iter().any(|s| s.name == n);
        assert!(
            has("sideline_frames_total") && has("sideline_store_backlog") && has("sideline_uplink_connected")
        );
        assert_eq!(fetch(addr, "/", Duration::from_secs(2)).unwrap().0, 404);
        assert_eq!(fetch(addr, "/metrics?x=1", Duration::from_secs(2)).unwrap().0, 200);
        // Garbage is answered, not fatal.
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.write_all(b"\x16\x03\x01 hello\r\n\r\n").unwrap();
        let mut reply = String::new();
        raw.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        s.stop();
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(), "closed after stop");
    }

    #[test]
    fn request_lines() {
        assert_eq!(request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(request_line(b"GET /metrics?a=b HTTP/1.0\n\n"), Some(("GET", "/metrics")));
        assert_eq!(request_line(b"GET /metrics\r\n"), None);
        assert_eq!(request_line(b"GET /metrics SPDY/3\r\n"), None);
    }
}
