//! Spoken keywords on the device: voice segments to speech-to-text to a keyword alert.
//!
//! Why a thread of its own: transcribing a segment takes 10-90 ms (more on a busy Jetson), and
//! the microphone thread must hand every 32 ms chunk to the whistle and thunder detectors on
//! time. So the microphone thread only copies each finished segment of a voice rule that a
//! keyword rule listens to into a [`SegmentQueue`], and the speech thread ([`spawn`]) owns the
//! model ([`SpeechToText`]), transcribes, and raises and clears the keyword alerts.
//!
//! Why this queue: its buffers are made once, each as long as the longest segment a voice rule
//! hands over, so the microphone thread copies into memory that exists and allocates nothing.
//! It is bounded: when the speech thread falls behind and every buffer waits, the oldest waiting
//! segment is dropped (the newest speech matters most) and counted. The lock is held only to
//! move a buffer in or out, never while transcribing.
//!
//! Timing: a raise is stamped with the segment's `end` (the audio that decided it) and decided
//! after transcription, so its latency is the speech-to-text latency after the utterance ended.
//! The alert stays raised `hold_s` after the end of the last segment that said a keyword
//! (another hit while raised extends it; it is not raised again), then clears: [`Keywords`]
//! holds that logic with time as an argument, and the speech thread waits on the queue with a
//! timeout so that the clear goes out on time. `sideline scenarios` runs the same
//! [`Listener`] (and so [`Keywords`]), transcribing synchronously.
//!
//! Joining: the voice rule ends a segment at a pause as short as its hangover, so one call can
//! arrive in pieces ("Help!" and "Somebody help me, ..."), each too short for Moonshine. Each
//! segment is transcribed alone and, when it starts within the rule's `join_gap_ms` of the end
//! of the previous segment of the same voice rule, joined to that one ([`Joiner`]) too; a
//! keyword in either transcript counts. A keyword the joined audio repeats from the earlier
//! piece does not raise again: it extends the hold from this segment's end.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::keyword::KeywordSpotter;
use super::stt::{self, SpeechToText};
use super::vad::VoiceSegment;
use crate::clock::MonoTime;
use crate::rules::{AlertState, AudioRule};

/// Segment buffers in circulation: one being transcribed, the rest waiting.
pub const QUEUE_DEPTH: usize = 4;
/// The speech thread looks at its stop flag at least this often.
const POLL: Duration = Duration::from_millis(100);

/// One keyword rule, resolved against the voice rules of its rule set.
#[derive(Clone, Debug)]
pub struct KeywordRule {
    /// Index of the keyword rule (its alerts).
    pub rule: usize,
    pub name: String,
    /// Index of the voice rule whose segments it hears.
    pub voice: usize,
    pub spotter: KeywordSpotter,
    pub hold: Duration,
    /// A segment starting within this of the previous one's end is heard joined to it too.
    pub join_gap: Duration,
}

/// The keyword rules among a rule set's audio rules. A rule naming no voice rule (validation
/// refuses it) is left out.
pub fn keyword_rules(audio: &[(usize, AudioRule)]) -> Vec<KeywordRule> {
    audio
        .iter()
        .filter_map(|(rule, r)| {
            let AudioRule::Keyword(k) = r else { return None };
            let voice = audio.iter().find_map(|(i, r)| match r {
                AudioRule::Voice(v) if v.name == k.voice => Some(*i),
                _ => None,
            })?;
            Some(KeywordRule {
                rule: *rule,
                name: k.name.clone(),
                voice,
                spotter: KeywordSpotter::new(&k.words),
                hold: Duration::try_from_secs_f32(k.hold_s.max(0.0)).unwrap_or(Duration::MAX),
                join_gap: Duration::try_from_secs_f32(k.join_gap_ms.max(0.0) / 1000.0)
                    .unwrap_or(Duration::ZERO),
            })
        })
        .collect()
}

/// A keyword alert raised or cleared, stamped with the capture time that decided it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    pub rule: usize,
    pub state: AlertState,
    pub at: MonoTime,
}

/// The keyword rules' state: which are raised, until when. No clock of its own.
#[derive(Debug)]
pub struct Keywords {
    rules: Vec<KeywordRule>,
    /// Per rule: raised, and clears at this time.
    until: Vec<Option<MonoTime>>,
}

impl Keywords {
    pub fn new(rules: Vec<KeywordRule>) -> Self {
        let until = vec![None; rules.len()];
        Self { rules, until }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some keyword rule hears the segments of voice rule `voice`.
    pub fn listens_to(&self, voice: usize) -> bool {
        self.rules.iter().any(|r| r.voice == voice)
    }

    /// The longest `join_gap` of the rules hearing voice rule `voice` (zero: none joins).
    pub fn join_gap(&self, voice: usize) -> Duration {
        self.rules.iter().filter(|r| r.voice == voice).map(|r| r.join_gap).max().unwrap_or_default()
    }

    /// The transcript of a segment of voice rule `voice` that ended at `end`: raises each rule
    /// on that voice whose keywords it says, or extends its hold if raised already.
    pub fn heard(&mut self, voice: usize, text: &str, end: MonoTime, out: &mut Vec<Change>) {
        self.heard_joined(voice, text, None, end, out);
    }

    /// As [`heard`](Self::heard), for the transcript of segments joined across a pause of
    /// `gap` (None: one segment alone): only the rules whose `join_gap` reaches it listen.
    pub fn heard_joined(
        &mut self,
        voice: usize,
        text: &str,
        gap: Option<Duration>,
        end: MonoTime,
        out: &mut Vec<Change>,
    ) {
        for (r, until) in self.rules.iter().zip(&mut self.until) {
            if r.voice != voice || gap.is_some_and(|g| g > r.join_gap) {
                continue;
            }
            let Some(word) = r.spotter.find(text) else { continue };
            tracing::info!(rule = %r.name, keyword = word, "keyword heard");
            let clear_at = end.plus(r.hold);
            match until {
                Some(t) => *t = (*t).max(clear_at),
                None => {
                    *until = Some(clear_at);
                    out.push(Change { rule: r.rule, state: AlertState::Raised, at: end });
                }
            }
        }
    }

    /// Clears every rule whose hold has run out by `now`, stamped with when it ran out.
    pub fn expire(&mut self, now: MonoTime, out: &mut Vec<Change>) {
        for (r, until) in self.rules.iter().zip(&mut self.until) {
            if let Some(t) = *until {
                if t <= now {
                    *until = None;
                    out.push(Change { rule: r.rule, state: AlertState::Cleared, at: t });
                }
            }
        }
    }

    /// When the next hold runs out.
    pub fn next_deadline(&self) -> Option<MonoTime> {
        self.until.iter().flatten().min().copied()
    }

    /// Whether any rule is raised.
    pub fn raised(&self) -> bool {
        self.until.iter().any(Option::is_some)
    }

    /// Clears every raised rule at `at`: the rule set is being replaced.
    pub fn clear_all(&mut self, at: MonoTime, out: &mut Vec<Change>) {
        for (r, until) in self.rules.iter().zip(&mut self.until) {
            if until.take().is_some() {
                out.push(Change { rule: r.rule, state: AlertState::Cleared, at });
            }
        }
    }
}

/// The pieces of one utterance put back together. The voice rule ends a segment at a pause as
/// short as its hangover, so "Help! Somebody help me, my leg is broken." can arrive as "Help!"
/// (which Moonshine alone hears as "Oh.") and the rest; heard joined, it is transcribed right.
/// Holds the last segment's audio (after the one before it, when joined to it) in one buffer of
/// the model's longest input (30 s) made here; older audio is dropped from the front to fit.
#[derive(Debug)]
pub struct Joiner {
    audio: Vec<f32>,
    /// Of the audio held: its voice rule, the end of its last segment, and the capture time
    /// just after its last sample.
    last: Option<(usize, MonoTime, MonoTime)>,
    /// Where the last segment's own audio begins in `audio`.
    from: usize,
    max: usize,
}

impl Default for Joiner {
    fn default() -> Self {
        Self::new()
    }
}

impl Joiner {
    pub fn new() -> Self {
        let max = (stt::MAX_SECONDS * stt::SAMPLE_RATE as f32) as usize;
        Self { audio: Vec::with_capacity(max), last: None, from: 0, max }
    }

    /// Takes a segment of voice rule `voice`: voice from `start` to `end`, `samples` from
    /// `audio_start`. When it starts within `within` of the end of the previous segment of the
    /// same voice, it is joined to the audio held (silence for the part of the pause neither
    /// covers, the overlap once) and the pause is returned; otherwise it replaces the audio held.
    pub fn push(
        &mut self,
        voice: usize,
        (start, end, audio_start): (MonoTime, MonoTime, MonoTime),
        samples: &[i16],
        within: Duration,
    ) -> Option<Duration> {
        let rate = stt::SAMPLE_RATE as u128;
        let count = |d: Duration| ((d.as_nanos() * rate + 500_000_000) / 1_000_000_000) as usize;
        let held = self.last.filter(|&(v, prev_end, _)| {
            v == voice && !within.is_zero() && start >= prev_end && start.since(prev_end) <= within
        });
        let (gap, silence, skip) = match held {
            Some((_, prev_end, held_end)) => (
                Some(start.since(prev_end)),
                count(audio_start.since(held_end)),
                count(held_end.since(audio_start)),
            ),
            None => {
                self.audio.clear();
                (None, 0, 0)
            }
        };
        // Only the previous segment is kept before this one: the ones before it were heard.
        let from = self.from.min(self.audio.len());
        self.audio.drain(..from);
        let mut new = &samples[skip.min(samples.len())..];
        if new.len() > self.max {
            new = &new[new.len() - self.max..];
        }
        let silence = silence.min(self.max - new.len());
        let over = (self.audio.len() + silence + new.len()).saturating_sub(self.max);
        self.audio.drain(..over.min(self.audio.len()));
        self.audio.resize(self.audio.len() + silence, 0.0);
        // This segment's own audio begins `skip` samples back, in the previous one's tail.
        self.from = self.audio.len().saturating_sub(skip);
        self.audio.extend(new.iter().map(|&s| s as f32 / 32768.0));
        let len = Duration::from_nanos((samples.len() as u128 * 1_000_000_000 / rate) as u64);
        self.last = Some((voice, end, audio_start.plus(len)));
        gap
    }

    /// The audio held: the last segment, after the one it was joined to (if it was).
    pub fn audio(&self) -> &[f32] {
        &self.audio
    }

    /// Forgets the audio held (a new rule set).
    pub fn reset(&mut self) {
        self.audio.clear();
        self.last = None;
    }
}

/// What [`Listener::hear`] transcribed.
#[derive(Debug)]
pub struct Heard {
    /// The segment alone.
    pub alone: stt::Transcript,
    /// The segment joined to the one before it, and the pause it was joined across.
    pub joined: Option<(Duration, stt::Transcript)>,
}

impl Heard {
    /// Time spent transcribing.
    pub fn compute(&self) -> Duration {
        self.alone.compute + self.joined.as_ref().map_or(Duration::ZERO, |(_, t)| t.compute)
    }
}

/// The keyword rules hearing voice segments: each segment is transcribed, joined to the
/// previous one when it follows it closely ([`Joiner`]), and the keywords matched. Shared by
/// the speech thread and `sideline scenarios`.
#[derive(Debug)]
pub struct Listener {
    pub keywords: Keywords,
    joiner: Joiner,
    pcm: Vec<f32>,
}

impl Listener {
    pub fn new(rules: Vec<KeywordRule>) -> Self {
        let joiner = Joiner::new();
        let pcm = Vec::with_capacity(joiner.max);
        Self { keywords: Keywords::new(rules), joiner, pcm }
    }

    /// New keyword rules: the old ones' state and the audio held are dropped.
    pub fn set_rules(&mut self, rules: Vec<KeywordRule>) {
        self.keywords = Keywords::new(rules);
        self.joiner.reset();
    }

    /// A segment of voice rule `voice` (`times`: its start, end and first sample's time):
    /// transcribes it and raises or extends the rules whose keywords it says. A keyword the
    /// joined audio repeats from an earlier piece only extends the hold.
    pub fn hear(
        &mut self,
        stt: &mut SpeechToText,
        voice: usize,
        times: (MonoTime, MonoTime, MonoTime),
        samples: &[i16],
        out: &mut Vec<Change>,
    ) -> Result<Heard, stt::SttError> {
        let end = times.1;
        let gap = self.joiner.push(voice, times, samples, self.keywords.join_gap(voice));
        // Alone too, always: a piece Moonshine hears right alone can come out wrong joined
        // (over the crowd, "We need a medic on the pitch now" after "Play on near the North's
        // goal"), and heard only joined the scenario set loses more windows than it gains.
        self.pcm.clear();
        let take = samples.len().min(self.joiner.max);
        self.pcm.extend(samples[..take].iter().map(|&s| s as f32 / 32768.0));
        let alone = stt.transcribe(&self.pcm)?;
        self.keywords.heard(voice, &alone.text, end, out);
        let mut heard = Heard { alone, joined: None };
        if let Some(gap) = gap {
            let t = stt.transcribe(self.joiner.audio())?;
            self.keywords.heard_joined(voice, &t.text, Some(gap), end, out);
            heard.joined = Some((gap, t));
        }
        Ok(heard)
    }
}

/// One voice segment, copied out of the voice detector into a preallocated buffer.
#[derive(Debug, Default)]
pub struct Segment {
    /// Index of the voice rule that made it.
    pub voice: usize,
    /// Rule set generation it belongs to.
    pub generation: u32,
    /// Sequence number of the chunk that ended it.
    pub seq: u64,
    pub start: MonoTime,
    pub end: MonoTime,
    /// Capture time of its first sample (the pre-roll's).
    pub audio_start: MonoTime,
    /// When the chunk that ended it reached the microphone thread.
    pub arrived: MonoTime,
    pub split: bool,
    pub samples: Vec<i16>,
}

/// What the speech thread finds when it waits.
#[derive(Debug)]
pub enum Next {
    /// A new rule set's keyword rules: clear what the old ones hold raised, then use these.
    Rules(u32, Vec<KeywordRule>),
    Segment(Segment),
    Timeout,
    /// The microphone has stopped: nothing more will come.
    Closed,
}

#[derive(Debug, Default)]
struct Inner {
    free: Vec<Segment>,
    waiting: VecDeque<Segment>,
    /// Samples each buffer holds without growing.
    capacity: usize,
    dropped: u64,
    rules: Option<(u32, Vec<KeywordRule>)>,
    closed: bool,
}

/// Bounded hand-over of voice segments from the microphone thread to the speech thread.
#[derive(Debug, Default)]
pub struct SegmentQueue {
    inner: Mutex<Inner>,
    ready: Condvar,
}

impl SegmentQueue {
    /// `depth` buffers of `capacity` samples each, made here.
    pub fn new(depth: usize, capacity: usize) -> Self {
        let depth = depth.max(1);
        let free =
            (0..depth).map(|_| Segment { samples: Vec::with_capacity(capacity), ..Segment::default() });
        let inner = Inner {
            free: free.collect(),
            waiting: VecDeque::with_capacity(depth),
            capacity,
            ..Inner::default()
        };
        Self { inner: Mutex::new(inner), ready: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means the other side panicked; the buffers themselves are sound.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Microphone side: copies `seg` into a free buffer, else into the oldest waiting one (that
    /// segment is dropped). Returns whether a segment was dropped. Allocates nothing while the
    /// segment fits the buffers (sized by [`post_rules`](Self::post_rules) and `new`).
    pub fn offer(
        &self,
        voice: usize,
        generation: u32,
        seq: u64,
        arrived: MonoTime,
        seg: &VoiceSegment<'_>,
    ) -> bool {
        let mut q = self.lock();
        let (mut buf, dropped) = match q.free.pop() {
            Some(b) => (b, false),
            None => match q.waiting.pop_front() {
                Some(b) => (b, true),
                // Every buffer is being transcribed (depth 1): this segment is the one dropped.
                None => {
                    q.dropped += 1;
                    return true;
                }
            },
        };
        q.dropped += dropped as u64;
        // Within the buffers' preallocated size: a longer segment (none is) would lose its end.
        let n = seg.samples.len().min(q.capacity);
        buf.samples.clear();
        buf.samples.extend_from_slice(&seg.samples[..n]);
        (buf.voice, buf.generation, buf.seq, buf.arrived) = (voice, generation, seq, arrived);
        (buf.start, buf.end, buf.audio_start, buf.split) = (seg.start, seg.end, seg.audio_start, seg.split);
        q.waiting.push_back(buf);
        drop(q);
        self.ready.notify_one();
        dropped
    }

    /// A new rule set: waiting segments (of the old rules) go back to the pool, the buffers grow
    /// to `capacity` samples if they are shorter, and the speech thread is handed `rules`.
    pub fn post_rules(&self, generation: u32, rules: Vec<KeywordRule>, capacity: usize) {
        let mut q = self.lock();
        while let Some(b) = q.waiting.pop_front() {
            q.free.push(b);
        }
        q.capacity = q.capacity.max(capacity);
        let cap = q.capacity;
        for b in &mut q.free {
            b.samples.reserve(cap.saturating_sub(b.samples.len()));
        }
        q.rules = Some((generation, rules));
        drop(q);
        self.ready.notify_one();
    }

    /// The microphone has stopped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Segments dropped because the speech thread was busy.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Speech side: new rules first, then the oldest waiting segment; waits up to `timeout`.
    pub fn wait(&self, timeout: Duration) -> Next {
        let mut q = self.lock();
        loop {
            if let Some((g, r)) = q.rules.take() {
                return Next::Rules(g, r);
            }
            if let Some(s) = q.waiting.pop_front() {
                return Next::Segment(s);
            }
            if q.closed {
                return Next::Closed;
            }
            let (guard, res) = self.ready.wait_timeout(q, timeout).unwrap_or_else(|p| p.into_inner());
            q = guard;
            if res.timed_out() && q.rules.is_none() && q.waiting.is_empty() {
                return Next::Timeout;
            }
        }
    }

    /// Speech side: a transcribed segment's buffer goes back to the pool.
    pub fn recycle(&self, mut seg: Segment) {
        let mut q = self.lock();
        let cap = q.capacity;
        seg.samples.clear();
        seg.samples.reserve(cap);
        q.free.push(seg);
    }
}

/// A keyword alert for the outputs.
#[derive(Clone, Copy, Debug)]
pub struct Emit {
    pub change: Change,
    /// Rule set generation `change.rule` indexes.
    pub generation: u32,
    /// Chunk that ended the segment (for a clear, the last one heard).
    pub seq: u64,
    /// When the deciding audio reached the device (for a clear: when the hold ran out).
    pub arrived: MonoTime,
    /// After transcription (for a clear: when it went out).
    pub decided: MonoTime,
}

/// What the speech thread did.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpeechSummary {
    pub segments: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Longest transcription of one segment (alone and joined together).
    pub max_compute: Duration,
}

/// Starts the speech thread with `stt` opened beforehand (a missing model is a start-up error,
/// reported by whoever opened it). `running` is polled; when it says no, the thread ends. It also
/// ends when the queue is closed and no alert is held raised.
pub fn spawn(
    mut stt: SpeechToText,
    queue: Arc<SegmentQueue>,
    generation: u32,
    rules: Vec<KeywordRule>,
    mut emit: impl FnMut(Emit) + Send + 'static,
    running: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<JoinHandle<SpeechSummary>> {
    std::thread::Builder::new().name("speech".into()).spawn(move || {
        let mut listener = Listener::new(rules);
        let mut generation = generation;
        let mut changes = Vec::with_capacity(8);
        let mut summary = SpeechSummary::default();
        let mut last_seq = 0;
        let mut closed = false;
        while running() {
            let kw = &mut listener.keywords;
            let now = MonoTime::now();
            changes.clear();
            kw.expire(now, &mut changes);
            for &change in &changes {
                emit(Emit { change, generation, seq: last_seq, arrived: now, decided: MonoTime::now() });
            }
            let timeout = kw.next_deadline().map_or(POLL, |d| d.since(now).min(POLL));
            if closed {
                if !kw.raised() {
                    break;
                }
                std::thread::sleep(timeout);
                continue;
            }
            match queue.wait(timeout) {
                Next::Timeout => {}
                Next::Closed => closed = true,
                Next::Rules(g, r) => {
                    changes.clear();
                    kw.clear_all(MonoTime::now(), &mut changes);
                    for &change in &changes {
                        let now = MonoTime::now();
                        emit(Emit { change, generation, seq: last_seq, arrived: now, decided: now });
                    }
                    generation = g;
                    listener.set_rules(r);
                }
                Next::Segment(seg) => {
                    if seg.generation == generation && kw.listens_to(seg.voice) {
                        summary.segments += 1;
                        changes.clear();
                        let times = (seg.start, seg.end, seg.audio_start);
                        match listener.hear(&mut stt, seg.voice, times, &seg.samples, &mut changes) {
                            Ok(heard) => {
                                let decided = MonoTime::now();
                                summary.max_compute = summary.max_compute.max(heard.compute());
                                let t = &heard.alone;
                                tracing::info!(
                                    text = %t.text,
                                    audio_s = format_args!("{:.2}", t.audio_s),
                                    compute_ms = t.compute.as_millis() as u64,
                                    split = seg.split,
                                    "transcript"
                                );
                                if let Some((gap, t)) = &heard.joined {
                                    tracing::info!(
                                        text = %t.text,
                                        audio_s = format_args!("{:.2}", t.audio_s),
                                        compute_ms = t.compute.as_millis() as u64,
                                        gap_ms = gap.as_millis() as u64,
                                        "transcript, joined to the segment before"
                                    );
                                }
                                last_seq = seg.seq;
                                for &change in &changes {
                                    emit(Emit { change, generation, seq: seg.seq, arrived: seg.arrived, decided });
                                }
                            }
                            Err(e) => {
                                summary.failed += 1;
                                tracing::warn!(error = %e, "speech-to-text failed on a voice segment; skipped");
                            }
                        }
                    }
                    queue.recycle(seg);
                }
            }
        }
        summary.dropped = queue.dropped();
        summary
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Board;

    fn t(s: f32) -> MonoTime {
        MonoTime::from_nanos(1_000_000_000).plus(Duration::from_secs_f32(s))
    }

    fn rules(hold_s: f32) -> Vec<KeywordRule> {
        vec![
            KeywordRule {
                rule: 7,
                name: "help".into(),
                voice: 3,
                spotter: KeywordSpotter::new(&["help", "call an ambulance"]),
                hold: Duration::from_secs_f32(hold_s),
                join_gap: Duration::from_millis(800),
            },
            KeywordRule {
                rule: 8,
                name: "storm".into(),
                voice: 4,
                spotter: KeywordSpotter::new(&["thunder"]),
                hold: Duration::from_secs_f32(hold_s),
                join_gap: Duration::from_millis(800),
            },
        ]
    }

    fn raised(rule: usize, at: MonoTime) -> Change {
        Change { rule, state: AlertState::Raised, at }
    }

    fn cleared(rule: usize, at: MonoTime) -> Change {
        Change { rule, state: AlertState::Cleared, at }
    }

    #[test]
    fn a_keyword_raises_once_and_clears_hold_after_the_last_hit() {
        let mut k = Keywords::new(rules(5.0));
        let mut out = Vec::new();
        k.heard(3, "Help! Somebody help me.", t(2.0), &mut out);
        assert_eq!(out, vec![raised(7, t(2.0))]);
        assert_eq!(k.next_deadline(), Some(t(7.0)));
        // Heard again while raised: no second raise, the hold runs from the new hit.
        out.clear();
        k.heard(3, "please call an ambulance", t(4.0), &mut out);
        assert!(out.is_empty());
        k.expire(t(8.9), &mut out);
        assert!(out.is_empty(), "held until 9.0: {out:?}");
        k.expire(t(9.0), &mut out);
        assert_eq!(out, vec![cleared(7, t(9.0))]);
        assert!(!k.raised());
        assert_eq!(k.next_deadline(), None);
        // Raised again after the clear.
        out.clear();
        k.heard(3, "HELP", t(12.0), &mut out);
        assert_eq!(out, vec![raised(7, t(12.0))]);
    }

    #[test]
    fn a_late_expiry_is_stamped_when_the_hold_ran_out() {
        let mut k = Keywords::new(rules(5.0));
        let mut out = Vec::new();
        k.heard(3, "help", t(1.0), &mut out);
        out.clear();
        k.expire(t(30.0), &mut out);
        assert_eq!(out, vec![cleared(7, t(6.0))]);
    }

    #[test]
    fn only_the_rules_on_that_voice_and_only_their_words() {
        let mut k = Keywords::new(rules(2.0));
        let mut out = Vec::new();
        k.heard(4, "help", t(1.0), &mut out);
        assert!(out.is_empty(), "help is not a word of the rule on voice 4");
        k.heard(3, "that was helpful, thunder", t(1.0), &mut out);
        assert!(out.is_empty(), "thunder is not a word of the rule on voice 3: {out:?}");
        assert!(k.listens_to(3) && k.listens_to(4) && !k.listens_to(5));
        k.heard(4, "Thunder!", t(1.5), &mut out);
        k.heard(3, "help", t(1.0), &mut out);
        assert_eq!(out, vec![raised(8, t(1.5)), raised(7, t(1.0))]);
        assert_eq!(k.next_deadline(), Some(t(3.0)));
        out.clear();
        k.clear_all(t(2.0), &mut out);
        assert_eq!(out, vec![cleared(7, t(2.0)), cleared(8, t(2.0))]);
        out.clear();
        k.expire(t(10.0), &mut out);
        assert!(out.is_empty(), "nothing left raised after clear_all");
    }

    #[test]
    fn a_joined_transcript_counts_only_for_rules_joining_that_far() {
        let mut k = Keywords::new(rules(5.0));
        let mut out = Vec::new();
        k.heard_joined(3, "help me", Some(Duration::from_millis(900)), t(2.0), &mut out);
        assert!(out.is_empty(), "900 ms is past the rule's 800 ms join gap: {out:?}");
        assert_eq!(k.join_gap(3), Duration::from_millis(800));
        assert_eq!(k.join_gap(5), Duration::ZERO, "no rule on voice 5");
        k.heard_joined(3, "help me", Some(Duration::from_millis(500)), t(2.0), &mut out);
        assert_eq!(out, vec![raised(7, t(2.0))]);
        // The piece alone says it again: the hold is extended, not raised twice.
        out.clear();
        k.heard(3, "help", t(2.5), &mut out);
        assert!(out.is_empty());
        assert_eq!(k.next_deadline(), Some(t(7.5)));
    }

    #[test]
    fn segments_close_together_are_joined_with_silence_between_and_the_overlap_once() {
        let ms = |n: usize| n * 16;
        let at = |ms: u64| MonoTime::from_nanos(1_000_000_000 + ms * 1_000_000);
        let level = |v: i16| v as f32 / 32768.0;
        let within = Duration::from_millis(800);
        let mut j = Joiner::new();
        // A: voice 1.0-1.5 s, audio 0.8-1.7 s (pre-roll and tail).
        let a = vec![100i16; ms(900)];
        assert_eq!(j.push(3, (at(1000), at(1500), at(800)), &a, within), None, "nothing before it");
        assert_eq!(j.audio().len(), ms(900));
        // B: 0.5 s after A's end, its audio from 1.8 s: 100 ms of silence fills 1.7-1.8 s.
        let b = vec![200i16; ms(900)];
        let gap = j.push(3, (at(2000), at(2500), at(1800)), &b, within);
        assert_eq!(gap, Some(Duration::from_millis(500)));
        let held = j.audio();
        assert_eq!(held.len(), ms(900 + 100 + 900));
        assert_eq!((held[ms(900) - 1], held[ms(900)], held[ms(1000) - 1]), (level(100), 0.0, 0.0));
        assert_eq!(held[ms(1000)], level(200));
        // C: its audio (2.4-2.9 s) overlaps B's tail (to 2.7 s): that part is kept once, and A
        // (two segments back) is no longer held.
        let c = vec![300i16; ms(500)];
        assert_eq!(j.push(3, (at(2600), at(2800), at(2400)), &c, within), Some(Duration::from_millis(100)));
        let held = j.audio();
        assert_eq!(held.len(), ms(900 + 200));
        assert_eq!((held[0], held[ms(900) - 1], held[ms(900)]), (level(200), level(200), level(300)));
        // Another voice rule, a pause longer than the join gap, or no join gap: alone.
        let d = vec![400i16; ms(300)];
        assert_eq!(j.push(4, (at(3000), at(3200), at(2800)), &d, within), None);
        assert_eq!(j.audio().len(), ms(300));
        assert_eq!(j.push(4, (at(4100), at(4300), at(3900)), &d, within), None);
        assert_eq!(j.push(4, (at(4400), at(4600), at(4200)), &d, Duration::ZERO), None);
        assert_eq!(j.audio().len(), ms(300));
        // Never longer than the model takes, nor grown past its first size.
        let cap = j.audio.capacity();
        let long = vec![1i16; j.max + 100];
        j.push(4, (at(5000), at(36000), at(4800)), &long, within);
        j.push(4, (at(36500), at(37000), at(36300)), &d, within);
        assert_eq!((j.audio().len(), j.audio.capacity()), (j.max, cap));
        j.reset();
        assert!(j.audio().is_empty());
        assert_eq!(j.push(4, (at(37100), at(37200), at(36900)), &d, within), None);
    }

    fn segment(samples: &[i16], end_s: f32) -> VoiceSegment<'_> {
        VoiceSegment { start: t(0.0), end: t(end_s), audio_start: t(0.0), samples, split: false }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_waiting_segment_and_counts_it() {
        let q = SegmentQueue::new(2, 16);
        let audio = [1i16; 16];
        assert!(!q.offer(3, 0, 1, t(1.0), &segment(&audio[..4], 1.0)));
        assert!(!q.offer(3, 0, 2, t(2.0), &segment(&audio[..8], 2.0)));
        assert!(q.offer(3, 0, 3, t(3.0), &segment(&audio, 3.0)), "no free buffer: the oldest goes");
        assert_eq!(q.dropped(), 1);
        let Next::Segment(s) = q.wait(Duration::ZERO) else { panic!("a segment waits") };
        assert_eq!((s.seq, s.end, s.samples.len()), (2, t(2.0), 8));
        let cap = s.samples.capacity();
        q.recycle(s);
        let Next::Segment(s) = q.wait(Duration::ZERO) else { panic!("a segment waits") };
        assert_eq!((s.seq, s.samples.len()), (3, 16));
        assert_eq!(cap, 16, "buffers keep their preallocated size");
        q.recycle(s);
        assert!(matches!(q.wait(Duration::from_millis(1)), Next::Timeout));
        q.post_rules(1, Vec::new(), 32);
        assert!(matches!(q.wait(Duration::ZERO), Next::Rules(1, _)));
        q.close();
        assert!(matches!(q.wait(Duration::ZERO), Next::Closed));
    }

    #[test]
    fn new_rules_discard_the_old_rules_waiting_segments() {
        let q = SegmentQueue::new(3, 8);
        let audio = [0i16; 8];
        q.offer(3, 0, 1, t(1.0), &segment(&audio, 1.0));
        q.post_rules(1, Vec::new(), 8);
        assert!(matches!(q.wait(Duration::ZERO), Next::Rules(1, _)));
        assert!(matches!(q.wait(Duration::ZERO), Next::Timeout));
    }

    #[test]
    fn keyword_rules_are_resolved_to_their_voice_rule() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(repo.join("board/sim-audio.toml")).unwrap();
        let board: Board = toml::from_str(&text).unwrap();
        let set = crate::rules::RuleSet::new(&board).unwrap();
        let k = keyword_rules(set.audio());
        assert_eq!(k.len(), 1);
        assert_eq!(set.metas()[k[0].rule].name, "help");
        assert_eq!(set.metas()[k[0].voice].name, "voice");
        assert_eq!(k[0].hold, Duration::from_secs(5));
    }
}
