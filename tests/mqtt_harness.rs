//! Tests of the MQTT test harness itself (tests/common/mqtt.rs): if the broker did not keep
//! sessions across restarts or accepted any certificate, the uplink tests built on it would
//! prove nothing.

#[path = "common/mqtt.rs"]
mod mqtt;

use std::time::{Duration, Instant};

use mqtt::{client_options, try_connect, Backend, Broker, Msg, Pki, TIMEOUT};
use rumqttc::{Client, Event, Incoming, Outgoing, QoS};

/// Publishes one QoS 1 message as the device (CN "field-7") and returns after the PubAck.
fn device_publish(broker: &Broker, pki: &Pki, topic: &str, payload: &[u8]) {
    let opts = client_options(broker, "field-7", &pki.ca, &pki.device_cert, &pki.device_key);
    let (client, mut connection) = Client::new(opts, 8);
    client.publish(topic, QoS::AtLeastOnce, false, payload).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut sent = None;
    while Instant::now() < deadline {
        match connection.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => sent = Some(pkid),
            Ok(Ok(Event::Incoming(Incoming::PubAck(ack)))) if sent == Some(ack.pkid) => return,
            Ok(Ok(_)) => {}
            other => panic!("device publish to {topic}: {other:?}"),
        }
    }
    panic!("device publish to {topic}: no PubAck within {TIMEOUT:?}");
}

fn has(msgs: &[Msg], topic: &str, payload: &[u8]) -> bool {
    msgs.iter().any(|m| m.topic == topic && m.payload == payload)
}

#[test]
fn persistent_session_survives_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"));
    let mut broker = Broker::start(&pki, &dir.path().join("broker"));
    let wait = Duration::from_secs(5);

    // Round trip while online, retain flag included.
    let backend = Backend::connect(&broker, &pki, "fleet/#");
    backend.publish("fleet/field-7/rules", b"v1", true);
    assert!(backend.wait_for(wait, |m| has(m, "fleet/field-7/rules", b"v1")), "{:?}", backend.messages());
    assert!(backend.messages().iter().all(|m| !m.retain), "a live delivery is not flagged retained");

    // The backend goes offline; one message is queued before the restart (so it must be in the
    // persistence database) and one after (so the subscription must have been restored).
    drop(backend);
    device_publish(&broker, &pki, "fleet/field-7/pattern", b"before restart");
    broker.stop();
    assert!(!broker.is_running());
    broker.start_again();
    assert!(broker.is_running());
    device_publish(&broker, &pki, "fleet/field-7/pattern", b"after restart");

    let backend = Backend::connect(&broker, &pki, "fleet/#");
    let both = |m: &[Msg]| {
        has(m, "fleet/field-7/pattern", b"before restart")
            && has(m, "fleet/field-7/pattern", b"after restart")
    };
    assert!(backend.wait_for(wait, both), "queued messages lost: {:?}\n{}", backend.messages(), broker.log());
    let patterns: Vec<_> =
        backend.messages().into_iter().filter(|m| m.topic.ends_with("/pattern")).map(|m| m.payload).collect();
    assert_eq!(patterns, [b"before restart".to_vec(), b"after restart".to_vec()], "in order, once each");
    // The retained message was persisted too: a new subscription gets it, flagged retained.
    let retained = |m: &[Msg]| m.iter().any(|m| m.retain && m.payload == b"v1");
    assert!(backend.wait_for(wait, retained), "retained message lost: {:?}", backend.messages());

    // A connected backend rides through a restart by itself.
    broker.stop();
    broker.start_again();
    device_publish(&broker, &pki, "fleet/field-7/pattern", b"live again");
    assert!(
        backend.wait_for(wait, |m| has(m, "fleet/field-7/pattern", b"live again")),
        "{:?}",
        backend.messages()
    );
}

#[test]
fn only_certificates_from_the_fleet_ca_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"));
    let broker = Broker::start(&pki, &dir.path().join("broker"));

    try_connect(&broker, &pki.ca, &pki.device_cert, &pki.device_key)
        .unwrap_or_else(|e| panic!("device refused: {e}"));
    try_connect(&broker, &pki.ca, &pki.backend_cert, &pki.backend_key)
        .unwrap_or_else(|e| panic!("backend refused: {e}"));
    let rogue = try_connect(&broker, &pki.ca, &pki.rogue_cert, &pki.rogue_key);
    assert!(rogue.is_err(), "a certificate from another CA was accepted");

    // The client side checks the broker too: trusting only the rogue CA, the broker is refused.
    let other_ca = pki.dir.join("rogue-ca.pem");
    let wrong = try_connect(&broker, &other_ca, &pki.device_cert, &pki.device_key);
    assert!(wrong.is_err(), "client accepted a broker certificate from an untrusted CA");
    assert!(broker.is_running());
}
