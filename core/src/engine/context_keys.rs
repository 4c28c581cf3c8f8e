//! Context keys' neighbourhood (see [`crate::memory_keys::context_key_text`]): the turns a
//! key quotes (the turn before, the turn before a question), the keys waiting for their
//! reply, and dropping the keys that quote a turn when it changes or goes.
use std::collections::HashMap;

use super::*;
use crate::memory_keys as mk;
use crate::types::{MetadataCondition, MetadataOp};

/// Turns whose neighbours are asked for at once (two subqueries each).
const NEIGHBOUR_BATCH: usize = 100;
/// Keys deleted per call.
const DELETE_BATCH: usize = 500;

impl Engine {
    /// For each message of `memories` in a session, the message before it (in conversation
    /// order; in `memories` or the last before them).
    pub(super) async fn turns_before(
        &self,
        user: &str,
        memories: &[Memory],
    ) -> Result<HashMap<i64, Memory>> {
        let mut turns: Vec<&Memory> = memories
            .iter()
            .filter(|m| m.kind == MemoryKind::Message && m.session.is_some())
            .collect();
        turns.sort_by(|a, b| {
            (&a.session, a.message_id, a.id).cmp(&(&b.session, b.message_id, b.id))
        });
        let mut out = HashMap::new();
        let mut firsts = Vec::new();
        for session in turns.chunk_by(|a, b| a.session == b.session) {
            firsts.push(session[0]);
            for w in session.windows(2) {
                out.insert(w[1].id, w[0].clone());
            }
        }
        // The first of each session's turns here: the one before it was read by an earlier
        // run (or there is none).
        out.extend(self.stored_turns_before(user, &firsts).await?);
        Ok(out)
    }

    /// The turn before each of `turns` in its session as stored (unexpired), for those that
    /// have one.
    pub(super) async fn stored_turns_before(
        &self,
        user: &str,
        turns: &[&Memory],
    ) -> Result<HashMap<i64, Memory>> {
        let now = Utc::now();
        let mut out = HashMap::new();
        for chunk in turns.chunks(NEIGHBOUR_BATCH) {
            let ids: Vec<i64> = chunk.iter().map(|m| m.id).collect();
            let order: HashMap<i64, (Option<i64>, i64)> =
                chunk.iter().map(|m| (m.id, (m.message_id, m.id))).collect();
            for (centre, n) in self.store.neighbours(user, &ids, 1).await? {
                if (n.message_id, n.id) < order[&centre] && n.expires_at.is_none_or(|t| t > now) {
                    out.insert(centre, n);
                }
            }
        }
        Ok(out)
    }

    /// For the keys to write whose turn [answers](mk::answers) the turn before it, the turn
    /// before that question in its session (from `previous`, else as stored), by the
    /// question's id.
    pub(super) async fn asked_about(
        &self,
        user: &str,
        triples: &[(&Memory, &Memory, Option<&Memory>)],
        previous: &HashMap<i64, Memory>,
    ) -> Result<HashMap<i64, Memory>> {
        let mut out = HashMap::new();
        let mut stored: Vec<&Memory> = Vec::new();
        for &(m, before, _) in triples {
            if !mk::answers(before, m) {
                continue;
            }
            match previous.get(&before.id) {
                Some(p) => {
                    out.insert(before.id, p.clone());
                }
                None => stored.push(before),
            }
        }
        stored.sort_by_key(|m| m.id);
        stored.dedup_by_key(|m| m.id);
        out.extend(self.stored_turns_before(user, &stored).await?);
        Ok(out)
    }

    /// Of the turns before `turns` (the new turns a run keys), those whose context keys hold
    /// no reply (they have no `next`): the ids of those keys by their turn, and each such turn's own
    /// turn before, from which its key is written again with the reply where that goes on
    /// with them.
    pub(super) async fn replies_pending(
        &self,
        user: &str,
        turns: &[&Memory],
        previous: &HashMap<i64, Memory>,
    ) -> Result<(HashMap<i64, Vec<i64>>, HashMap<i64, Memory>)> {
        let befores: Vec<&Memory> = turns.iter().filter_map(|m| previous.get(&m.id)).collect();
        let ids: Vec<i64> = befores.iter().map(|b| b.id).collect();
        let mut rekey: HashMap<i64, Vec<i64>> = HashMap::new();
        for chunk in ids.chunks(self.limits().max_page_size.max(1)) {
            for k in self.store.keys_for(user, chunk).await? {
                if k.metadata["key"] == mk::CONTEXT_KEY
                    && k.metadata.get("next").is_none()
                    && let Some(t) = k.key_for
                {
                    rekey.entry(t).or_default().push(k.id);
                }
            }
        }
        let wanted: Vec<&Memory> = befores
            .into_iter()
            .filter(|b| rekey.contains_key(&b.id))
            .collect();
        let before = self.stored_turns_before(user, &wanted).await?;
        rekey.retain(|t, _| before.contains_key(t));
        Ok((rekey, before))
    }

    /// Deletes the context keys that quote one of `memories` (the keys of the turns after
    /// them, in the same session), so that no key keeps a memory's old or deleted text; the
    /// next run of the job writes them again from what is there then (the context
    /// watermark goes back before the first of `memories`). Only the sessions' keys are
    /// read; memories outside a session are never quoted.
    pub(super) async fn drop_context_keys(&self, user: &str, memories: &[Memory]) -> Result<()> {
        let mut by_session: HashMap<&str, Vec<i64>> = HashMap::new();
        for m in memories {
            if let (MemoryKind::Message, Some(s)) = (m.kind, m.session.as_deref()) {
                by_session.entry(s).or_default().push(m.id);
            }
        }
        // The turns after them quote something else now (and a changed turn has lost its
        // own key): the next run reads them again.
        let first = by_session.values().flatten().min().copied();
        if let Some(first) = first {
            self.store.rewind_context_keys(user, first - 1).await?;
        }
        for (session, ids) in by_session {
            // The keys of the turns after them (`context_of`), of the turns before them
            // (`next`: their reply), and of the answers to the questions about them
            // (`asked_about`).
            let mut keys: Vec<Memory> = Vec::new();
            for field in ["context_of", "next", "asked_about"] {
                let filter = Filter {
                    session: Some(session.to_owned()),
                    kinds: vec![MemoryKind::Key],
                    include_superseded: true,
                    metadata: vec![MetadataCondition {
                        key: field.into(),
                        op: MetadataOp::In,
                        value: json!(ids),
                    }],
                    ..Filter::default()
                };
                keys.extend(self.listed(user, &filter).await?);
            }
            // A turn before them loses its key (the one that took a reply of theirs): the next
            // run reads from there.
            if let Some(before) = keys.iter().filter_map(|k| k.key_for).min()
                && first.is_some_and(|f| before < f)
            {
                self.store.rewind_context_keys(user, before - 1).await?;
            }
            let mut keys: Vec<i64> = keys.iter().map(|k| k.id).collect();
            keys.sort_unstable();
            keys.dedup();
            for chunk in keys.chunks(DELETE_BATCH) {
                self.store.delete_memories(user, chunk).await?;
            }
        }
        Ok(())
    }
}
