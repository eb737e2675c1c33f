//! Store and uplink benchmarks: durable patterns per second (batched, against one fsync per
//! pattern as the reference), recent-alert lookups (cache against the same question asked of
//! SQLite), and the drain of a 100k backlog to a real Mosquitto over mutual TLS.
//!
//! `cargo bench --bench store` for the figures in BENCHMARKS.md. Under `cargo test` (no
//! `--bench` argument) it runs the same code on small sizes, so it cannot rot.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/mqtt.rs"]
mod mqtt;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sideline::clock::MonoTime;
use sideline::config::Board;
use sideline::geometry::Point;
use sideline::rules::AlertState;
use sideline::store::cache::{Recent, RecentAlerts};
use sideline::store::{soak, Store, StoreConfig};
use sideline::sync::mqtt::{MqttLink, MqttSettings};
use sideline::sync::{Forwarder, ForwarderConfig};

struct Sizes {
    patterns: u64,
    unbatched: u64,
    lookups: usize,
    backlog: u64,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes { patterns: 200_000, unbatched: 2_000, lookups: 200_000, backlog: 100_000 }
    } else {
        Sizes { patterns: 5_000, unbatched: 100, lookups: 5_000, backlog: 2_000 }
    };
    println!("store benchmarks ({})", if full { "full" } else { "smoke run: sizes reduced" });
    write_rate(&sizes);
    lookups(&sizes);
    drain(&sizes);
}

fn write_rate(sizes: &Sizes) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig { budget_bytes: i64::MAX, ..StoreConfig::default() };
    let rate = |batch: usize, n: u64| {
        let sub = dir.path().join(format!("b{batch}"));
        let mut store = Store::open(&sub, cfg).unwrap();
        let patterns: Vec<_> = (0..n).map(soak::pattern).collect();
        let t = Instant::now();
        for chunk in patterns.chunks(batch) {
            store.append(chunk).unwrap();
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let reference = rate(1, sizes.unbatched);
    println!("\ndurable writes (WAL, synchronous=FULL: on disk when append returns)");
    println!("  {:<28} {:>12.0} patterns/s   (reference)", "1 per transaction", reference);
    for batch in [64, 256, 1024] {
        let r = rate(batch, sizes.patterns);
        println!(
            "  {:<28} {:>12.0} patterns/s   {:>6.1}x",
            format!("{batch} per transaction"),
            r,
            r / reference
        );
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn lookups(sizes: &Sizes) {
    // A full ring: 1024 recent alerts over 50 tracks and 4 rules.
    let mut cache = RecentAlerts::with_capacity(1024);
    for i in 0..1024u64 {
        cache.push(Recent {
            rule: (i % 4) as usize,
            track: (i % 50) as u32,
            state: if i % 3 == 0 { AlertState::Cleared } else { AlertState::Raised },
            at: Point { x: (i % 700) as f32, y: (i % 500) as f32 },
            ts: MonoTime::from_nanos(i * 33_000_000),
        });
    }
    let mut times = Vec::with_capacity(sizes.lookups);
    let mut found = 0usize;
    for i in 0..sizes.lookups {
        let (rule, track) = (i % 4, (i * 7 % 60) as u32);
        let t = Instant::now();
        found += cache.last(rule, track).is_some() as usize;
        found += cache
            .raised_near(rule, 999, Point { x: (i % 700) as f32, y: 100.0 }, 40.0, MonoTime::from_nanos(0))
            .is_some() as usize;
        times.push(t.elapsed());
    }
    times.sort();
    // The same "last alert of this rule for this track" asked of the durable store.
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let patterns: Vec<_> = (0..1024).map(soak::pattern).collect();
    store.append(&patterns).unwrap();
    let db = rusqlite::Connection::open(store.path()).unwrap();
    let mut q = db
        .prepare(
            "SELECT seq FROM patterns WHERE json_extract(body, '$.track') = ?1 ORDER BY seq DESC LIMIT 1",
        )
        .unwrap();
    let n = (sizes.lookups / 20).max(100);
    let mut sql_times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let _: Option<i64> = q.query_row([(i % 97) as i64], |r| r.get(0)).ok();
        sql_times.push(t.elapsed());
    }
    sql_times.sort();
    println!("\nrecent-alert lookups ({found} hits; cache: last() + raised_near() over a full 1024 ring)");
    println!(
        "  cache   p50 {:>8.2} µs  p99 {:>8.2} µs  max {:>8.2} µs",
        us(percentile(&times, 0.5)),
        us(percentile(&times, 0.99)),
        us(*times.last().unwrap())
    );
    println!(
        "  SQLite  p50 {:>8.2} µs  p99 {:>8.2} µs  (reference: the same question of the store; p99 ratio {:.0}x)",
        us(percentile(&sql_times, 0.5)),
        us(percentile(&sql_times, 0.99)),
        us(percentile(&sql_times, 0.99)) / us(percentile(&times, 0.99)).max(1e-3)
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn drain(sizes: &Sizes) {
    let dir = tempfile::tempdir().unwrap();
    let pki = mqtt::Pki::generate(&dir.path().join("pki"));
    let broker = mqtt::Broker::start(&pki, &dir.path().join("broker"));
    let backend = mqtt::Backend::connect(&broker, &pki, "sideline/v1/bench-1/patterns/#");
    let profile = common::sim_profile(dir.path(), |text| {
        let text = text.replace(r#"device_id = "sim-0001""#, r#"device_id = "bench-1""#);
        format!(
            "{text}\n[sync]\nhost = \"127.0.0.1\"\nport = {}\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            broker.port,
            pki.ca.display(),
            pki.device_cert.display(),
            pki.device_key.display()
        )
    });
    let board = Board::load(&profile).unwrap();
    let store_dir = board.storage.path.clone();
    let mut store =
        Store::open(&store_dir, StoreConfig { budget_bytes: i64::MAX, ..StoreConfig::default() }).unwrap();
    let patterns: Vec<_> = (0..sizes.backlog).map(soak::pattern).collect();
    for chunk in patterns.chunks(1024) {
        store.append(chunk).unwrap();
    }
    let bytes = store.backlog().unwrap().bytes;
    let s = board.sync.as_ref().unwrap();
    let cfg = ForwarderConfig::from_board(&board).unwrap();
    println!("\nbacklog drain to Mosquitto over mutual TLS (batch {}, window {})", s.batch, s.inflight);
    let link = MqttLink::new(MqttSettings {
        host: s.host.clone(),
        port: s.port,
        client_id: "bench-1".into(),
        tls: sideline::sync::tls::client_config(&pki.ca, &pki.device_cert, &pki.device_key).unwrap(),
        keep_alive: Duration::from_secs(10),
        inflight: s.inflight as u16,
        last_will: None,
    });
    let forwarder =
        Forwarder::new(link, Store::open(&store_dir, StoreConfig::default()).unwrap(), cfg, None).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = Instant::now();
    let handle = std::thread::spawn(move || forwarder.run(&flag));
    while store.backlog().unwrap().count.iter().sum::<u64>() > 0 {
        assert!(t.elapsed() < Duration::from_secs(600), "drain stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    let delivered = backend.wait_for(Duration::from_secs(30), |m| {
        m.iter().map(|m| m.payload.windows(7).filter(|w| w == b"\"key\":\"").count() as u64).sum::<u64>()
            >= sizes.backlog
    });
    println!(
        "  {} patterns ({:.1} MB accounted) acknowledged in {:.2} s: {:.0} patterns/s, {:.1} MB/s; backend got all: {}",
        sizes.backlog,
        bytes as f64 / 1e6,
        secs,
        sizes.backlog as f64 / secs,
        bytes as f64 / 1e6 / secs,
        delivered
    );
    assert!(delivered, "the backend did not receive every pattern");
}
