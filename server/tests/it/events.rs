//! `memoryEvents`: every change to a user's memories reaches that user's subscribers, and only
//! theirs — session deletions included.
use std::time::Duration;

use serde_json::{Value, json};

use super::fixtures::{Server, Store, Ws, add, data, gql, token};

const EVENTS: &str = "subscription { memoryEvents { action memoryId kind memory { content } } }";

fn event(m: &Value) -> &Value {
    assert_eq!(m["type"], "next", "{m}");
    &m["payload"]["data"]["memoryEvents"]
}

#[tokio::test(flavor = "multi_thread")]
async fn session_deletion_reaches_memory_event_subscribers() {
    let store = Store::embedded();
    let server = Server::start(&store, &["--no-chat"], &[]);
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);
    let init = |t: &str| json!({ "authorization": format!("Bearer {t}") });
    let mut alice_ws = Ws::connect(&server, init(&alice)).await.unwrap();
    alice_ws.subscribe("ev", EVENTS, json!({})).await;
    let mut bob_ws = Ws::connect(&server, init(&bob)).await.unwrap();
    bob_ws.subscribe("ev", EVENTS, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    add(&server, &alice, "trip", "We land in Osaka at noon.").await;
    add(
        &server,
        &alice,
        "trip",
        "The ryokan is booked for three nights.",
    )
    .await;
    add(&server, &alice, "home", "The plants need water on Sundays.").await;
    let mut added = Vec::new();
    for _ in 0..3 {
        let m = alice_ws.next().await.unwrap();
        let e = event(&m);
        assert_eq!(e["action"], "ADDED", "{m}");
        added.push(e["memoryId"].as_str().unwrap().to_owned());
    }
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ memories(filter: { session: \"trip\" }) { edges { node { id } } } }",
        json!({}),
    )
    .await;
    let mut trip: Vec<String> = data(&body)["memories"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
        .collect();
    trip.sort();
    assert_eq!(trip.len(), 2);
    assert!(trip.iter().all(|t| added.contains(t)), "{trip:?} {added:?}");

    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { deleteSession(id: \"trip\") }",
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["deleteSession"], true);
    let mut deleted = Vec::new();
    for _ in 0..2 {
        let m = alice_ws.next().await.unwrap();
        let e = event(&m);
        assert_eq!(
            (e["action"].as_str(), e["kind"].as_str()),
            (Some("DELETED"), Some("MESSAGE")),
            "{m}"
        );
        assert!(e["memory"].is_null(), "a deletion carries no content: {m}");
        deleted.push(e["memoryId"].as_str().unwrap().to_owned());
    }
    deleted.sort();
    assert_eq!(deleted, trip, "one event per memory of the session");

    // Nothing of Alice's reached Bob: the first event he hears is his own.
    add(&server, &bob, "b", "Bob's own note.").await;
    let (_, body) = gql(
        &server,
        Some(&bob),
        "{ memories { edges { node { id } } } }",
        json!({}),
    )
    .await;
    let bobs = data(&body)["memories"]["edges"][0]["node"]["id"].clone();
    let m = bob_ws.next().await.unwrap();
    assert_eq!(
        (&event(&m)["action"], &event(&m)["memoryId"]),
        (&json!("ADDED"), &bobs),
        "{m}"
    );
    // The deletion was the last thing Alice heard of: her next event is her next write.
    add(&server, &alice, "home", "Water the fern too.").await;
    let m = alice_ws.next().await.unwrap();
    assert_eq!(event(&m)["action"], "ADDED", "{m}");
    assert!(!added.contains(&event(&m)["memoryId"].as_str().unwrap().to_owned()));
}

/// A user's event subscriptions are counted: one past `limits.max_subscriptions_per_user` is
/// refused with `RATE_LIMITED`, whichever connection it comes on; ending one frees its place;
/// another user's are counted apart.
#[tokio::test(flavor = "multi_thread")]
async fn event_subscriptions_are_limited_per_user() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[("DEEP_RECALL__LIMITS__MAX_SUBSCRIPTIONS_PER_USER", "2")],
    );
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);
    let mut first = Ws::as_user(&server, &alice).await;
    first.subscribe("1", EVENTS, json!({})).await;
    first.subscribe("2", EVENTS, json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    add(&server, &alice, "s", "The first note.").await;
    for _ in 0..2 {
        assert_eq!(event(&first.next().await.unwrap())["action"], "ADDED");
    }

    let mut second = Ws::as_user(&server, &alice).await;
    second.subscribe("3", EVENTS, json!({})).await;
    let m = second.next().await.unwrap();
    assert_eq!(m["id"], "3", "{m}");
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{m}"
    );

    // Bob's places are his own.
    let mut bobs = Ws::as_user(&server, &bob).await;
    bobs.subscribe("1", EVENTS, json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    add(&server, &bob, "b", "Bob's note.").await;
    assert_eq!(event(&bobs.next().await.unwrap())["action"], "ADDED");

    // Alice ends one: a new one is let in, and hears her next write.
    first.complete("1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.subscribe("4", EVENTS, json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    add(&server, &alice, "s", "The second note.").await;
    let heard = loop {
        let m = second.next().await.unwrap();
        if m["id"] == "4" {
            break m;
        }
        assert_eq!(
            (&m["id"], &m["type"]),
            (&json!("3"), &json!("complete")),
            "{m}"
        );
    };
    assert_eq!(event(&heard)["action"], "ADDED", "{heard}");
}
