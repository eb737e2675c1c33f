//! The serial alert protocol's frames, byte for byte (docs/SERIAL.md is the contract).
//!
//! Kept apart from the link logic so a receiver (the tests' fake one, a bench tool) can reuse
//! the exact encoder and decoder the device uses, and so every byte layout decision lives in
//! one place. Nothing here allocates: frames are fixed-size values, the encoder and the
//! decoder own one small buffer each, and the decoder never panics on any input.

use crate::config::Severity;
use crate::rules::{AlertState, RuleKind};

/// Protocol version carried in every frame.
pub const VERSION: u8 = 1;
/// Longest rule name carried, in bytes; longer names are cut at a UTF-8 boundary.
pub const NAME_MAX: usize = 32;
/// version, type, seq.
const HEADER: usize = 4;
const CRC_LEN: usize = 4;
const ALERT_FIXED: usize = 20;
const BEAT_LEN: usize = 16;
const HELLO_LEN: usize = 24;
/// Longest frame before COBS: an ALERT with a full-length name.
pub const MAX_FRAME: usize = HEADER + ALERT_FIXED + NAME_MAX + CRC_LEN;
/// Longest COBS-encoded frame (one code byte per 254 data bytes, and frames are shorter).
pub const MAX_ENCODED: usize = MAX_FRAME + 1;
/// Longest frame on the wire: a delimiter, the encoded frame, a delimiter.
pub const MAX_WIRE: usize = MAX_ENCODED + 2;
/// The value of `capture_us` when the capture time is not known.
pub const UNKNOWN_CAPTURE: u64 = u64::MAX;
/// The value of `latency_us` when the latency is not known (larger latencies saturate below it).
pub const UNKNOWN_LATENCY: u32 = u32::MAX;

/// Frame type codes (byte 1).
pub mod kind {
    pub const ALERT: u8 = 0x01;
    pub const HEARTBEAT: u8 = 0x02;
    pub const ACK: u8 = 0x03;
    pub const HELLO: u8 = 0x04;
}

/// Why bytes between two delimiters are not a frame. The decoder drops them and carries on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated frame: {len} bytes where at least {need} are needed")]
    Truncated { len: usize, need: usize },
    #[error("oversize frame: {len} encoded bytes, at most {MAX_ENCODED} allowed")]
    Oversize { len: usize },
    #[error("bad CRC: frame carries {got:#010x}, its bytes give {want:#010x}")]
    BadCrc { got: u32, want: u32 },
    #[error("protocol version {0}, this device speaks {VERSION}")]
    BadVersion(u8),
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("frame type {ty:#04x} with a {len}-byte body, expected {expected}")]
    BadLength { ty: u8, len: usize, expected: usize },
    #[error("field `{field}` has value {value}, out of range")]
    BadField { field: &'static str, value: u8 },
}

/// A rule name as carried on the wire: at most [`NAME_MAX`] bytes, stored inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RuleName {
    len: u8,
    bytes: [u8; NAME_MAX],
}

impl RuleName {
    /// `name`, cut to [`NAME_MAX`] bytes without splitting a character.
    pub fn new(name: &str) -> Self {
        let mut end = name.len().min(NAME_MAX);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        Self::from_bytes(&name.as_bytes()[..end])
    }

    /// Raw bytes as received (a receiver should not trust them to be UTF-8); cut to [`NAME_MAX`].
    pub fn from_bytes(b: &[u8]) -> Self {
        let n = b.len().min(NAME_MAX);
        let mut bytes = [0; NAME_MAX];
        bytes[..n].copy_from_slice(&b[..n]);
        Self { len: n as u8, bytes }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

impl std::fmt::Debug for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The wire code of a rule kind. Exhaustive on purpose: a new kind does not compile until it
/// has a code, and codes are never reused.
pub fn kind_code(k: RuleKind) -> u8 {
    match k {
        RuleKind::ZoneIncursion => 1,
        RuleKind::PlayerDown => 2,
        RuleKind::Whistle => 3,
        RuleKind::CameraBlind => 4,
        RuleKind::LoopStalled => 5,
        RuleKind::CameraObstructed => 6,
        RuleKind::OutputFault => 7,
        RuleKind::Crowding => 8,
        RuleKind::Thunder => 9,
        RuleKind::Fusion => 10,
        RuleKind::Collision => 11,
        RuleKind::Voice => 12,
        RuleKind::Keyword => 13,
    }
}

/// The rule kind of a wire code; `None` for kinds this build does not know (still valid).
pub fn kind_from_code(c: u8) -> Option<RuleKind> {
    Some(match c {
        1 => RuleKind::ZoneIncursion,
        2 => RuleKind::PlayerDown,
        3 => RuleKind::Whistle,
        4 => RuleKind::CameraBlind,
        5 => RuleKind::LoopStalled,
        6 => RuleKind::CameraObstructed,
        7 => RuleKind::OutputFault,
        8 => RuleKind::Crowding,
        9 => RuleKind::Thunder,
        10 => RuleKind::Fusion,
        11 => RuleKind::Collision,
        12 => RuleKind::Voice,
        13 => RuleKind::Keyword,
        _ => return None,
    })
}

fn severity_code(s: Severity) -> u8 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

/// One alert, as an ALERT frame carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alert {
    pub state: AlertState,
    pub severity: Severity,
    /// See [`kind_code`]; unknown codes are kept as they came.
    pub kind: u8,
    pub track: u32,
    /// Capture time of the frame (or audio chunk) behind the alert, µs on the device's
    /// monotonic clock; [`UNKNOWN_CAPTURE`] if not known.
    pub capture_us: u64,
    /// From the frame reaching the loop to the alert being handed to this output, µs;
    /// [`UNKNOWN_LATENCY`] if not known.
    pub latency_us: u32,
    pub name: RuleName,
}

/// What HEARTBEAT carries (and HELLO begins with).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Beat {
    /// The device's monotonic clock when the frame was built, µs.
    pub time_us: u64,
    /// ALERT frames the device gave up on (no ACK after every retry) since it started, wrapping.
    pub given_up: u32,
    /// Changes of the decision loop's heartbeat level since start, wrapping; keeps rising while
    /// the loop decides frames on time, when this output is the loop's heartbeat output.
    pub loop_beats: u32,
}

/// The first frame after the port opens, repeated in place of HEARTBEAT until acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub beat: Beat,
    pub heartbeat_ms: u32,
    pub ack_timeout_ms: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    Alert(Alert),
    Heartbeat(Beat),
    /// Acknowledges the frame whose sequence number this frame carries.
    Ack,
    Hello(Hello),
}

impl Body {
    pub fn type_code(&self) -> u8 {
        match self {
            Body::Alert(_) => kind::ALERT,
            Body::Heartbeat(_) => kind::HEARTBEAT,
            Body::Ack => kind::ACK,
            Body::Hello(_) => kind::HELLO,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The sender's sequence number; in an ACK, the number acknowledged.
    pub seq: u16,
    pub body: Body,
}

const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            // 0x82F63B78 is 0x1EDC6F41 bit-reversed: the reflected (LSB-first) form.
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// CRC-32C (Castagnoli): poly 0x1EDC6F41, init and xorout 0xFFFFFFFF, reflected in and out.
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC32C_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

/// Writes `frame` before COBS (header, body, CRC) into `out`; returns its length.
pub fn encode_raw(frame: &Frame, out: &mut [u8; MAX_FRAME]) -> usize {
    let mut w = Writer { buf: out, at: 0 };
    w.put(&[VERSION, frame.body.type_code()]);
    w.put(&frame.seq.to_le_bytes());
    match &frame.body {
        Body::Alert(a) => {
            let state = match a.state {
                AlertState::Cleared => 0,
                AlertState::Raised => 1,
            };
            w.put(&[state, severity_code(a.severity), a.kind]);
            w.put(&a.track.to_le_bytes());
            w.put(&a.capture_us.to_le_bytes());
            w.put(&a.latency_us.to_le_bytes());
            w.put(&[a.name.len]);
            w.put(a.name.as_bytes());
        }
        Body::Heartbeat(b) => put_beat(&mut w, b),
        Body::Ack => {}
        Body::Hello(h) => {
            put_beat(&mut w, &h.beat);
            w.put(&h.heartbeat_ms.to_le_bytes());
            w.put(&h.ack_timeout_ms.to_le_bytes());
        }
    }
    let crc = crc32c(&w.buf[..w.at]);
    w.put(&crc.to_le_bytes());
    w.at
}

fn put_beat(w: &mut Writer<'_>, b: &Beat) {
    w.put(&b.time_us.to_le_bytes());
    w.put(&b.given_up.to_le_bytes());
    w.put(&b.loop_beats.to_le_bytes());
}

/// Frames are built by this module only, and none exceeds [`MAX_FRAME`].
struct Writer<'a> {
    buf: &'a mut [u8; MAX_FRAME],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
}

/// COBS-encodes `src` into `dst` (which must hold `src.len() + src.len() / 254 + 1` bytes);
/// returns the encoded length. The output holds no zero byte.
pub fn cobs_encode(src: &[u8], dst: &mut [u8]) -> usize {
    let mut code_at = 0;
    let mut code = 1u8;
    let mut o = 1;
    for &b in src {
        if b == 0 {
            dst[code_at] = code;
            code_at = o;
            o += 1;
            code = 1;
        } else {
            dst[o] = b;
            o += 1;
            code += 1;
            if code == 0xFF {
                dst[code_at] = code;
                code_at = o;
                o += 1;
                code = 1;
            }
        }
    }
    dst[code_at] = code;
    o
}

/// Decodes a COBS block (no zero bytes) in place; returns the decoded length. A code byte that
/// points past the end means bytes were lost: the frame is truncated.
pub fn cobs_decode_in_place(buf: &mut [u8]) -> Result<usize, DecodeError> {
    let (mut i, mut o) = (0, 0);
    while i < buf.len() {
        let code = buf[i] as usize;
        if code == 0 {
            return Err(DecodeError::Truncated { len: buf.len(), need: i + 1 });
        }
        i += 1;
        let n = code - 1;
        if i + n > buf.len() {
            return Err(DecodeError::Truncated { len: buf.len(), need: i + n });
        }
        // o < i always, so the copy moves data towards the start and never overtakes itself.
        buf.copy_within(i..i + n, o);
        i += n;
        o += n;
        if code != 0xFF && i < buf.len() {
            buf[o] = 0;
            o += 1;
        }
    }
    Ok(o)
}

/// Parses one frame as it was before COBS: header, body, CRC.
pub fn parse(raw: &[u8]) -> Result<Frame, DecodeError> {
    let need = HEADER + CRC_LEN;
    if raw.len() < need {
        return Err(DecodeError::Truncated { len: raw.len(), need });
    }
    let (data, crc) = raw.split_at(raw.len() - CRC_LEN);
    let got = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let want = crc32c(data);
    if got != want {
        return Err(DecodeError::BadCrc { got, want });
    }
    // The CRC is checked first: every version ends in the same CRC, so a bad version byte
    // is only reported when the sender really meant it.
    if data[0] != VERSION {
        return Err(DecodeError::BadVersion(data[0]));
    }
    let ty = data[1];
    let seq = u16::from_le_bytes([data[2], data[3]]);
    let body = &data[HEADER..];
    let exact = |expected: usize| -> Result<Reader<'_>, DecodeError> {
        match body.len() {
            n if n < expected => Err(DecodeError::Truncated { len: raw.len(), need: need + expected }),
            n if n > expected => Err(DecodeError::BadLength { ty, len: n, expected }),
            _ => Ok(Reader { b: body, at: 0 }),
        }
    };
    let body = match ty {
        kind::ALERT => {
            if body.len() < ALERT_FIXED {
                return Err(DecodeError::Truncated { len: raw.len(), need: need + ALERT_FIXED });
            }
            let name_len = body[ALERT_FIXED - 1];
            if name_len as usize > NAME_MAX {
                return Err(DecodeError::BadField { field: "name_len", value: name_len });
            }
            let mut r = exact(ALERT_FIXED + name_len as usize)?;
            Body::Alert(read_alert(&mut r, ty, raw.len())?)
        }
        kind::HEARTBEAT => Body::Heartbeat(read_beat(&mut exact(BEAT_LEN)?, ty, raw.len())?),
        kind::ACK => {
            exact(0)?;
            Body::Ack
        }
        kind::HELLO => {
            let mut r = exact(HELLO_LEN)?;
            let beat = read_beat(&mut r, ty, raw.len())?;
            let short = r.short(ty, raw.len());
            Body::Hello(Hello {
                beat,
                heartbeat_ms: r.u32().ok_or(short)?,
                ack_timeout_ms: r.u32().ok_or(short)?,
            })
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok(Frame { seq, body })
}

fn read_alert(r: &mut Reader<'_>, ty: u8, len: usize) -> Result<Alert, DecodeError> {
    let short = r.short(ty, len);
    let state = match r.u8().ok_or(short)? {
        0 => AlertState::Cleared,
        1 => AlertState::Raised,
        v => return Err(DecodeError::BadField { field: "state", value: v }),
    };
    let severity = match r.u8().ok_or(short)? {
        0 => Severity::Info,
        1 => Severity::Warning,
        2 => Severity::Critical,
        v => return Err(DecodeError::BadField { field: "severity", value: v }),
    };
    let kind = r.u8().ok_or(short)?;
    let track = r.u32().ok_or(short)?;
    let capture_us = r.u64().ok_or(short)?;
    let latency_us = r.u32().ok_or(short)?;
    let n = r.u8().ok_or(short)? as usize;
    let name = RuleName::from_bytes(r.take(n).ok_or(short)?);
    Ok(Alert { state, severity, kind, track, capture_us, latency_us, name })
}

fn read_beat(r: &mut Reader<'_>, ty: u8, len: usize) -> Result<Beat, DecodeError> {
    let short = r.short(ty, len);
    Ok(Beat {
        time_us: r.u64().ok_or(short)?,
        given_up: r.u32().ok_or(short)?,
        loop_beats: r.u32().ok_or(short)?,
    })
}

/// Bounds-checked little-endian reads: a length check upstream that is wrong yields an
/// error, never a panic.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn short(&self, ty: u8, len: usize) -> DecodeError {
        DecodeError::BadLength { ty, len, expected: self.b.len() }
    }
}

/// Encodes frames for the wire into one reusable buffer.
pub struct Encoder {
    wire: [u8; MAX_WIRE],
}

impl Default for Encoder {
    fn default() -> Self {
        Self { wire: [0; MAX_WIRE] }
    }
}

impl Encoder {
    /// `frame` as sent: `0x00`, COBS(header, body, CRC), `0x00`. The leading delimiter ends
    /// whatever noise or half frame the receiver holds, so this frame is never glued to it.
    pub fn encode(&mut self, frame: &Frame) -> &[u8] {
        let mut raw = [0u8; MAX_FRAME];
        let n = encode_raw(frame, &mut raw);
        self.wire[0] = 0;
        let m = cobs_encode(&raw[..n], &mut self.wire[1..]);
        self.wire[1 + m] = 0;
        &self.wire[..m + 2]
    }
}

/// Incremental decoder: feed it bytes as they come, in chunks of any size; it yields a frame
/// or an error at each delimiter and starts afresh after it, so one bad frame costs only itself.
pub struct Decoder {
    buf: [u8; MAX_ENCODED],
    len: usize,
    /// Bytes beyond the buffer in the current frame: it is oversize, report it at its end.
    over: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self { buf: [0; MAX_ENCODED], len: 0, over: 0 }
    }
}

impl Decoder {
    /// Takes one byte; returns what ended with it, if anything did.
    pub fn push(&mut self, b: u8) -> Option<Result<Frame, DecodeError>> {
        if b != 0 {
            if self.len < MAX_ENCODED {
                self.buf[self.len] = b;
                self.len += 1;
            } else {
                self.over = self.over.saturating_add(1);
            }
            return None;
        }
        let (len, over) = (self.len, self.over);
        self.len = 0;
        self.over = 0;
        if over > 0 {
            return Some(Err(DecodeError::Oversize { len: len.saturating_add(over) }));
        }
        // Back-to-back delimiters are padding, not frames.
        if len == 0 {
            return None;
        }
        Some(cobs_decode_in_place(&mut self.buf[..len]).and_then(|n| parse(&self.buf[..n])))
    }

    /// Everything `input` completes, in order.
    pub fn feed<'a>(&'a mut self, input: &'a [u8]) -> impl Iterator<Item = Result<Frame, DecodeError>> + 'a {
        input.iter().filter_map(move |&b| self.push(b))
    }

    /// Forgets a partial frame (after the port was reopened).
    pub fn reset(&mut self) {
        self.len = 0;
        self.over = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str) -> Alert {
        Alert {
            state: AlertState::Raised,
            severity: Severity::Critical,
            kind: kind_code(RuleKind::ZoneIncursion),
            track: 7,
            capture_us: 81_234_567,
            latency_us: 812,
            name: RuleName::new(name),
        }
    }

    fn all_frames() -> Vec<Frame> {
        let beat = Beat { time_us: 0x0102_0304_0506_0708, given_up: 3, loop_beats: 0xFFFF_FFFF };
        vec![
            Frame { seq: 0, body: Body::Alert(alert("road")) },
            Frame { seq: 0xFFFF, body: Body::Alert(alert("a-very-long-rule-name-that-will-be-cut-short")) },
            Frame {
                seq: 5,
                body: Body::Alert(Alert {
                    state: AlertState::Cleared,
                    severity: Severity::Info,
                    kind: 200,
                    name: RuleName::new(""),
                    capture_us: UNKNOWN_CAPTURE,
                    latency_us: UNKNOWN_LATENCY,
                    ..alert("")
                }),
            },
            Frame { seq: 1, body: Body::Heartbeat(beat) },
            Frame { seq: 0x1234, body: Body::Ack },
            Frame { seq: 0, body: Body::Hello(Hello { beat, heartbeat_ms: 1000, ack_timeout_ms: 250 }) },
        ]
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Vec<Result<Frame, DecodeError>> {
        d.feed(bytes).collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
    }

    fn unhex(s: &str) -> Vec<u8> {
        s.split_whitespace().filter_map(|h| u8::from_str_radix(h, 16).ok()).collect()
    }

    #[test]
    fn every_frame_type_round_trips() {
        let mut enc = Encoder::default();
        let mut dec = Decoder::default();
        for f in all_frames() {
            let wire = enc.encode(&f).to_vec();
            assert!(wire.len() <= MAX_WIRE);
            assert_eq!(wire.iter().filter(|&&b| b == 0).count(), 2, "only the delimiters are zero");
            assert_eq!(decode_all(&mut dec, &wire), vec![Ok(f)]);
        }
    }

    #[test]
    fn chunking_does_not_matter() {
        let mut enc = Encoder::default();
        let stream: Vec<u8> = all_frames().iter().flat_map(|f| enc.encode(f).to_vec()).collect();
        for chunk in [1, 2, 3, 7, 64, 1000] {
            let mut dec = Decoder::default();
            let got: Vec<_> = stream.chunks(chunk).flat_map(|c| decode_all(&mut dec, c)).collect();
            assert_eq!(got, all_frames().into_iter().map(Ok).collect::<Vec<_>>(), "chunk {chunk}");
        }
    }

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        assert_eq!(RuleName::new("road").as_bytes(), b"road");
        let long = "x".repeat(40);
        assert_eq!(RuleName::new(&long).as_bytes().len(), NAME_MAX);
        // 31 ASCII bytes then a 2-byte character: it does not fit, so it is left out whole.
        let s = format!("{}é", "a".repeat(31));
        assert_eq!(RuleName::new(&s).as_bytes(), "a".repeat(31).as_bytes());
    }

    #[test]
    fn crc32c_check_value() {
        // The catalogue check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    // The worked examples of docs/SERIAL.md: the doc and this test must agree.
    const DOC_CRC_INPUT: &str = "01 03 2a 00";
    const DOC_CRC: u32 = 0xBAD6_3158;
    const DOC_ACK_RAW: &str = "01 03 2a 00 58 31 d6 ba";
    const DOC_ACK_WIRE: &str = "00 04 01 03 2a 05 58 31 d6 ba 00";
    const DOC_ALERT_RAW: &str = "01 01 07 00 01 01 01 2a 00 00 00 87 8a d7 04 00 00 00 00 2c 03 00 00 \
                                 04 72 6f 61 64 ad 48 bd c9";
    const DOC_ALERT_WIRE: &str = "00 04 01 01 07 05 01 01 01 2a 01 01 05 87 8a d7 04 01 01 01 03 2c 03 \
                                  01 0a 04 72 6f 61 64 ad 48 bd c9 00";
    const DOC_BEAT_WIRE: &str = "00 04 01 02 08 05 60 97 db 04 01 01 01 01 01 01 01 02 11 01 01 05 \
                                 b6 6a 3b ab 00";

    fn doc_alert() -> Frame {
        Frame {
            seq: 7,
            body: Body::Alert(Alert {
                state: AlertState::Raised,
                severity: Severity::Warning,
                kind: kind_code(RuleKind::ZoneIncursion),
                track: 42,
                capture_us: 81_234_567,
                latency_us: 812,
                name: RuleName::new("road"),
            }),
        }
    }

    #[test]
    fn worked_examples_match_the_spec() {
        assert_eq!(crc32c(&unhex(DOC_CRC_INPUT)), DOC_CRC);
        let mut raw = [0u8; MAX_FRAME];
        let mut enc = Encoder::default();
        let ack = Frame { seq: 42, body: Body::Ack };
        let n = encode_raw(&ack, &mut raw);
        assert_eq!(hex(&raw[..n]), hex(&unhex(DOC_ACK_RAW)));
        assert_eq!(hex(enc.encode(&ack)), hex(&unhex(DOC_ACK_WIRE)));
        let n = encode_raw(&doc_alert(), &mut raw);
        assert_eq!(hex(&raw[..n]), hex(&unhex(DOC_ALERT_RAW)));
        assert_eq!(hex(enc.encode(&doc_alert())), hex(&unhex(DOC_ALERT_WIRE)));
        let beat = Frame {
            seq: 8,
            body: Body::Heartbeat(Beat { time_us: 81_500_000, given_up: 0, loop_beats: 17 }),
        };
        assert_eq!(hex(enc.encode(&beat)), hex(&unhex(DOC_BEAT_WIRE)));
        let mut dec = Decoder::default();
        assert_eq!(decode_all(&mut dec, &unhex(DOC_ALERT_WIRE)), vec![Ok(doc_alert())]);
    }

    #[test]
    fn garbage_before_and_between_frames_is_skipped() {
        let mut enc = Encoder::default();
        let mut stream = b"\xff\xfe noise \x13\x37".to_vec();
        stream.extend_from_slice(enc.encode(&doc_alert()));
        stream.extend_from_slice(b"\x01\x02\x03 more noise");
        stream.extend_from_slice(enc.encode(&Frame { seq: 9, body: Body::Ack }));
        let mut dec = Decoder::default();
        let got = decode_all(&mut dec, &stream);
        let frames: Vec<_> = got.iter().filter_map(|r| r.ok()).collect();
        assert_eq!(frames, vec![doc_alert(), Frame { seq: 9, body: Body::Ack }]);
        assert_eq!(got.iter().filter(|r| r.is_err()).count(), 2, "each run of noise is one error");
    }

    #[test]
    fn truncated_frame_is_an_error_and_the_next_one_decodes() {
        let mut enc = Encoder::default();
        let wire = enc.encode(&doc_alert()).to_vec();
        for cut in 2..wire.len() - 1 {
            let mut stream = wire[..cut].to_vec();
            stream.extend_from_slice(&wire);
            let mut dec = Decoder::default();
            let got = decode_all(&mut dec, &stream);
            assert_eq!(got.len(), 2, "cut at {cut}: {got:?}");
            assert!(
                matches!(got[0], Err(DecodeError::Truncated { .. } | DecodeError::BadCrc { .. })),
                "cut at {cut}: {:?}",
                got[0]
            );
            assert_eq!(got[1], Ok(doc_alert()));
        }
    }

    #[test]
    fn flipped_bits_fail_the_crc_and_the_next_frame_decodes() {
        let mut enc = Encoder::default();
        let wire = enc.encode(&doc_alert()).to_vec();
        let next = enc.encode(&Frame { seq: 8, body: Body::Ack }).to_vec();
        for i in 1..wire.len() - 1 {
            for bit in 0..8 {
                let mut bad = wire.clone();
                bad[i] ^= 1 << bit;
                bad.extend_from_slice(&next);
                let mut dec = Decoder::default();
                let got = decode_all(&mut dec, &bad);
                assert_eq!(got.last(), Some(&Ok(Frame { seq: 8, body: Body::Ack })), "byte {i} bit {bit}");
                // The damaged frame never decodes as a frame.
                assert!(got[..got.len() - 1].iter().all(|r| r.is_err()), "byte {i} bit {bit}: {got:?}");
            }
        }
    }

    #[test]
    fn oversize_frame_is_reported_once_and_resynchronises() {
        let mut stream = vec![0u8];
        stream.extend(std::iter::repeat_n(0x55, 500));
        let mut enc = Encoder::default();
        stream.extend_from_slice(enc.encode(&doc_alert()));
        let mut dec = Decoder::default();
        let got = decode_all(&mut dec, &stream);
        assert_eq!(got, vec![Err(DecodeError::Oversize { len: 500 }), Ok(doc_alert())]);
    }

    /// Encodes `raw` (a frame before COBS, CRC appended here) for the wire.
    fn wire_of(mut raw: Vec<u8>) -> Vec<u8> {
        let crc = crc32c(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        let mut out = vec![0u8; raw.len() + raw.len() / 254 + 3];
        let n = cobs_encode(&raw, &mut out[1..]);
        out.truncate(n + 2);
        out[0] = 0;
        out[n + 1] = 0;
        out
    }

    #[test]
    fn typed_errors_for_well_framed_nonsense() {
        let mut dec = Decoder::default();
        let one = |dec: &mut Decoder, raw: Vec<u8>| decode_all(dec, &wire_of(raw));
        assert_eq!(one(&mut dec, vec![2, 3, 0, 0]), vec![Err(DecodeError::BadVersion(2))]);
        assert_eq!(one(&mut dec, vec![1, 9, 0, 0]), vec![Err(DecodeError::UnknownType(9))]);
        assert_eq!(
            one(&mut dec, vec![1, 3, 0, 0, 0]),
            vec![Err(DecodeError::BadLength { ty: 3, len: 1, expected: 0 })]
        );
        assert!(matches!(one(&mut dec, vec![1, 2, 0, 0, 1])[..], [Err(DecodeError::Truncated { .. })]));
        let mut raw = vec![1, 1, 0, 0];
        raw.extend_from_slice(&[3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(one(&mut dec, raw), vec![Err(DecodeError::BadField { field: "state", value: 3 })]);
        let mut raw = vec![1, 1, 0, 0];
        raw.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 33]);
        assert_eq!(one(&mut dec, raw), vec![Err(DecodeError::BadField { field: "name_len", value: 33 })]);
        // A code byte pointing past the end: bytes were lost.
        assert_eq!(
            decode_all(&mut dec, &[0, 1, 2, 0]),
            vec![Err(DecodeError::Truncated { len: 2, need: 3 })]
        );
        // Valid COBS, too short for a header and a CRC.
        assert_eq!(
            decode_all(&mut dec, &[0, 2, 5, 0]),
            vec![Err(DecodeError::Truncated { len: 1, need: 8 })]
        );
        assert!(decode_all(&mut dec, &[0, 0, 0, 0]).is_empty(), "padding is not a frame");
    }

    #[test]
    fn random_bytes_never_panic_and_never_stop_decoding() {
        // xorshift64*: deterministic, no dependency.
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut enc = Encoder::default();
        let good = enc.encode(&doc_alert()).to_vec();
        let mut dec = Decoder::default();
        let mut buf = Vec::with_capacity(256);
        for i in 0..20_000 {
            buf.clear();
            let n = (rnd() % 200) as usize;
            // Mostly random bytes; sometimes a mutated real frame, which reaches the parser.
            if i % 3 == 0 {
                buf.extend_from_slice(&good);
                for _ in 0..1 + rnd() % 4 {
                    let at = (rnd() as usize) % buf.len();
                    buf[at] = rnd() as u8;
                }
            } else {
                buf.extend((0..n).map(|_| if rnd() % 8 == 0 { 0 } else { rnd() as u8 }));
            }
            for r in dec.feed(&buf) {
                let _ = r;
            }
            // Whatever came before, a clean frame after it decodes.
            assert_eq!(decode_all(&mut dec, &good).last(), Some(&Ok(doc_alert())), "iteration {i}");
        }
    }
}
