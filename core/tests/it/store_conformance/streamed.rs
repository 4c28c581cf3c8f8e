//! Appends whose writes arrive in batches (ingest's pipeline): one transaction all the same.
use futures::StreamExt;
use recall_core::Result;

use super::*;

crate::fixtures::both_backends! {
    batches_are_written_in_order;
    a_failing_batch_leaves_nothing;
}

/// The stream of `batches` as the store takes it.
fn stream(
    batches: Vec<Result<Vec<MessageWrite>>>,
) -> futures::stream::BoxStream<'static, Result<Vec<MessageWrite>>> {
    futures::stream::iter(batches).boxed()
}

async fn batches_are_written_in_order(t: &TestStore) {
    let s = t.store();
    let line = |i: u32| {
        write(
            msg(
                if i < 3 { "s1" } else { "s2" },
                Role::User,
                &format!("line {i}"),
                at(1, i),
                &[],
            ),
            &[1.0, i as f32],
        )
    };
    let out = s
        .append_message_stream(
            "u",
            stream(vec![
                Ok(vec![line(1), line(2)]),
                Ok(vec![]),
                Ok(vec![line(3)]),
                Ok(vec![line(4)]),
            ]),
        )
        .await
        .unwrap();
    let contents: Vec<&str> = out.iter().map(|a| a.message.content.as_str()).collect();
    assert_eq!(contents, ["line 1", "line 2", "line 3", "line 4"]);
    assert!(out.iter().all(|a| a.memory_ids.len() == 1), "{out:?}");
    let ids: Vec<i64> = out.iter().map(|a| a.message.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // Both sessions, their messages in order, and every memory searchable.
    let s2 = s.list_messages("u", "s2", &page(10)).await.unwrap();
    let listed: Vec<&str> = s2.items.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(listed, ["line 3", "line 4"]);
    let hits = s.search("u", &query(&[1.0, 0.0], 10)).await.unwrap().hits;
    assert_eq!(hits.len(), 4);
    // Another user sees none of it; an empty stream writes nothing.
    assert!(
        s.search("v", &query(&[1.0, 0.0], 10))
            .await
            .unwrap()
            .hits
            .is_empty()
    );
    assert!(
        s.append_message_stream("v", stream(vec![]))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.get_user("v").await.unwrap().is_none());
}

/// Nothing of user "u" is stored.
async fn nothing(t: &TestStore, what: &str) {
    assert!(t.store().get_user("u").await.unwrap().is_none(), "{what}");
    for table in ["messages", "memories", "memory_embeddings"] {
        assert_eq!(t.count_rows(table).await, 0, "{what}: {table}");
    }
}

async fn a_failing_batch_leaves_nothing(t: &TestStore) {
    let s = t.store();
    let ok = |i: u32| {
        write(
            msg("s", Role::User, &format!("fine {i}"), at(1, i), &[]),
            &[1.0, 0.0],
        )
    };
    // The maker of the batches fails after the first one (an embedding error, say).
    let err = s
        .append_message_stream(
            "u",
            stream(vec![
                Ok(vec![ok(1), ok(2)]),
                Err(recall_core::Error::unavailable("the embedder went away")),
                Ok(vec![ok(3)]),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    nothing(t, "stream error").await;
    // A bad message in a later batch: refused, numbered from the first message of the call.
    let err = s
        .append_message_stream(
            "u",
            stream(vec![
                Ok(vec![ok(1), ok(2)]),
                Ok(vec![
                    ok(3),
                    write(msg("s", Role::User, "   ", at(1, 4), &[]), &[1.0, 0.0]),
                ]),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("message 4"), "{err}");
    nothing(t, "bad message").await;
    // The database refusing a row of the last batch.
    t.sabotage().await;
    let err = s
        .append_message_stream(
            "u",
            stream(vec![
                Ok(vec![ok(1)]),
                Ok(vec![write(
                    msg("s", Role::User, "boom", at(1, 2), &[]),
                    &[1.0, 0.0],
                )]),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    nothing(t, "database error").await;
    // The store still works afterwards.
    let out = s
        .append_message_stream("u", stream(vec![Ok(vec![ok(1)]), Ok(vec![ok(2)])]))
        .await
        .unwrap();
    assert_eq!(out.len(), 2);
}
