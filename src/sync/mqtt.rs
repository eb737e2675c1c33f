//! The real [`Link`]: MQTT 3.1.1 over TLS through `rumqttc`.
//!
//! Each connection gets a fresh client and its own event thread, which ends at the first error.
//! Nothing of a dead connection is reused: the forwarder re-reads unacknowledged patterns from
//! the store, so a publish is either acknowledged on the connection that sent it or sent again
//! (a duplicate upstream carries the same idempotency key).

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Client, ConnectReturnCode, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};

use super::{Link, LinkError, LinkEvent, Token};

#[derive(Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub keep_alive: Duration,
    pub inflight: u16,
    /// Retained on the status topic by the broker when this device vanishes.
    pub last_will: Option<(String, Vec<u8>)>,
}

/// What the event thread reports.
enum Raw {
    ConnAck,
    Refused(String),
    PublishSent(u16),
    PubAck(u16),
    Message(String, Vec<u8>),
    Error(String),
}

struct Session {
    client: Client,
    events: Receiver<Raw>,
    /// Tokens of publishes not yet given a packet id, in the order they were queued.
    unassigned: VecDeque<Token>,
    by_pkid: HashMap<u16, Token>,
}

pub struct MqttLink {
    settings: MqttSettings,
    session: Option<Session>,
    next_token: Token,
}

impl MqttLink {
    pub fn new(settings: MqttSettings) -> Self {
        Self { settings, session: None, next_token: 1 }
    }
}

fn pump(mut connection: rumqttc::Connection, tx: mpsc::Sender<Raw>) {
    for ev in connection.iter() {
        let raw = match ev {
            Ok(Event::Incoming(Packet::ConnAck(a))) if a.code == ConnectReturnCode::Success => Raw::ConnAck,
            Ok(Event::Incoming(Packet::ConnAck(a))) => Raw::Refused(format!("{:?}", a.code)),
            Ok(Event::Incoming(Packet::PubAck(a))) => Raw::PubAck(a.pkid),
            Ok(Event::Incoming(Packet::Publish(p))) => Raw::Message(p.topic, p.payload.to_vec()),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Raw::PublishSent(pkid),
            Ok(_) => continue,
            Err(e) => Raw::Error(e.to_string()),
        };
        let stop = matches!(raw, Raw::Error(_) | Raw::Refused(_));
        if tx.send(raw).is_err() || stop {
            return;
        }
    }
}

impl Link for MqttLink {
    fn connect(&mut self) -> Result<(), LinkError> {
        self.disconnect();
        let s = &self.settings;
        let mut opts = MqttOptions::new(&s.client_id, &s.host, s.port);
        opts.set_keep_alive(s.keep_alive.max(Duration::from_secs(1)))
            .set_clean_session(true)
            .set_inflight(s.inflight.max(1))
            .set_max_packet_size(4 << 20, 4 << 20)
            .set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(s.tls.clone())));
        if let Some((topic, payload)) = &s.last_will {
            opts.set_last_will(LastWill::new(topic, payload.clone(), QoS::AtLeastOnce, true));
        }
        let (client, connection) = Client::new(opts, 256);
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || pump(connection, tx))
            .map_err(|e| LinkError::Setup(format!("starting the MQTT thread: {e}")))?;
        self.session =
            Some(Session { client, events: rx, unassigned: VecDeque::new(), by_pkid: HashMap::new() });
        Ok(())
    }

    fn disconnect(&mut self) {
        if let Some(s) = self.session.take() {
            // Best effort; dropping the client ends the event thread either way.
            let _ = s.client.try_disconnect();
        }
    }

    fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<Token, LinkError> {
        let s = self.session.as_mut().ok_or(LinkError::NotConnected)?;
        s.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|e| LinkError::Publish { topic: topic.to_string(), message: e.to_string() })?;
        let token = self.next_token;
        self.next_token += 1;
        s.unassigned.push_back(token);
        Ok(token)
    }

    fn subscribe(&mut self, filter: &str) -> Result<(), LinkError> {
        let s = self.session.as_mut().ok_or(LinkError::NotConnected)?;
        s.client
            .try_subscribe(filter, QoS::AtLeastOnce)
            .map_err(|e| LinkError::Publish { topic: filter.to_string(), message: e.to_string() })
    }

    fn poll(&mut self, timeout: Duration) -> Option<LinkEvent> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let s = self.session.as_mut()?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let raw = match s.events.recv_timeout(left) {
                Ok(raw) => raw,
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => Raw::Error("connection closed".into()),
            };
            match raw {
                Raw::ConnAck => return Some(LinkEvent::Connected),
                Raw::PublishSent(pkid) => {
                    if let Some(token) = s.unassigned.pop_front() {
                        s.by_pkid.insert(pkid, token);
                    }
                }
                Raw::PubAck(pkid) => {
                    if let Some(token) = s.by_pkid.remove(&pkid) {
                        return Some(LinkEvent::Acked(token));
                    }
                }
                Raw::Message(topic, payload) => return Some(LinkEvent::Message { topic, payload }),
                Raw::Refused(why) => {
                    self.disconnect();
                    return Some(LinkEvent::Disconnected(format!("broker refused the connection: {why}")));
                }
                Raw::Error(why) => {
                    self.disconnect();
                    return Some(LinkEvent::Disconnected(why));
                }
            }
        }
    }
}
