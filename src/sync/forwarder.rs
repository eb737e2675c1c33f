//! The forwarding policy, on its own thread: connect with backoff and jitter, send the store's
//! patterns safety class first, in batches with a bounded window of unacknowledged messages,
//! delete what the broker acknowledged, drop (and count) what expired, and take signed rule
//! packs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::schema::{encode_batch, RulepackResult, Status, Topics, RULEPACK_RESULT_SCHEMA, STATUS_SCHEMA};
use super::{Link, LinkEvent, Token};
use crate::config::{rulepack, Board};
use crate::store::{now_ms, Priority, Store, StoreError, Stored};

/// Receives rule sets from accepted packs, to apply them to the running loop.
pub trait RulesSink: Send {
    fn apply(&mut self, board: &Board, version: u64) -> Result<(), String>;
}

#[derive(Clone)]
pub struct ForwarderConfig {
    pub device: String,
    pub topics: Topics,
    pub batch: usize,
    pub inflight: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub rulepack_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// The running profile: rule packs are validated against it.
    pub board: Board,
}

impl ForwarderConfig {
    /// Settings from the profile's `[sync]` section (which must exist).
    pub fn from_board(board: &Board) -> Result<Self, String> {
        let s = board.sync.as_ref().ok_or("the profile has no [sync] section")?;
        let keys = s
            .rulepack_keys
            .iter()
            .enumerate()
            .map(|(i, k)| rulepack::parse_public_key(k).map_err(|e| format!("sync.rulepack_keys[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            device: board.board.device_id.clone(),
            topics: Topics::new(&s.topic_prefix, &board.board.device_id),
            batch: s.batch,
            inflight: s.inflight,
            backoff_min: Duration::from_secs_f64(s.backoff_min_s),
            backoff_max: Duration::from_secs_f64(s.backoff_max_s),
            rulepack_keys: keys,
            board: board.clone(),
        })
    }
}

/// Counters for telemetry and tests; shared with whoever reports them.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    /// Messages and patterns the broker acknowledged.
    pub messages_acked: AtomicU64,
    pub patterns_acked: AtomicU64,
    pub expired: AtomicU64,
    pub rulepacks_accepted: AtomicU64,
    pub rulepacks_rejected: AtomicU64,
    pub store_errors: AtomicU64,
}

/// Store meta keys of the running rule pack.
pub const PACK_VERSION: &str = "rulepack.version";
pub const PACK_ENVELOPE: &str = "rulepack.envelope";

pub struct Forwarder<L: Link> {
    link: L,
    store: Store,
    cfg: ForwarderConfig,
    rules: Option<Box<dyn RulesSink>>,
    stats: Arc<SyncStats>,
    connecting: bool,
    connected: bool,
    attempt: u32,
    next_attempt: Instant,
    /// Unacknowledged batches by token.
    inflight: HashMap<Token, Vec<i64>>,
    /// Highest sequence number sent per class on this connection.
    cursor: [i64; 3],
    last_purge: Instant,
    pack_version: Option<u64>,
    pack_bytes: Option<Vec<u8>>,
    rng: u64,
    buf: Vec<Stored>,
}

impl<L: Link> Forwarder<L> {
    pub fn new(
        link: L,
        store: Store,
        cfg: ForwarderConfig,
        rules: Option<Box<dyn RulesSink>>,
    ) -> Result<Self, StoreError> {
        let pack_version = store.meta(PACK_VERSION)?.and_then(|v| v.parse().ok());
        let pack_bytes = store.meta(PACK_ENVELOPE)?.map(String::into_bytes);
        let now = Instant::now();
        Ok(Self {
            link,
            store,
            cfg,
            rules,
            stats: Arc::default(),
            connecting: false,
            connected: false,
            attempt: 0,
            next_attempt: now,
            inflight: HashMap::new(),
            cursor: [0; 3],
            last_purge: now - Duration::from_secs(3600),
            pack_version,
            pack_bytes,
            rng: now_ms() as u64 | 1,
            buf: Vec::new(),
        })
    }

    pub fn stats(&self) -> Arc<SyncStats> {
        self.stats.clone()
    }

    /// Runs until `stop`, then says goodbye on the status topic.
    pub fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.step(Duration::from_millis(20));
        }
        if self.connected {
            let payload = self.status("offline");
            if self.link.publish(&self.cfg.topics.status(), payload, true).is_ok() {
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until {
                    if let Some(LinkEvent::Acked(_)) = self.link.poll(Duration::from_millis(50)) {
                        break;
                    }
                }
            }
        }
        self.link.disconnect();
    }

    /// One round: (re)connect when due, handle link events for up to `wait`, send more.
    pub fn step(&mut self, wait: Duration) {
        // Offline too: what expired must not hold disk budget that fresh patterns need.
        if self.last_purge.elapsed() >= Duration::from_secs(1) {
            self.last_purge = Instant::now();
            if let Err(e) = self.purge() {
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("uplink: {e}");
            }
        }
        if !self.connecting && !self.connected && Instant::now() >= self.next_attempt {
            match self.link.connect() {
                Ok(()) => self.connecting = true,
                Err(e) => self.failed(&e.to_string()),
            }
        }
        if !self.connecting && !self.connected {
            std::thread::sleep(wait.min(self.next_attempt.saturating_duration_since(Instant::now())));
            return;
        }
        let until = Instant::now() + wait;
        let mut wait = wait;
        while let Some(ev) = self.link.poll(wait) {
            self.handle(ev);
            // Drain what is already there without waiting, then send.
            wait = Duration::ZERO;
            if Instant::now() >= until {
                break;
            }
        }
        if self.connected {
            if let Err(e) = self.send_more() {
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("uplink: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    fn handle(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Connected => {
                tracing::info!("uplink connected");
                self.connecting = false;
                self.connected = true;
                self.attempt = 0;
                self.cursor = [0; 3];
                self.inflight.clear();
                self.stats.connected.store(true, Ordering::Relaxed);
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                let payload = self.status("online");
                let topics = self.cfg.topics.clone();
                let subscribed = self
                    .link
                    .publish(&topics.status(), payload, true)
                    .and_then(|_| self.link.subscribe(&topics.rulepack()))
                    .and_then(|()| self.link.subscribe(topics.fleet_rulepack()));
                if let Err(e) = subscribed {
                    self.link.disconnect();
                    self.failed(&e.to_string());
                }
            }
            LinkEvent::Disconnected(why) => self.failed(&why),
            LinkEvent::Acked(token) => {
                if let Some(seqs) = self.inflight.remove(&token) {
                    match self.store.ack(&seqs) {
                        Ok(_) => {
                            self.stats.messages_acked.fetch_add(1, Ordering::Relaxed);
                            self.stats.patterns_acked.fetch_add(seqs.len() as u64, Ordering::Relaxed);
                        }
                        // Still in the store: sent again on the next connection.
                        Err(e) => {
                            self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("uplink: {e}");
                        }
                    }
                }
            }
            LinkEvent::Message { topic, payload } => {
                if topic == self.cfg.topics.rulepack() || topic == self.cfg.topics.fleet_rulepack() {
                    self.on_rulepack(&topic, &payload);
                }
            }
        }
    }

    /// The connection is gone or never came: forget what was in flight, retry later.
    fn failed(&mut self, why: &str) {
        if self.connected {
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.connecting = false;
        self.connected = false;
        self.inflight.clear();
        self.stats.connected.store(false, Ordering::Relaxed);
        let delay = self.backoff();
        self.attempt = self.attempt.saturating_add(1);
        self.next_attempt = Instant::now() + delay;
        tracing::warn!("uplink: {why}; retrying in {:.1} s", delay.as_secs_f64());
    }

    /// Exponential, capped, with jitter over the upper half so a fleet does not reconnect in step.
    fn backoff(&mut self) -> Duration {
        let base = self.cfg.backoff_min.as_secs_f64() * 2f64.powi(self.attempt.min(30) as i32);
        let capped = base.min(self.cfg.backoff_max.as_secs_f64());
        // xorshift64: enough randomness for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(capped * (0.5 + 0.5 * unit))
    }

    fn purge(&mut self) -> Result<(), StoreError> {
        let expired = self.store.purge_expired(now_ms())?;
        let n: u64 = expired.iter().sum();
        if n > 0 {
            self.stats.expired.fetch_add(n, Ordering::Relaxed);
            tracing::warn!("{n} patterns expired unsent (safety, event, telemetry: {expired:?})");
        }
        Ok(())
    }

    fn send_more(&mut self) -> Result<(), StoreError> {
        'window: while self.inflight.len() < self.cfg.inflight {
            let now = now_ms();
            for class in Priority::ALL {
                self.buf.clear();
                self.store.next_batch(
                    class,
                    self.cursor[class as usize],
                    self.cfg.batch,
                    now,
                    &mut self.buf,
                )?;
                let Some(last) = self.buf.last() else { continue };
                let last = last.seq;
                let payload = encode_batch(&self.cfg.device, self.store.generation(), &self.buf);
                match self.link.publish(&self.cfg.topics.patterns(class), payload, false) {
                    Ok(token) => {
                        self.inflight.insert(token, self.buf.iter().map(|p| p.seq).collect());
                        self.cursor[class as usize] = last;
                        continue 'window;
                    }
                    // The client's queue is full: try again next round.
                    Err(_) => break 'window,
                }
            }
            break;
        }
        Ok(())
    }

    fn status(&self, state: &str) -> Vec<u8> {
        serde_json::to_vec(&Status {
            schema: STATUS_SCHEMA,
            state,
            device: &self.cfg.device,
            generation: self.store.generation(),
            rulepack_version: self.pack_version,
        })
        .unwrap_or_default()
    }

    fn on_rulepack(&mut self, topic: &str, payload: &[u8]) {
        // An empty retained message clears the topic; the running pack redelivered on every
        // reconnect is nothing new.
        if payload.is_empty() || self.pack_bytes.as_deref() == Some(payload) {
            return;
        }
        let result = rulepack::open(payload, &self.cfg.rulepack_keys, &self.cfg.board, self.pack_version)
            .map_err(|e| (e.kind(), e.to_string()))
            .and_then(|(pack, board)| {
                if let Some(sink) = self.rules.as_mut() {
                    sink.apply(&board, pack.version).map_err(|e| ("apply", e))?;
                }
                Ok((pack.version, board))
            });
        let (accepted, reason, error) = match result {
            Ok((version, board)) => {
                tracing::info!("rule pack {version} from `{topic}` applied");
                self.stats.rulepacks_accepted.fetch_add(1, Ordering::Relaxed);
                self.pack_version = Some(version);
                self.pack_bytes = Some(payload.to_vec());
                self.cfg.board = board;
                let text = String::from_utf8_lossy(payload);
                if let Err(e) = self
                    .store
                    .set_meta(PACK_VERSION, &version.to_string())
                    .and_then(|()| self.store.set_meta(PACK_ENVELOPE, &text))
                {
                    tracing::error!("rule pack {version} applied but not saved: {e}");
                }
                (true, None, None)
            }
            Err((reason, error)) => {
                tracing::warn!("rule pack from `{topic}` rejected: {error}");
                self.stats.rulepacks_rejected.fetch_add(1, Ordering::Relaxed);
                (false, Some(reason), Some(error))
            }
        };
        let report = serde_json::to_vec(&RulepackResult {
            schema: RULEPACK_RESULT_SCHEMA,
            device: &self.cfg.device,
            accepted,
            running_version: self.pack_version,
            reason,
            error,
        })
        .unwrap_or_default();
        if let Err(e) = self.link.publish(&self.cfg.topics.rulepack_result(), report, true) {
            tracing::warn!("uplink: rule pack result not sent: {e}");
        }
    }
}
