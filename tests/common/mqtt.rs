//! A real MQTT broker for tests: a throw-away PKI made with rcgen, a mosquitto process on a
//! loopback port that demands client certificates, and the fleet-side consumer ("backend") that
//! the device's uplink talks to. Include it with `#[path = "common/mqtt.rs"] mod mqtt;`.
//!
//! Everything is real on purpose: TLS with mutual authentication, mosquitto's persistent
//! sessions and its persistence database across restarts. A mock broker would agree with
//! whatever the uplink assumes; mosquitto does not.
#![allow(dead_code)]

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::{Client, Connection, Event, Incoming, MqttOptions, Outgoing, QoS, TlsConfiguration, Transport};

/// How long the harness waits for anything the broker should do promptly (start, ConnAck,
/// SubAck, PubAck). Generous for a loaded CI machine; success returns as soon as it happens.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Short poll interval: waiting loops check often so that nothing sleeps longer than needed.
const POLL: Duration = Duration::from_millis(10);

/// Certificates and keys (PEM files in `dir`) for the broker and its clients.
pub struct Pki {
    pub dir: PathBuf,
    /// The fleet CA: the broker trusts clients it signed, clients trust the broker it signed.
    pub ca: PathBuf,
    /// The broker, valid for 127.0.0.1 and localhost.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The device, CN "field-7".
    pub device_cert: PathBuf,
    pub device_key: PathBuf,
    /// The fleet side, CN "backend".
    pub backend_cert: PathBuf,
    pub backend_key: PathBuf,
    /// Also CN "field-7" but signed by a different CA: an impostor the broker must refuse.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

/// A CA certificate (PEM) and the issuer that signs with it.
fn new_ca(cn: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// Writes `<name>.pem` and `<name>.key` for a leaf certificate signed by `issuer`.
fn write_leaf(
    dir: &Path,
    name: &str,
    cn: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

impl Pki {
    /// Generates a fresh PKI in `dir` (created if needed). Made at test time so that no
    /// private key is committed and nothing expires in the repository.
    pub fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let (ca_pem, ca) = new_ca("sideline test CA");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca_pem).unwrap();
        let (rogue_ca_pem, rogue_ca) = new_ca("sideline test CA");
        std::fs::write(dir.join("rogue-ca.pem"), rogue_ca_pem).unwrap();

        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (server_cert, server_key) =
            write_leaf(dir, "server", "broker", &["127.0.0.1", "localhost"], ServerAuth, &ca);
        let (device_cert, device_key) = write_leaf(dir, "device", "field-7", &[], ClientAuth, &ca);
        let (backend_cert, backend_key) = write_leaf(dir, "backend", "backend", &[], ClientAuth, &ca);
        let (rogue_cert, rogue_key) = write_leaf(dir, "rogue", "field-7", &[], ClientAuth, &rogue_ca);
        Pki {
            dir: dir.to_path_buf(),
            ca: ca_path,
            server_cert,
            server_key,
            device_cert,
            device_key,
            backend_cert,
            backend_key,
            rogue_cert,
            rogue_key,
        }
    }
}

/// A mosquitto process listening with mutual TLS on a loopback port.
pub struct Broker {
    pub port: u16,
    /// Behind a mutex only so that `is_running(&self)` can reap an exited process.
    child: Mutex<Option<Child>>,
    conf: PathBuf,
    dir: PathBuf,
}

/// The Debian package installs mosquitto in /usr/sbin, which is not on every user's PATH.
fn mosquitto_bin() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.is_file() {
        sbin
    } else {
        PathBuf::from("mosquitto")
    }
}

/// The last lines of a file, for panic messages.
fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A loopback port free now and never handed to another broker of this test process. The OS
/// picks it; mosquitto binds it a moment later (SO_REUSEADDR). Tests run in parallel threads:
/// without the set, two brokers could be given one port, one fails to bind, and its test talks
/// to the other's broker (and sees "connection refused" while that one restarts).
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Broker {
    /// Starts mosquitto with its configuration, log and persistence database in `dir`, on a
    /// free loopback port, and returns once the port accepts connections.
    pub fn start(pki: &Pki, dir: &Path) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "# Written by tests/common/mqtt.rs.
# Tests run as root (CI too): without this mosquitto drops to user `mosquitto`, which cannot
# write the persistence database or log in a root-owned temporary directory.
user root
per_listener_settings false
listener {port} 127.0.0.1
cafile {ca}
certfile {cert}
keyfile {key}
require_certificate true
# The client's CN becomes its username, so a certificate is the login: no password file, and
# anonymous (certificate-less) clients are still refused.
use_identity_as_username true
allow_anonymous false
# Sessions and queued QoS 1 messages survive restarts. SIGTERM (`stop`) writes the database,
# so no periodic autosave: rewriting a large backlog every interval would slow benchmarks.
persistence true
persistence_location {dir}/
autosave_interval 0
# No limit on messages queued for an offline persistent client (the default 1000 would drop
# some in a long benchmark) and many in flight so a large backlog drains quickly.
max_queued_messages 0
max_inflight_messages 1000
# Connections, refusals and subscriptions, but not every packet: a long benchmark would write
# several lines per message.
log_dest file {dir}/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
",
            ca = pki.ca.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
            dir = dir.display(),
        );
        std::fs::write(&conf, text).unwrap();
        let broker = Broker { port, child: Mutex::new(None), conf, dir: dir.to_path_buf() };
        broker.spawn();
        broker
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap()
    }

    fn spawn(&self) {
        let out = std::fs::File::create(self.dir.join("mosquitto.out")).unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("mosquitto not installed: run scripts/setup")
            }
            Err(e) => panic!("spawning mosquitto: {e}"),
        };
        *self.child() = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = self.child().as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let status = exited.map_or("still running".to_string(), |s| s.to_string());
                panic!(
                    "mosquitto did not come up on port {} ({status})\n--- output:\n{}\n--- log:\n{}",
                    self.port,
                    tail(&self.dir.join("mosquitto.out"), 20),
                    tail(&self.dir.join("mosquitto.log"), 20)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops mosquitto with SIGTERM, which makes it write its persistence database, and waits
    /// for it to exit (killing it if it takes longer than [`TIMEOUT`]).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child().take() else { return };
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mosquitto ignored SIGTERM for {TIMEOUT:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts mosquitto again on the same port with the same configuration, so it reloads the
    /// sessions and messages it saved when stopped.
    pub fn start_again(&mut self) {
        assert!(!self.is_running(), "start_again on a running broker");
        self.spawn();
    }

    /// Whether the mosquitto process is alive.
    pub fn is_running(&self) -> bool {
        self.child().as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The broker's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    /// Kills (no clean shutdown needed: the directory is about to be deleted) and reaps.
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Client options for `broker` with mutual TLS from the given files: the same rustls set-up
/// (`sideline::sync::tls::client_config`) the device uses.
pub fn client_options(broker: &Broker, id: &str, ca: &Path, cert: &Path, key: &Path) -> MqttOptions {
    let tls = sideline::sync::tls::client_config(ca, cert, key).unwrap_or_else(|e| panic!("{e}"));
    let mut opts = MqttOptions::new(id, "127.0.0.1", broker.port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    // rumqttc's default (10 KiB) is smaller than some payloads; mosquitto allows 256 MiB.
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts
}

/// Tries a connection with the given certificate and key: `Ok(())` once the broker sends a
/// successful ConnAck, `Err` with rumqttc's description if TLS or MQTT refuses it, or on timeout.
pub fn try_connect(broker: &Broker, ca: &Path, cert: &Path, key: &Path) -> Result<(), String> {
    let opts = client_options(broker, "probe", ca, cert, key);
    let (_client, mut connection) = Client::new(opts, 8);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(e) => return Err(format!("no ConnAck: {e:?}")),
        }
    }
}

/// One message the backend received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// What the backend's event-loop thread shares with the test.
#[derive(Default)]
struct Shared {
    messages: Vec<Msg>,
    /// A SubAck arrived since the last ConnAck.
    subscribed: bool,
    /// Packet id of the backend's last outgoing publish, and whether the broker acked it.
    sent: Option<u16>,
    acked: bool,
}

/// The fleet side: a persistent session (fixed client id, clean_session = false) subscribed
/// with QoS 1, so the broker queues messages for it while it is offline, even across broker
/// restarts. Messages are collected in order of arrival; QoS 1 means a redelivery after a
/// reconnect can appear twice.
pub struct Backend {
    client: Client,
    shared: Arc<Mutex<Shared>>,
    /// Serialises `publish` so the PubAck being waited for is unambiguous.
    publishing: Mutex<()>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Drives the backend's connection until it is told to stop: records messages and acks,
/// subscribes on the first ConnAck (and whenever the broker lost the session) and reconnects
/// every 50 ms while the broker is down.
fn backend_loop(
    mut connection: Connection,
    client: Client,
    filter: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
) {
    let mut first = true;
    loop {
        match connection.recv() {
            Ok(Ok(event)) => {
                let mut s = shared.lock().unwrap();
                match event {
                    // A resumed session keeps its subscription; subscribing again would make
                    // the broker resend every retained message on each reconnect.
                    Event::Incoming(Incoming::ConnAck(ack)) if ack.session_present && !first => {}
                    Event::Incoming(Incoming::ConnAck(_)) => {
                        first = false;
                        s.subscribed = false;
                        // try_: blocking here, on the thread that drains the queue, could deadlock.
                        client.try_subscribe(filter.as_str(), QoS::AtLeastOnce).unwrap();
                    }
                    Event::Incoming(Incoming::SubAck(_)) => s.subscribed = true,
                    Event::Incoming(Incoming::Publish(p)) => {
                        s.messages.push(Msg { topic: p.topic, payload: p.payload.to_vec(), retain: p.retain })
                    }
                    Event::Outgoing(Outgoing::Publish(pkid)) => s.sent = Some(pkid),
                    Event::Incoming(Incoming::PubAck(ack)) if s.sent == Some(ack.pkid) => s.acked = true,
                    Event::Outgoing(Outgoing::Disconnect) => return,
                    _ => {}
                }
            }
            Ok(Err(_)) => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => return,
        }
    }
}

/// Polls `done` every few milliseconds until it holds or `timeout` passes.
fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

impl Backend {
    /// Connects as "backend" and subscribes to `filter` with QoS 1; returns once the broker
    /// confirmed the subscription (messages queued for an earlier session arrive right after).
    pub fn connect(broker: &Broker, pki: &Pki, filter: &str) -> Backend {
        let mut opts = client_options(broker, "backend", &pki.ca, &pki.backend_cert, &pki.backend_key);
        opts.set_clean_session(false);
        let (client, connection) = Client::new(opts, 64);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (client, filter, shared, stop) =
                (client.clone(), filter.to_string(), shared.clone(), stop.clone());
            std::thread::spawn(move || backend_loop(connection, client, filter, shared, stop))
        };
        let backend = Backend { client, shared, publishing: Mutex::new(()), stop, thread: Some(thread) };
        assert!(
            poll_until(TIMEOUT, || backend.shared.lock().unwrap().subscribed),
            "backend not subscribed to {filter} within {TIMEOUT:?}; broker log:\n{}",
            tail(&broker.dir.join("mosquitto.log"), 20)
        );
        backend
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Msg> {
        self.shared.lock().unwrap().messages.clone()
    }

    /// Waits until `pred` holds for the messages received so far; false on timeout.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Msg]) -> bool) -> bool {
        poll_until(timeout, || pred(&self.shared.lock().unwrap().messages))
    }

    /// Publishes with QoS 1 and returns once the broker acknowledged it (PubAck).
    pub fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        let _one_at_a_time = self.publishing.lock().unwrap();
        {
            let mut s = self.shared.lock().unwrap();
            s.sent = None;
            s.acked = false;
        }
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).unwrap();
        assert!(
            poll_until(TIMEOUT, || self.shared.lock().unwrap().acked),
            "no PubAck for {topic} within {TIMEOUT:?}"
        );
    }
}

impl Drop for Backend {
    /// Disconnects cleanly (the broker keeps the session and queues for it) and joins the
    /// thread, so the next `Backend::connect` is not taken over by this one's reconnects.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
