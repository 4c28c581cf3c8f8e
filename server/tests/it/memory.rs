//! The memory API over GraphQL on both stores: writes, search, isolation between users (another
//! user's ids in every id argument), pagination, bad input, settings and data rights.
use serde_json::json;

use super::fixtures::{ADD, SECRET, Server, Store, add, code, data, gql, token};

async fn memory_api_and_isolation(store: Store) {
    let server = Server::start(&store, &["--no-chat"], &[]);
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);

    // Alice and Bob write.
    add(
        &server,
        &alice,
        "a1",
        "I moved to Lisbon in May and I love the tram rides.",
    )
    .await;
    add(
        &server,
        &alice,
        "a2",
        "My sister Ana is a marine biologist.",
    )
    .await;
    add(
        &server,
        &bob,
        "b1",
        "Bob's secret: I keep my savings in a Lisbon bank.",
    )
    .await;
    let (_, body) = gql(
        &server,
        Some(&bob),
        "mutation { addMemory(input: { content: \"Bob is allergic to peanuts\" }) { id kind } }",
        json!({}),
    )
    .await;
    let bob_memory = data(&body)["addMemory"]["id"].as_str().unwrap().to_owned();
    assert_eq!(data(&body)["addMemory"]["kind"], "FACT");

    // Search finds only the caller's memories.
    let search = "query($q: String!, $m: SearchMode) { search(query: $q, topK: 10, mode: $m) { score memory { id content } } }";
    for mode in ["HYBRID", "VECTOR", "TEXT"] {
        let (_, body) = gql(
            &server,
            Some(&alice),
            search,
            json!({ "q": "Lisbon savings bank peanuts", "m": mode }),
        )
        .await;
        let hits = data(&body)["search"].as_array().unwrap();
        assert!(!hits.is_empty(), "{mode}: {body}");
        for h in hits {
            let c = h["memory"]["content"].as_str().unwrap();
            assert!(
                !c.contains("Bob") && !c.contains("peanuts"),
                "{mode}: leaked {c}"
            );
        }
    }

    // Bob's ids, used by Alice, find nothing and change nothing: every id argument.
    let cases = [
        ("query($id: ID!) { memory(id: $id) { id } }", None),
        (
            "mutation($id: ID!) { deleteMemory(id: $id) }",
            Some("NOT_FOUND"),
        ),
        (
            "mutation($id: ID!) { updateMemory(id: $id, input: { content: \"pwned\" }) { id } }",
            Some("NOT_FOUND"),
        ),
    ];
    for (query, expected) in cases {
        let (_, body) = gql(&server, Some(&alice), query, json!({ "id": bob_memory })).await;
        match expected {
            Some(c) => assert_eq!(code(&body), c, "{query}: {body}"),
            None => assert!(data(&body)["memory"].is_null(), "{query}: {body}"),
        }
    }
    let session_cases = [
        (
            "query { messages(session: \"b1\") { edges { node { content } } } }",
            None,
        ),
        ("query { session(id: \"b1\") { id } }", None),
        ("mutation { deleteSession(id: \"b1\") }", Some("NOT_FOUND")),
        (
            "mutation { renameSession(id: \"b1\", title: \"mine now\") { id } }",
            Some("NOT_FOUND"),
        ),
    ];
    for (query, expected) in session_cases {
        let (_, body) = gql(&server, Some(&alice), query, json!({})).await;
        match expected {
            Some(c) => assert_eq!(code(&body), c, "{query}: {body}"),
            None => {
                let d = data(&body);
                let empty = d["session"].is_null()
                    && d["messages"]["edges"]
                        .as_array()
                        .is_none_or(|e| e.is_empty());
                assert!(empty, "{query}: {body}");
            }
        }
    }
    let (_, body) = gql(
        &server,
        Some(&bob),
        "query($id: ID!) { memory(id: $id) { content } session(id: \"b1\") { id } }",
        json!({ "id": bob_memory }),
    )
    .await;
    assert_eq!(
        data(&body)["memory"]["content"],
        "Bob is allergic to peanuts",
        "Bob's data is intact"
    );
    assert_eq!(data(&body)["session"]["id"], "b1");

    // Relay pagination over sessions.
    let page = "query($after: String) { sessions(first: 1, after: $after) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }";
    let (_, body) = gql(&server, Some(&alice), page, json!({})).await;
    let s = &data(&body)["sessions"];
    assert_eq!(s["pageInfo"]["hasNextPage"], true);
    let first = s["edges"][0]["node"]["id"].as_str().unwrap().to_owned();
    let (_, body) = gql(
        &server,
        Some(&alice),
        page,
        json!({ "after": s["pageInfo"]["endCursor"] }),
    )
    .await;
    let s = &data(&body)["sessions"];
    assert_eq!(s["pageInfo"]["hasNextPage"], false);
    let second = s["edges"][0]["node"]["id"].as_str().unwrap();
    let mut both = [first.as_str(), second];
    both.sort();
    assert_eq!(both, ["a1", "a2"]);

    // Bad input is refused with BAD_INPUT and writes nothing.
    let bad_cases = [
        (
            ADD,
            json!({ "m": [
                { "session": "a1", "role": "USER", "content": "fine" },
                { "session": "a1", "role": "USER", "content": "" },
            ] }),
        ),
        (ADD, json!({ "m": [] })),
        ("{ search(query: \"x\", topK: 0) { score } }", json!({})),
        ("{ search(query: \"x\", topK: -3) { score } }", json!({})),
        ("{ search(query: \"\") { score } }", json!({})),
        ("{ memory(id: \"abc\") { id } }", json!({})),
        ("{ sessions(first: 0) { edges { cursor } } }", json!({})),
        (
            "{ sessions(after: \"not a cursor\") { edges { cursor } } }",
            json!({}),
        ),
        (
            "mutation { addMemory(input: { content: \"x\", importance: 7 }) { id } }",
            json!({}),
        ),
        ("mutation { updateSettings(settings: [1, 2]) }", json!({})),
        (
            "mutation { chat(input: { session: \"a1\", message: \"hi\", temperature: 9 }) { text } }",
            json!({}),
        ),
    ];
    for (query, vars) in bad_cases {
        let (status, body) = gql(&server, Some(&alice), query, vars.clone()).await;
        assert_eq!(
            (status, code(&body)),
            (200, "BAD_INPUT"),
            "{query} {vars}: {body}"
        );
    }
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"a1\") { edges { node { content } } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["messages"]["edges"].as_array().unwrap().len(),
        1,
        "nothing half-written"
    );

    // Settings and data rights, audited.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { updateSettings(settings: { tone: \"warm\" }) }",
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["updateSettings"]["tone"], "warm");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { exportMyData }",
        json!({}),
    )
    .await;
    let export = &data(&body)["exportMyData"];
    assert_eq!(export["user"]["id"], "alice");
    let text = export.to_string();
    assert!(
        text.contains("Lisbon in May") && !text.contains("peanuts") && !text.contains("savings")
    );
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { deleteMyData { existed messages memories } }",
        json!({}),
    )
    .await;
    let report = &data(&body)["deleteMyData"];
    assert_eq!(report["existed"], true);
    assert_eq!(report["messages"], 2);
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ me { memoryCount } search(query: \"Lisbon\") { score } }",
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["me"]["memoryCount"], 0);
    assert_eq!(
        data(&body)["search"].as_array().unwrap().len(),
        0,
        "no cached results survive"
    );
    let (_, body) = gql(&server, Some(&bob), "{ me { memoryCount } }", json!({})).await;
    assert_eq!(data(&body)["me"]["memoryCount"], 2, "Bob keeps his");
    let admin = token("operator", true, 600);
    let (_, body) = gql(
        &server,
        Some(&admin),
        "{ auditLog(user: \"alice\") }",
        json!({}),
    )
    .await;
    let actions: Vec<&str> = data(&body)["auditLog"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"delete_user"), "{actions:?}");

    // Logs are JSON with request ids and no message content.
    let logs = server.logs();
    assert!(logs.lines().any(|l| l.contains("\"request_id\"")), "{logs}");
    assert!(!logs.contains("Lisbon"), "message content in the logs");
    assert!(!logs.contains(SECRET), "the secret in the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_api_and_isolation_embedded() {
    memory_api_and_isolation(Store::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_api_and_isolation_postgres() {
    let store = Store::postgres().await;
    memory_api_and_isolation(store).await;
}

/// `store.dedupe_similarity`: a near-identical fact merges into the one stored (same id, tags
/// united, the merge counted); a different one does not; without the setting both are stored.
#[tokio::test(flavor = "multi_thread")]
async fn near_identical_facts_merge_when_deduplication_is_on() {
    let add = "mutation($c: String!, $t: [String!]!) { addMemory(input: { content: $c, tags: $t }) \
               { id tags metadata } }";
    let alice = token("alice", false, 600);
    for dedupe in [true, false] {
        let store = Store::embedded();
        let env: &[(&str, &str)] = if dedupe {
            &[("DEEP_RECALL__STORE__DEDUPE_SIMILARITY", "0.95")]
        } else {
            &[]
        };
        let server = Server::start(&store, &["--no-chat"], env);
        let first = gql(
            &server,
            Some(&alice),
            add,
            json!({ "c": "I am allergic to peanuts", "t": ["health"] }),
        )
        .await
        .1;
        let again = gql(
            &server,
            Some(&alice),
            add,
            json!({ "c": "I am allergic to peanuts.", "t": ["food"] }),
        )
        .await
        .1;
        let other = gql(
            &server,
            Some(&alice),
            add,
            json!({ "c": "I am allergic to penicillin", "t": [] }),
        )
        .await
        .1;
        let (first, again, other) = (
            &data(&first)["addMemory"],
            &data(&again)["addMemory"],
            &data(&other)["addMemory"],
        );
        assert_ne!(first["id"], other["id"]);
        if dedupe {
            assert_eq!(first["id"], again["id"], "{again}");
            assert_eq!(again["tags"], json!(["health", "food"]));
            assert_eq!(again["metadata"]["merged"], 1, "{again}");
        } else {
            assert_ne!(first["id"], again["id"]);
        }
    }
    // A similarity out of range stops the start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deep-recall"))
        .args(["config"])
        .env("DEEP_RECALL__STORE__DEDUPE_SIMILARITY", "1.5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dedupe_similarity"));
}

/// Memories that stay true, over GraphQL: a replacement hides the fact it replaces from
/// search (history and `asOf` still reach it), TTLs, and metadata conditions with operators.
async fn memories_stay_true(store: Store) {
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[("DEEP_RECALL__STORE__TAG_TTL_SECONDS__SCRATCH", "600")],
    );
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);
    let add = "mutation($i: MemoryInput!) { addMemory(input: $i) { id createdAt expiresAt \
               supersedes supersededBy metadata } }";
    let added = |body: &serde_json::Value| data(body)["addMemory"].clone();

    let paris = added(
        &gql(
            &server,
            Some(&alice),
            add,
            json!({ "i": { "content": "Alice lives in Paris", "metadata": { "topic": "home" } } }),
        )
        .await
        .1,
    );
    let berlin = added(
        &gql(
            &server,
            Some(&alice),
            add,
            json!({ "i": { "content": "Alice moved to Berlin", "supersedes": paris["id"],
                           "metadata": { "topic": "home", "priority": 3,
                                         "since": "2024-03-01T00:00:00Z" } } }),
        )
        .await
        .1,
    );
    assert_eq!(berlin["supersedes"], paris["id"]);
    let brief = added(
        &gql(
            &server,
            Some(&alice),
            add,
            json!({ "i": { "content": "Parking spot B12 today", "ttlSeconds": 3600,
                           "tags": ["car"],
                           "metadata": { "priority": 1, "labels": ["car"],
                                         "since": "2023-06-01T00:00:00Z" } } }),
        )
        .await
        .1,
    );
    assert!(brief["expiresAt"].is_string(), "{brief}");

    let search = "query($q: String!, $f: MemoryFilter) { search(query: $q, topK: 10, filter: $f) \
                  { memory { id } } }";
    let found = |body: &serde_json::Value| -> Vec<String> {
        data(body)["search"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["memory"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, body) = gql(
        &server,
        Some(&alice),
        search,
        json!({ "q": "Where does Alice live?" }),
    )
    .await;
    let now = found(&body);
    assert!(
        now.contains(&berlin["id"].as_str().unwrap().to_owned()),
        "{body}"
    );
    assert!(
        !now.contains(&paris["id"].as_str().unwrap().to_owned()),
        "{body}"
    );
    // As of the moment Paris was stored: Paris, and nothing written later.
    let (_, body) = gql(
        &server,
        Some(&alice),
        search,
        json!({ "q": "Where does Alice live?", "f": { "asOf": paris["createdAt"] } }),
    )
    .await;
    assert_eq!(found(&body), vec![paris["id"].as_str().unwrap()], "{body}");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "query($id: ID!) { memoryHistory(id: $id) { id supersededBy } }",
        json!({ "id": paris["id"] }),
    )
    .await;
    let history = data(&body)["memoryHistory"].as_array().unwrap().clone();
    assert_eq!(history.len(), 2, "{body}");
    assert_eq!(history[0]["supersededBy"], berlin["id"]);

    // Metadata conditions, in search and in the listing.
    for (conditions, want) in [
        (
            json!([{ "key": "priority", "op": "GTE", "value": 2 }]),
            vec![&berlin],
        ),
        (
            json!([{ "key": "labels", "op": "CONTAINS", "value": "car" }]),
            vec![&brief],
        ),
        (
            json!([{ "key": "topic", "op": "IN", "value": ["home", "work"] }]),
            vec![&berlin],
        ),
        (
            json!([{ "key": "topic", "op": "EQ", "value": "home" }]),
            vec![&berlin],
        ),
        (
            json!([{ "key": "priority", "op": "LT", "value": 2 }]),
            vec![&brief],
        ),
        // Times compare as times, whatever their offset.
        (
            json!([{ "key": "since", "op": "GT", "value": "2024-01-01T01:00:00+02:00" }]),
            vec![&berlin],
        ),
        (
            json!([{ "key": "since", "op": "LTE", "value": "2023-06-01T02:00:00+02:00" }]),
            vec![&brief],
        ),
    ] {
        let want: Vec<&str> = want.iter().map(|m| m["id"].as_str().unwrap()).collect();
        let f = json!({ "metadata": conditions });
        let (_, body) = gql(
            &server,
            Some(&alice),
            search,
            json!({ "q": "Alice Paris Berlin parking", "f": f }),
        )
        .await;
        assert_eq!(found(&body), want, "{conditions}: {body}");
        let (_, body) = gql(
            &server,
            Some(&alice),
            "query($f: MemoryFilter) { memories(filter: $f, first: 10) { edges { node { id } } } }",
            json!({ "f": f }),
        )
        .await;
        let listed: Vec<&str> = data(&body)["memories"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(listed, want, "{conditions}: {body}");
    }

    // Tags narrow a search too.
    let (_, body) = gql(
        &server,
        Some(&alice),
        search,
        json!({ "q": "Alice Paris Berlin parking", "f": { "tags": ["car"] } }),
    )
    .await;
    assert_eq!(found(&body), vec![brief["id"].as_str().unwrap()], "{body}");
    // A message's metadata is its memory's: conditions find it by what it was sent with.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation($m: [MessageInput!]!) { addMessages(messages: $m) { id } }",
        json!({ "m": [
            { "session": "s1", "role": "USER", "content": "Alice parks at the station",
              "metadata": { "channel": "sms", "priority": 5 } },
            { "session": "s1", "role": "USER", "content": "Alice parks in the garage",
              "metadata": { "channel": "email" } },
        ] }),
    )
    .await;
    assert!(body.get("errors").is_none(), "{body}");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "query($q: String!, $f: MemoryFilter) { search(query: $q, topK: 10, filter: $f) \
         { memory { content metadata } } }",
        json!({ "q": "Where does Alice park?",
                "f": { "metadata": [{ "key": "channel", "op": "EQ", "value": "sms" }] } }),
    )
    .await;
    let hits = data(&body)["search"].as_array().unwrap().clone();
    assert_eq!(hits.len(), 1, "{body}");
    assert_eq!(hits[0]["memory"]["content"], "Alice parks at the station");
    assert_eq!(hits[0]["memory"]["metadata"]["priority"], 5, "{body}");
    // A tag's time to live from the settings, when the memory names none of its own.
    let scratch = added(
        &gql(
            &server,
            Some(&alice),
            add,
            json!({ "i": { "content": "Call the plumber back", "tags": ["scratch"] } }),
        )
        .await
        .1,
    );
    let at = |v: &serde_json::Value| v.as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>();
    let lives = at(&scratch["expiresAt"]).unwrap() - at(&scratch["createdAt"]).unwrap();
    assert!((599..=601).contains(&lives.num_seconds()), "{scratch}");

    // Bad input has typed errors and writes nothing; Bob cannot supersede Alice's memory.
    let (_, body) = gql(
        &server,
        Some(&alice),
        search,
        json!({ "q": "x", "f": { "metadata": [{ "key": "priority", "op": "GT", "value": "soon" }] } }),
    )
    .await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");
    for input in [
        json!({ "content": "x", "ttlSeconds": 0 }),
        json!({ "content": "x", "ttlSeconds": 60, "expiresAt": "2999-01-01T00:00:00Z" }),
        json!({ "content": "x", "supersedes": "not-a-number" }),
    ] {
        let (_, body) = gql(&server, Some(&alice), add, json!({ "i": input })).await;
        assert_eq!(code(&body), "BAD_INPUT", "{input}: {body}");
    }
    let (_, body) = gql(
        &server,
        Some(&bob),
        add,
        json!({ "i": { "content": "Bob's takeover", "supersedes": berlin["id"] } }),
    )
    .await;
    assert_eq!(code(&body), "NOT_FOUND", "{body}");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "query($id: ID!) { memory(id: $id) { supersededBy } }",
        json!({ "id": berlin["id"] }),
    )
    .await;
    assert!(data(&body)["memory"]["supersededBy"].is_null(), "{body}");

    // An expiry can be lifted.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation($id: ID!) { updateMemory(id: $id, input: { expiresAt: null }) { expiresAt } }",
        json!({ "id": brief["id"] }),
    )
    .await;
    assert!(data(&body)["updateMemory"]["expiresAt"].is_null(), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn memories_stay_true_embedded() {
    memories_stay_true(Store::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memories_stay_true_postgres() {
    let store = Store::postgres().await;
    memories_stay_true(store).await;
}

/// A session's persona card (`createSession(persona:)`) is stored as the session's `persona`
/// memories, chunked by sentences, searched like the rest and replaced with the card; other
/// users never find them.
async fn persona_cards_become_memories(store: Store) {
    let server = Server::start(&store, &["--no-chat"], &[]);
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);
    let mut card = String::from(
        "You are Captain Rhea, a retired sea captain from Valparaiso.\n\
         You speak in short sentences and love nautical metaphors.\n",
    );
    for (i, port) in ["Cape Town", "Hobart", "Reykjavik", "Nagasaki", "Dakar"]
        .iter()
        .enumerate()
    {
        card.push_str(&format!(
            "In her {}th year at sea Rhea anchored at {port}, where she traded stories with the \
             harbour pilots and learnt the local knots. ",
            i + 10
        ));
    }
    card.push_str("\nRhea rounded Cape Horn twelve times and never lost a sailor.");
    let create = "mutation($p: String) { createSession(id: \"voyage\", title: \"Voyage\", \
                  persona: $p) { id } }";
    let (_, body) = gql(&server, Some(&alice), create, json!({ "p": card })).await;
    assert_eq!(data(&body)["createSession"]["id"], "voyage", "{body}");
    let list = "{ memories(filter: { session: \"voyage\", kinds: [PERSONA] }, first: 50) \
                { edges { node { kind content } } } }";
    let chunks = |body: &serde_json::Value| -> Vec<String> {
        data(body)["memories"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["node"]["kind"], "PERSONA");
                e["node"]["content"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let (_, body) = gql(&server, Some(&alice), list, json!({})).await;
    let stored = chunks(&body);
    assert!(stored.len() >= 3, "a long card comes as chunks: {stored:?}");
    assert!(stored.iter().all(|c| c.len() <= 400), "{stored:?}");
    let all = stored.join(" ");
    for part in [
        "Captain Rhea",
        "nautical metaphors",
        "Cape Horn twelve times",
    ] {
        assert!(all.contains(part), "{part} in {stored:?}");
    }
    let search = "query($q: String!) { search(query: $q, topK: 3, \
                  filter: { kinds: [PERSONA] }) { memory { content } } }";
    let q = json!({ "q": "How many times did the captain round Cape Horn?" });
    let (_, body) = gql(&server, Some(&alice), search, q.clone()).await;
    let top = data(&body)["search"][0]["memory"]["content"].clone();
    assert!(top.as_str().unwrap().contains("Cape Horn"), "{body}");
    let (_, body) = gql(&server, Some(&bob), search, q).await;
    assert!(
        data(&body)["search"].as_array().unwrap().is_empty(),
        "{body}"
    );
    // A new card replaces the old chunks.
    let (_, body) = gql(
        &server,
        Some(&alice),
        create,
        json!({ "p": "You are Moss, a quiet gardener." }),
    )
    .await;
    assert!(body.get("errors").is_none(), "{body}");
    let (_, body) = gql(&server, Some(&alice), list, json!({})).await;
    assert_eq!(chunks(&body), ["You are Moss, a quiet gardener."]);
}

#[tokio::test(flavor = "multi_thread")]
async fn persona_cards_become_memories_embedded() {
    persona_cards_become_memories(Store::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persona_cards_become_memories_postgres() {
    let store = Store::postgres().await;
    persona_cards_become_memories(store).await;
}
