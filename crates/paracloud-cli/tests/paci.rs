//! PaCI as an instance meets it: the socket the daemon serves for each instance (the one mounted
//! at /run/paracloud/paci.sock inside it), spoken to with the SDK and with hand-written HTTP.
//! Every call with good and bad input, the refusal to act for another instance, and events with
//! their acknowledgements and deadlines.

mod common;

use std::time::{Duration, Instant};

use common::*;
use paracloud_paci_sdk::{Ack, Error, EventKind, LoadReport, Paci};
use serde_json::Value;

const APP: &str = r#"
app = "paci"

[autoscale]
policy = "hpa"
entry = "one"

[services.one]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
stop_grace_period = "2s"
ports = [{ port = 9000, protocol = "http" }]
replicas = 2
resources = { cpu = 1 }
autoscale = { min = 1, max = 3, cpu_min = 0.5, cpu_max = 1 }

[services.other]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
"#;

fn up(p: &Platform) {
    let manifest = p.manifest("paci", APP);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
}

fn paci(p: &Platform, instance: &str) -> Paci {
    Paci::at(p.paci_socket("paci", instance))
}

fn refused(result: Result<impl std::fmt::Debug, Error>) -> (u16, String) {
    match result {
        Err(Error::Refused { status, message }) => (status.as_u16(), message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The weight of `instance`'s backend on the listener of port 9000, as the data plane was told.
fn dataplane_weight(p: &Platform, instance: &str) -> Option<u64> {
    let text = std::fs::read_to_string(p.root().join("dataplane.json")).ok()?;
    let config: Value = serde_json::from_str(&text).ok()?;
    config["listeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == "paci/one:9000")?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["id"] == instance)?["weight"]
        .as_u64()
}

fn wait_weight(p: &Platform, instance: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while dataplane_weight(p, instance) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{instance}: data-plane weight {:?}, want {want}",
            dataplane_weight(p, instance)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_paci_call_answers_good_and_bad_input() {
    let p = Platform::new();
    up(&p);
    let one = paci(&p, "one.1");
    let socket = p.paci_socket("paci", "one.1");

    // who am I
    let me = one.whoami().await.unwrap();
    assert_eq!(
        (me.app.as_str(), me.service.as_str(), me.instance.as_str()),
        ("paci", "one", "one.1")
    );
    assert_eq!(me.index, 1);
    assert_eq!(me.resources.cpu, Some(1.0));
    assert_eq!(me.addresses.ports, [9000]);
    assert_eq!(me.weight, 100);
    let ps = p.ps("paci");
    let listed = ps.iter().find(|i| field(i, "instance") == "one.1").unwrap();
    assert_eq!(me.addresses.instance.to_string(), field(listed, "address"));

    // peers
    let peers = one.peers(None).await.unwrap();
    let names: Vec<&str> = peers.peers.iter().map(|p| p.instance.as_str()).collect();
    assert_eq!(names, ["one.1", "one.2"]);
    assert!(peers.peers.iter().all(|p| p.ready));
    assert_eq!(one.peers(Some("other")).await.unwrap().peers.len(), 1);
    let (status, message) = refused(one.peers(Some("nope")).await);
    assert_eq!(status, 404);
    assert!(
        message.contains("no service named nope (it has: one, other)"),
        "{message}"
    );
    let (status, body) = unix_http(&socket, "GET", "/v1/peers?servce=one", "");
    assert_eq!(status, 400);
    assert!(body.contains("unknown field `servce`"), "{body}");

    // load
    let report = LoadReport {
        in_flight: Some(2),
        queue: Some(1),
        capacity: Some(300.0),
        custom: [("cache_hit".to_string(), 0.9)].into(),
    };
    assert_eq!(one.report_load(&report).await.unwrap(), report);
    for (body, wanted) in [
        ("{}", "the report is empty"),
        (
            r#"{"capacity": -3}"#,
            "capacity -3 is not a positive number",
        ),
        (r#"{"in_flight": "many"}"#, "in_flight"),
        (r#"{"inflight": 2}"#, "unknown field `inflight`"),
        (r#"{"custom": {"a b": 1}}"#, "custom figure \\\"a b\\\""),
        ("{not json", "the request body is not valid"),
    ] {
        let (status, answer) = unix_http(&socket, "PUT", "/v1/load", body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(wanted), "{body}: {answer}");
    }

    // weight: applied by the data plane, in percent of the capacity weight (1 core: 1000)
    wait_weight(&p, "one.1", 1000);
    assert_eq!(one.set_weight(Some(20)).await.unwrap(), 20);
    wait_weight(&p, "one.1", 200);
    assert_eq!(
        dataplane_weight(&p, "one.2"),
        Some(1000),
        "only one.1 changed"
    );
    assert_eq!(one.whoami().await.unwrap().weight, 20);
    let (status, message) = refused(one.set_weight(Some(101)).await);
    assert_eq!(status, 400);
    assert!(message.contains("weight 101 is more than 100"), "{message}");
    let (status, body) = unix_http(&socket, "PUT", "/v1/weight", r#"{"weight": -1}"#);
    assert_eq!(status, 400, "{body}");
    wait_weight(&p, "one.1", 200);
    assert_eq!(one.set_weight(None).await.unwrap(), 100);
    wait_weight(&p, "one.1", 1000);

    // peers, as a stream: the list now, then again when it changes (the next request scales out)
    let mut watching = one.watch_peers(Some("one")).await.unwrap();
    let first = watching.next().await.unwrap().unwrap();
    assert_eq!(first.peers.len(), 2);
    let (status, body) = unix_http(&socket, "GET", "/v1/peers?watch=maybe", "");
    assert_eq!(status, 400, "{body}");

    // replicas, within the manifest's bounds
    let answer = one
        .ask_replicas("one", 3, Some("queue growing"))
        .await
        .unwrap();
    assert_eq!((answer.replicas, answer.min, answer.max), (3, 1, 3));
    p.wait_ps(
        "paci",
        Duration::from_secs(20),
        "three instances of one",
        |ps| {
            ps.iter()
                .filter(|i| field(i, "service") == "one" && field(i, "state") == "running")
                .count()
                == 3
        },
    );
    // The stream saw the third instance come, and become ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), watching.next())
            .await
            .expect("a change of the peers came")
            .unwrap()
            .unwrap();
        if next.peers.len() == 3 && next.peers.iter().all(|p| p.ready) {
            assert_eq!(next.peers[2].instance, "one.3");
            break;
        }
        assert!(Instant::now() < deadline, "{next:?}");
    }
    drop(watching);
    let (status, message) = refused(one.ask_replicas("one", 9, None).await);
    assert_eq!(status, 409);
    assert!(message.contains("outside its bounds 1..=3"), "{message}");
    let (status, message) = refused(one.ask_replicas("other", 11, None).await);
    assert_eq!(status, 409);
    assert!(
        message.contains("11 instances of other is outside its bounds 1..=10"),
        "{message}"
    );
    let (status, message) = refused(one.ask_replicas("nope", 1, None).await);
    assert_eq!(status, 404);
    assert!(message.contains("no service named nope"), "{message}");
    let (status, body) = unix_http(
        &socket,
        "PUT",
        "/v1/services/one/replicas",
        r#"{"replicas": "3"}"#,
    );
    assert_eq!(status, 400, "{body}");

    // events and acknowledgements
    let (status, message) = refused(one.ack(999, &Ack::default()).await);
    assert_eq!(status, 404);
    assert!(message.contains("no event 999"), "{message}");
    let (status, body) = unix_http(&socket, "POST", "/v1/events/abc/ack", "{}");
    assert_eq!(status, 400);
    assert!(
        body.contains("event id \\\"abc\\\" is not a number"),
        "{body}"
    );

    // anything else
    let (status, body) = unix_http(&socket, "GET", "/v2/whoami", "");
    assert_eq!(status, 404);
    assert!(body.contains("no such PaCI route"), "{body}");

    let events = p.events("paci");
    assert!(events.contains("weight 20% (set through PaCI)"), "{events}");
    assert!(
        events.contains("scaled to 3 (asked by one.1 through PaCI: queue growing)"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_speaks_only_for_itself() {
    let p = Platform::new();
    let manifest = p.manifest(
        "paci",
        &APP.replace(
            "[services.other]\nimage = \"host\"\ncommand = [\"/bin/sleep\", \"100000\"]",
            // Inside the sandbox: who the socket says it is, what else it can see, and whether
            // it can replace the socket.
            "[services.other]\nimage = \"host\"\ncommand = [\"/usr/bin/python3\", \"-c\", '''\
import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ['PARACLOUD_PACI'])
s.sendall(b'GET /v1/whoami HTTP/1.1\\r\\nHost: paci\\r\\nConnection: close\\r\\n\\r\\n')
answer = b''
while True:
    part = s.recv(65536)
    if not part:
        break
    answer += part
print('WHOAMI', json.loads(answer.split(b'\\r\\n\\r\\n', 1)[1])['instance'])
print('SEES', sorted(os.listdir('/run/paracloud')))
try:
    open('/run/paracloud/paci.sock.new', 'w')
    print('WRITE allowed')
except OSError:
    print('WRITE refused')
sys.stdout.flush()
time.sleep(100000)
''']",
        ),
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);

    // Each socket speaks for its own instance.
    assert_eq!(paci(&p, "one.1").whoami().await.unwrap().instance, "one.1");
    assert_eq!(paci(&p, "one.2").whoami().await.unwrap().instance, "one.2");

    // Inside an instance, only its own socket is there, and it cannot be replaced.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = p.ok(&["logs", "-a", "paci", "other.1"]);
        if log.contains("WRITE") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(log.contains("WHOAMI other.1"), "{log}");
    assert!(log.contains("SEES ['paci.sock']"), "{log}");
    assert!(log.contains("WRITE refused"), "{log}");

    // An event sent to one.2 cannot be answered through one.1's socket.
    let mut events = paci(&p, "one.2").events().await.unwrap();
    p.ok(&["scale", "-a", "paci", "one=1", "-d"]);
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the drain event came")
        .unwrap()
        .unwrap();
    assert!(matches!(event.kind, EventKind::Drain { .. }), "{event:?}");
    let (status, message) = refused(paci(&p, "one.1").ack(event.id, &Ack::default()).await);
    assert_eq!(status, 404);
    assert!(message.contains("sent to another instance"), "{message}");
    paci(&p, "one.2")
        .ack(event.id, &Ack::default())
        .await
        .unwrap();
    p.wait_event("paci", "drain: acknowledged", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_instance_and_deadlines_behave_as_documented() {
    let p = Platform::new();
    // No autoscaler here: the CPU changes only when the test says so.
    let manifest = p.manifest(
        "paci",
        &APP.replace("[autoscale]\npolicy = \"hpa\"\nentry = \"one\"\n", "")
            .replace(
                "autoscale = { min = 1, max = 3, cpu_min = 0.5, cpu_max = 1 }\n",
                "",
            ),
    );
    assert!(!std::fs::read_to_string(&manifest)
        .unwrap()
        .contains("autoscale"));
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);

    // resize: sent when the CPU of a running instance changes; nothing waits for it.
    let mut events = paci(&p, "one.1").events().await.unwrap();
    p.ok(&["scale", "-a", "paci", "one", "--cpu", "0.5"]);
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the resize event came")
        .unwrap()
        .unwrap();
    match &event.kind {
        EventKind::Resize { cpu, .. } => assert_eq!(*cpu, Some(0.5)),
        other => panic!("expected resize, got {other:?}"),
    }
    let answer = paci(&p, "one.1")
        .ack(event.id, &Ack::default())
        .await
        .unwrap();
    assert!(answer.before_deadline_ms > 0);
    // A second answer to the same event finds nothing waiting.
    let (status, _) = refused(paci(&p, "one.1").ack(event.id, &Ack::default()).await);
    assert_eq!(status, 404);
    drop(events);

    // drain without an answer: the platform waits until the deadline (the stop grace period,
    // 2 s here), records it, and stops the instance anyway.
    let mut events = paci(&p, "one.2").events().await.unwrap();
    let asked = Instant::now();
    p.ok(&["scale", "-a", "paci", "one=1", "-d"]);
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the drain event came")
        .unwrap()
        .unwrap();
    assert!(matches!(event.kind, EventKind::Drain { .. }));
    let (status, message) = refused(
        paci(&p, "one.2")
            .ack(
                event.id,
                &Ack {
                    state: Some(serde_json::json!(1)),
                    error: None,
                },
            )
            .await,
    );
    assert_eq!(status, 400);
    assert!(
        message.contains("only an answer to migrate carries `state`"),
        "{message}"
    );
    let events_log = p.wait_event(
        "paci",
        "drain: no answer by its deadline",
        Duration::from_secs(10),
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(1900),
        "the platform waited for the deadline"
    );
    p.wait_ps("paci", Duration::from_secs(10), "one.2 gone", |ps| {
        !ps.iter().any(|i| field(i, "instance") == "one.2")
    });
    assert!(events_log.contains("one.2"), "{events_log}");

    // An answer after the deadline finds nothing waiting (resize waits 5 s).
    let mut events = paci(&p, "one.1").events().await.unwrap();
    p.ok(&["scale", "-a", "paci", "one", "--cpu", "1"]);
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the second resize event came")
        .unwrap()
        .unwrap();
    let wait = event.deadline.saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    tokio::time::sleep(Duration::from_millis(wait + 100)).await;
    let (status, message) = refused(paci(&p, "one.1").ack(event.id, &Ack::default()).await);
    assert_eq!(status, 404);
    assert!(message.contains("its deadline passed"), "{message}");
    drop(events);

    // A service of an application without scaling bounds cannot be asked for.
    let plain = p.manifest(
        "plain",
        "app = \"plain\"\n[services.solo]\nimage = \"host\"\ncommand = [\"/bin/sleep\", \"100000\"]\nstop_signal = \"KILL\"\n",
    );
    p.ok(&["up", "-f", plain.to_str().unwrap()]);
    let solo = Paci::at(p.paci_socket("plain", "solo.1"));
    let (status, message) = refused(solo.ask_replicas("solo", 2, None).await);
    assert_eq!(status, 409);
    assert!(message.contains("solo has no scaling bounds"), "{message}");
    assert_eq!(solo.whoami().await.unwrap().app, "plain");

    // An instance that does not follow its events is stopped as before, without a drain.
    p.ok(&["scale", "-a", "paci", "other=0"]);
    p.wait_ps("paci", Duration::from_secs(10), "other gone", |ps| {
        !ps.iter().any(|i| field(i, "service") == "other")
    });
    let log = p.events("paci");
    assert!(
        !log.lines()
            .any(|l| l.contains("other.1") && l.contains("drain")),
        "{log}"
    );
}
