//! Coordinators SIGKILLed during delivery, and deliveries to real brokers.

use crate::engine::{http, message, Endpoint, WAIT};
use crate::support::{eventually, wait_status, Process, TestDb, FAST_FLAGS};
use std::sync::atomic::Ordering;
use tandem_sdk::wire::{DeliveryOrder, GlobalStatus};

#[tokio::test]
async fn a_coordinator_killed_during_delivery_is_finished_by_a_restart() {
    let db = TestDb::new("msg_kill").await;
    let mut first = Process::spawn(&db.url, FAST_FLAGS).await;
    let e = Endpoint::start().await;
    e.edit(|s| s.hold = true);
    let mut req = message(
        e.check_url(),
        vec![http("one", e.url("one"), serde_json::json!(1)), http("two", e.url("two"), serde_json::json!(2))],
    );
    req.order = Some(DeliveryOrder::InOrder);
    let prepared = first.client.prepare_message(&req, None).await.unwrap();
    first.client.submit_message(&prepared.xid, Some(std::time::Duration::ZERO)).await.unwrap();
    eventually("the first delivery in flight", WAIT, || async {
        (e.arrived.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    first.kill9().await;
    e.edit(|s| s.hold = false);
    let second = Process::spawn(&db.url, FAST_FLAGS).await;
    let t = wait_status(&second.client, &prepared.xid, "delivered", WAIT).await;
    assert_eq!(t.status, GlobalStatus::Delivered);
    let one = e.acknowledged("one");
    assert!(!one.is_empty());
    // Every delivery of "one" carries the same message id: a consumer dedupes them.
    assert!(one.iter().all(|r| r.message_id == one[0].message_id));
    assert_eq!(e.acknowledged("two").len(), 1);
    let first_two = e.received.lock().unwrap().iter().position(|r| r.name == "two").unwrap();
    let last_one = e.received.lock().unwrap().iter().rposition(|r| r.name == "one").unwrap();
    assert!(last_one < first_two, "in order: two only after one was acknowledged");
}

/// A message with one HTTP delivery and one broker delivery to `destination`.
fn to_broker(e: &Endpoint, destination: &str) -> tandem_sdk::wire::MessageRequest {
    message(
        e.check_url(),
        vec![
            http("web", e.url("web"), serde_json::json!({"order": 5})),
            tandem_sdk::wire::DeliveryRequest {
                name: Some("events".into()),
                url: None,
                destination: Some(destination.into()),
                payload: Some(serde_json::json!({"order": 5, "event": "placed"})),
            },
        ],
    )
}

/// A coordinator with `destinations`, in this process.
async fn with_destinations(
    db: &TestDb,
    destinations: Vec<tandem_brokers::Destination>,
) -> (tandem_coordinator::RunningCoordinator, tandem_sdk::TandemClient) {
    let mut settings = crate::support::fast_settings(&db.url);
    settings.destinations = destinations;
    crate::support::spawn_coordinator(settings).await
}

#[tokio::test]
async fn a_message_is_published_to_nats_jetstream_and_to_rabbitmq_once_confirmed() {
    use crate::brokers::{amqp_header, nats_header, TestQueue, TestStream, NATS_URL};
    let db = TestDb::new("msg_brokers").await;
    let (stream, queue) = (TestStream::new(NATS_URL), TestQueue::new());
    let (_c, client) = with_destinations(&db, vec![stream.destination("events"), queue.destination("billing")]).await;
    let e = Endpoint::start().await;
    let mut req = to_broker(&e, "events");
    req.deliveries.push(tandem_sdk::wire::DeliveryRequest {
        name: Some("billing".into()),
        url: None,
        destination: Some("billing".into()),
        payload: Some(serde_json::json!({"bill": 5})),
    });
    let prepared = client.prepare_message(&req, None).await.unwrap();
    assert_eq!(prepared.branches[1].destination.as_deref(), Some("events"));
    assert_eq!(prepared.branches[1].callback_url, "");
    let done = client.submit_message(&prepared.xid, Some(WAIT)).await.unwrap();
    assert_eq!(done.transaction.status, GlobalStatus::Delivered, "{:?}", done.transaction);
    let id = |i: usize| tandem_sdk::wire::message_id(&prepared.xid, &prepared.branches[i].branch_id);

    let got = stream.read(1).await;
    assert_eq!(got.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(body, serde_json::json!({"order": 5, "event": "placed"}));
    assert_eq!(nats_header(&got[0], "Nats-Msg-Id"), Some(id(1)));
    assert_eq!(nats_header(&got[0], "Tandem-Xid"), Some(prepared.xid.to_string()));

    let got = queue.take(1).await;
    let body: serde_json::Value = serde_json::from_slice(&got[0].data).unwrap();
    assert_eq!(body, serde_json::json!({"bill": 5}));
    assert_eq!(got[0].properties.message_id().as_ref().map(|s| s.to_string()), Some(id(2)));
    assert_eq!(amqp_header(&got[0], "tandem-message-id"), Some(id(2)));
    assert_eq!(e.acknowledged("web").len(), 1);

    // An aborted message to the same destinations publishes nothing anywhere.
    let aborted = client.prepare_message(&req, None).await.unwrap();
    let done = client.abort_message(&aborted.xid, Some(WAIT)).await.unwrap();
    assert_eq!(done.transaction.status, GlobalStatus::RolledBack);
    assert!(done.transaction.branches.iter().all(|b| b.status == tandem_sdk::wire::BranchStatus::Skipped));
    assert_eq!(stream.count().await, 1, "nothing more in the stream");
    assert_eq!(e.acknowledged("web").len(), 1, "nothing more over HTTP");
    let marker = tandem_sdk::wire::DeliveryRequest {
        name: None,
        url: None,
        destination: Some("billing".into()),
        payload: Some(serde_json::json!({"marker": true})),
    };
    // The next message in the queue after the first is the marker's: nothing came between.
    let last = client.prepare_message(&message(e.check_url(), vec![marker]), None).await.unwrap();
    client.submit_message(&last.xid, Some(WAIT)).await.unwrap();
    let next = queue.take(1).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&next[0].data).unwrap(),
        serde_json::json!({"marker": true})
    );
    stream.delete().await;
    queue.delete().await;
}

#[tokio::test]
async fn a_broker_down_during_delivery_gets_the_message_once_it_is_back() {
    use crate::brokers::TestStream;
    use crate::nats_server::NatsServer;
    let db = TestDb::new("msg_nats_down").await;
    let mut nats = NatsServer::start().await;
    let stream = TestStream::new(&nats.url());
    let (_c, client) = with_destinations(&db, vec![stream.destination("events")]).await;
    let e = Endpoint::start().await;
    // Created and working before the outage.
    let warm = client.prepare_message(&to_broker(&e, "events"), None).await.unwrap();
    client.submit_message(&warm.xid, Some(WAIT)).await.unwrap();
    assert_eq!(stream.read(1).await.len(), 1);

    nats.stop().await;
    let prepared = client.prepare_message(&to_broker(&e, "events"), None).await.unwrap();
    client.submit_message(&prepared.xid, Some(std::time::Duration::ZERO)).await.unwrap();
    let t = eventually("the publish failing while NATS is down", WAIT, || async {
        let t = client.get(&prepared.xid).await.ok()?;
        (t.branches[1].attempts >= 2).then_some(t)
    })
    .await;
    assert_eq!(t.status, GlobalStatus::Delivering);
    assert!(t.branches[1].last_error.as_deref().is_some_and(|e| e.contains("publish to events")), "{t:?}");
    assert_eq!(t.branches[0].status, tandem_sdk::wire::BranchStatus::Committed, "the HTTP delivery went on");

    nats.restart().await;
    wait_status(&client, &prepared.xid, "delivered", WAIT).await;
    let got = stream.read(2).await;
    assert_eq!(got.len(), 2, "delivered once after the restart (the stream deduplicates on the message id)");
    let second: serde_json::Value = serde_json::from_slice(&got[1].payload).unwrap();
    assert_eq!(second["event"], "placed");
}
