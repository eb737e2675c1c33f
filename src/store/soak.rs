//! A store workload for crash tests and benchmarks: patterns of every class, written as fast
//! as the disk allows, each batch reported only once it is durable.

use std::io::Write;
use std::path::Path;

use super::{NewPattern, Priority, Store, StoreConfig, StoreError};

/// A pattern of realistic size; every seventh is safety, every third an event.
pub fn pattern(n: u64) -> NewPattern {
    let priority = match n {
        n if n % 7 == 0 => Priority::Safety,
        n if n % 3 == 0 => Priority::Event,
        _ => Priority::Telemetry,
    };
    let body = format!(
        r#"{{"type":"soak","n":{n},"rule":"road","state":"raised","track":{},"at":{{"x":{}.5,"y":118.25}},"note":"a pattern of about the size of an alert event"}}"#,
        n % 97,
        n % 768
    );
    NewPattern { priority, kind: "soak", capture_us: n * 33_333, body }
}

/// Appends `count` patterns (0: until killed) in batches, writing `committed <first> <last>`
/// to `out` after each batch is on disk.
pub fn run(
    dir: &Path,
    cfg: StoreConfig,
    batch: usize,
    count: u64,
    out: &mut impl Write,
) -> Result<(), StoreError> {
    let mut store = Store::open(dir, cfg)?;
    let mut buf = Vec::with_capacity(batch);
    let mut n = 0u64;
    while count == 0 || n < count {
        buf.clear();
        let upto = if count == 0 { n + batch as u64 } else { (n + batch as u64).min(count) };
        buf.extend((n..upto).map(pattern));
        n = upto;
        if let Some((first, last)) = store.append(&buf)? {
            // Nowhere to report to any more (the test killed its reader): stop.
            if writeln!(out, "committed {first} {last}").and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    }
    Ok(())
}
