//! Power-cut safety of the pattern store: `sideline store soak` is killed with SIGKILL at random
//! moments while writing; every batch it reported as committed must be in the store afterwards,
//! the store must open cleanly every time, and sequence numbers must keep rising (so
//! idempotency keys are never reused).
//!
//! 50 trials here; `STORE_KILL_TRIALS=1000 cargo test --release --test store_kill` for the long
//! run. `STORE_KILL_SEED` replays a run (the seed is printed).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sideline::store::{Store, StoreConfig};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn killed_writer_loses_no_committed_pattern() {
    let trials: u64 = std::env::var("STORE_KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed = std::env::var("STORE_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("STORE_KILL_SEED={seed} trials={trials}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut last_max = 0i64;
    let mut committed_total = 0u64;
    for trial in 0..trials {
        let batch = 1 + rng.below(128);
        let kill_after = Duration::from_micros(rng.below(60_000));
        let mut child = Command::new(env!("CARGO_BIN_EXE_sideline"))
            .args(["store", "soak", "--dir"])
            .arg(dir.path())
            .args(["--batch", &batch.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sideline store soak");
        let stdout = child.stdout.take().unwrap();
        // Kill on a timer while this thread reads what was reported.
        let pid = child.id() as libc::pid_t;
        let killer = std::thread::spawn(move || {
            let start = Instant::now();
            std::thread::sleep(kill_after);
            // SAFETY: plain kill(2) on our own child, which is not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            start.elapsed()
        });
        let mut committed: Vec<(i64, i64)> = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut it = line.split_whitespace().skip(1).map(|v| v.parse::<i64>().unwrap());
            committed.push((it.next().unwrap(), it.next().unwrap()));
        }
        killer.join().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success() || committed.is_empty(), "trial {trial}: soak exited on its own: {status}");

        let store = Store::open(dir.path(), StoreConfig::default()).unwrap_or_else(|e| {
            panic!("trial {trial} (seed {seed}): store does not open after SIGKILL: {e}")
        });
        let seqs = store.all_seqs().unwrap();
        let present: std::collections::HashSet<i64> = seqs.iter().copied().collect();
        for &(first, last) in &committed {
            assert!(first > last_max, "trial {trial}: sequence {first} reused (previous max {last_max})");
            for s in first..=last {
                assert!(present.contains(&s), "trial {trial} (seed {seed}): committed pattern {s} lost");
            }
            committed_total += (last - first + 1) as u64;
        }
        last_max = seqs.last().copied().unwrap_or(last_max).max(last_max);
    }
    eprintln!("{trials} kills, {committed_total} committed patterns, none lost");
    assert!(committed_total > 0, "no trial committed anything: the test proved nothing");
}
