//! Store-and-forward against a real broker: Mosquitto over mutual TLS with certificates made
//! at test time, stopped and started under the device's feet.

mod common;
#[path = "common/mqtt.rs"]
mod mqtt;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde_json::Value;
use sideline::config::{rulepack, Board};
use sideline::store::{soak, Store, StoreConfig};
use sideline::sync::mqtt::{MqttLink, MqttSettings};
use sideline::sync::{Forwarder, ForwarderConfig, RulesSink, SyncStats, PACK_VERSION};

use mqtt::{Backend, Broker, Msg, Pki};

const DEVICE: &str = "field-7";

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// The simulated board, pointed at `broker`, with the test's rule pack key.
fn board(dir: &Path, pki: &Pki, broker: &Broker) -> Board {
    let public = base64_encode(signing_key().verifying_key().as_bytes());
    let path = common::sim_profile(dir, |text| {
        let text = text.replace(r#"device_id = "sim-0001""#, &format!(r#"device_id = "{DEVICE}""#));
        format!(
            "{text}\n[sync]\nhost = \"127.0.0.1\"\nport = {}\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             backoff_min_s = 0.05\nbackoff_max_s = 0.4\nbatch = 100\ninflight = 8\n\
             rulepack_keys = [\"{public}\"]\n",
            broker.port,
            pki.ca.display(),
            pki.device_cert.display(),
            pki.device_key.display()
        )
    });
    let board = Board::load(&path).unwrap();
    assert_eq!(board.board.device_id, DEVICE, "device id rewritten");
    board
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Records what the forwarder hands to the loop.
#[derive(Clone, Default)]
struct Applied(Arc<Mutex<Vec<(u64, Board)>>>);

impl RulesSink for Applied {
    fn apply(&mut self, board: &Board, version: u64) -> Result<(), String> {
        self.0.lock().unwrap().push((version, board.clone()));
        Ok(())
    }
}

struct Device {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    stats: Arc<SyncStats>,
}

impl Device {
    fn start(board: &Board, pki: &Pki, store_dir: &Path, sink: Applied) -> Device {
        let cfg = ForwarderConfig::from_board(board).unwrap();
        let s = board.sync.as_ref().unwrap();
        let link = MqttLink::new(MqttSettings {
            host: s.host.clone(),
            port: s.port,
            client_id: DEVICE.into(),
            tls: sideline::sync::tls::client_config(&pki.ca, &pki.device_cert, &pki.device_key).unwrap(),
            keep_alive: Duration::from_secs(5),
            inflight: s.inflight as u16,
            last_will: Some((cfg.topics.status(), b"{\"state\":\"offline\"}".to_vec())),
        });
        let store = Store::open(store_dir, StoreConfig::default()).unwrap();
        let forwarder = Forwarder::new(link, store, cfg, Some(Box::new(sink))).unwrap();
        let stats = forwarder.stats();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || forwarder.run(&flag));
        Device { stop, handle: Some(handle), stats }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Every pattern upstream, in arrival order: (key, class).
fn received(msgs: &[Msg]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in msgs.iter().filter(|m| m.topic.contains("/patterns/")) {
        let v: Value = serde_json::from_slice(&m.payload).expect("batch is JSON");
        assert_eq!(v["schema"], "sideline.patterns/1");
        let class = v["class"].as_str().unwrap().to_string();
        assert!(m.topic.ends_with(&class), "{} carries {class}", m.topic);
        for p in v["patterns"].as_array().unwrap() {
            out.push((p["key"].as_str().unwrap().to_string(), class.clone()));
        }
    }
    out
}

fn unique_keys(msgs: &[Msg]) -> HashSet<String> {
    received(msgs).into_iter().map(|(k, _)| k).collect()
}

fn keys_of(generation: &str, seqs: impl IntoIterator<Item = i64>) -> HashSet<String> {
    seqs.into_iter().map(|s| format!("{DEVICE}:{generation}:{s}")).collect()
}

#[test]
fn backlog_from_an_outage_arrives_complete_and_safety_first() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"));
    let mut broker = Broker::start(&pki, &dir.path().join("broker"));
    let backend = Backend::connect(&broker, &pki, &format!("sideline/v1/{DEVICE}/#"));
    let board = board(dir.path(), &pki, &broker);
    broker.stop();

    // Produced while the broker is down.
    let store_dir = dir.path().join("store");
    let mut store = Store::open(&store_dir, StoreConfig::default()).unwrap();
    let batch: Vec<_> = (0..700).map(soak::pattern).collect();
    store.append(&batch).unwrap();
    let generation = store.generation().to_string();
    let produced = keys_of(&generation, store.all_seqs().unwrap());
    let device = Device::start(&board, &pki, &store_dir, Applied::default());
    std::thread::sleep(Duration::from_millis(600));
    assert!(!device.stats.connected.load(Ordering::Relaxed));
    assert!(store.backlog().unwrap().count.iter().sum::<u64>() == 700, "nothing leaves without a broker");

    broker.start_again();
    let all = backend.wait_for(Duration::from_secs(20), |m| unique_keys(m).len() >= produced.len());
    let got = received(&backend.messages());
    assert!(all, "{} of {} patterns arrived", unique_keys(&backend.messages()).len(), produced.len());
    assert_eq!(got.iter().map(|(k, _)| k.clone()).collect::<HashSet<_>>(), produced);
    // The whole backlog was there at connect: classes arrive in priority order.
    let rank = |c: &str| ["safety", "event", "telemetry"].iter().position(|x| *x == c).unwrap();
    let ranks: Vec<usize> = got.iter().map(|(_, c)| rank(c)).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "priority order violated: {ranks:?}");
    // Deleted locally once acknowledged.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.backlog().unwrap().count.iter().sum::<u64>() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(store.backlog().unwrap().count, [0, 0, 0]);
    // The device said it is online, retained.
    let status = backend.messages().into_iter().find(|m| m.topic.ends_with("/status")).expect("status");
    let status: Value = serde_json::from_slice(&status.payload).unwrap();
    assert_eq!(status["state"], "online");
}

#[test]
fn broker_restarts_during_production_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"));
    let mut broker = Broker::start(&pki, &dir.path().join("broker"));
    let backend = Backend::connect(&broker, &pki, &format!("sideline/v1/{DEVICE}/patterns/#"));
    let board = board(dir.path(), &pki, &broker);
    let store_dir = dir.path().join("store");
    let device = Device::start(&board, &pki, &store_dir, Applied::default());

    // The producer: batches of 10 every 3 ms, as the recorder would write them.
    let producing = Arc::new(AtomicBool::new(true));
    let flag = producing.clone();
    let writer_dir = store_dir.clone();
    let producer = std::thread::spawn(move || {
        let mut store = Store::open(&writer_dir, StoreConfig::default()).unwrap();
        let mut seqs = Vec::new();
        let mut n = 0;
        while flag.load(Ordering::Relaxed) {
            let batch: Vec<_> = (n..n + 10).map(soak::pattern).collect();
            n += 10;
            let (first, last) = store.append(&batch).unwrap().unwrap();
            seqs.extend(first..=last);
            std::thread::sleep(Duration::from_millis(3));
        }
        (store.generation().to_string(), seqs)
    });
    for i in 0..5 {
        // Up long enough for the device to get back on (backoff is at most 0.4 s here).
        std::thread::sleep(Duration::from_millis(600 + 100 * (i % 3)));
        broker.stop();
        std::thread::sleep(Duration::from_millis(150 + 120 * (i % 2)));
        broker.start_again();
    }
    std::thread::sleep(Duration::from_millis(300));
    producing.store(false, Ordering::Relaxed);
    let (generation, seqs) = producer.join().unwrap();
    let produced = keys_of(&generation, seqs);
    assert!(produced.len() > 1000, "only {} produced", produced.len());

    let all = backend.wait_for(Duration::from_secs(30), |m| unique_keys(m).len() >= produced.len());
    let got = received(&backend.messages());
    let unique: HashSet<String> = got.iter().map(|(k, _)| k.clone()).collect();
    let missing = produced.difference(&unique).count();
    assert!(all && missing == 0, "{missing} of {} patterns never arrived", produced.len());
    assert!(unique.is_subset(&produced), "upstream got keys nobody produced");
    // Duplicates are allowed (at least once) and carry the same key: count them.
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for (k, _) in &got {
        *counts.entry(k).or_default() += 1;
    }
    let dups: u32 = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "{} produced, {} received, {} duplicates, {} connects, {} connection losses",
        produced.len(),
        got.len(),
        dups,
        device.stats.connects.load(Ordering::Relaxed),
        device.stats.disconnects.load(Ordering::Relaxed)
    );
    // The link really broke under the producer, several times (a restart that falls into the
    // device's backoff costs it no connection, so not necessarily all five).
    let breaks = device.stats.disconnects.load(Ordering::Relaxed);
    assert!(breaks >= 3, "only {breaks} connection losses: the test did not exercise outages");
}

/// Publishes `pack` retained on the device's rule pack topic and waits for a new result.
fn send_pack(backend: &Backend, envelope: &[u8]) -> Value {
    let results = |m: &[Msg]| m.iter().filter(|m| m.topic.ends_with("/rulepack/result")).count();
    let before = results(&backend.messages());
    backend.publish(&format!("sideline/v1/{DEVICE}/rulepack"), envelope, true);
    assert!(
        backend.wait_for(Duration::from_secs(10), |m| results(m) > before),
        "no rule pack result for {}",
        String::from_utf8_lossy(envelope)
    );
    let last = backend.messages().into_iter().rfind(|m| m.topic.ends_with("/rulepack/result"));
    serde_json::from_slice(&last.unwrap().payload).unwrap()
}

fn pack(version: u64, polygon: &str) -> String {
    format!(
        "version = {version}\ndescription = \"test\"\n\n[[rules.zone_incursion]]\nname = \"pitch-{version}\"\n\
         polygon = {polygon}\nseverity = \"critical\"\noutputs = [\"log\"]\n"
    )
}

const SQUARE: &str = "[[0, 0], [100, 0], [100, 100], [0, 100]]";

#[test]
fn rule_packs_bad_ones_rejected_good_ones_applied() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"));
    let broker = Broker::start(&pki, &dir.path().join("broker"));
    let backend = Backend::connect(&broker, &pki, &format!("sideline/v1/{DEVICE}/rulepack/result"));
    let board = board(dir.path(), &pki, &broker);
    let store_dir = dir.path().join("store");
    let applied = Applied::default();
    let _device = Device::start(&board, &pki, &store_dir, applied.clone());
    let key = signing_key();
    let version_saved =
        || Store::open(&store_dir, StoreConfig::default()).unwrap().meta(PACK_VERSION).unwrap();

    // A good pack is applied and saved.
    let r = send_pack(&backend, &rulepack::sign(&pack(2, SQUARE), &key));
    assert_eq!(r["accepted"], true, "{r}");
    assert_eq!(r["running_version"], 2);
    {
        let applied = applied.0.lock().unwrap();
        assert_eq!(applied.len(), 1);
        assert_eq!(applied[0].0, 2);
        assert_eq!(applied[0].1.rules.zone_incursion[0].name, "pitch-2");
    }
    assert_eq!(version_saved().as_deref(), Some("2"));

    let rejected = |envelope: Vec<u8>, reason: &str, says: &str| {
        let r = send_pack(&backend, &envelope);
        assert_eq!(r["accepted"], false, "{r}");
        assert_eq!(r["reason"], reason, "{r}");
        assert!(r["error"].as_str().unwrap().contains(says), "{r}");
        assert_eq!(r["running_version"], 2, "{r}");
        assert_eq!(applied.0.lock().unwrap().len(), 1, "nothing changed");
        assert_eq!(version_saved().as_deref(), Some("2"), "nothing changed");
    };
    // Signed by someone else.
    rejected(
        rulepack::sign(&pack(3, SQUARE), &SigningKey::from_bytes(&[9u8; 32])),
        "bad_signature",
        "signature",
    );
    // Tampered after signing.
    let mut v: Value = serde_json::from_slice(&rulepack::sign(&pack(3, SQUARE), &key)).unwrap();
    v["pack"] = Value::String(v["pack"].as_str().unwrap().replace("100]", "900]"));
    rejected(serde_json::to_vec(&v).unwrap(), "bad_signature", "signature");
    // Older than the running one.
    rejected(rulepack::sign(&pack(1, SQUARE), &key), "stale", "1");
    // Not a pack at all.
    rejected(b"{\"format\": \"sideline-rulepack/1\", \"pack\": 5}".to_vec(), "malformed", "");
    // A zone with two corners.
    rejected(
        rulepack::sign(&pack(4, "[[0, 0], [10, 10]]"), &key),
        "invalid",
        "rules.zone_incursion[0].polygon",
    );

    // And a newer good one still goes through.
    let r = send_pack(&backend, &rulepack::sign(&pack(5, SQUARE), &key));
    assert_eq!(r["accepted"], true, "{r}");
    assert_eq!(applied.0.lock().unwrap().last().unwrap().0, 5);
}
