//! Keys at search time: a store search admits keys next to the kinds they stand for, and
//! each key hit is replaced by its memory, held to the caller's filter.
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use super::*;
use crate::memory_keys as mk;

impl Engine {
    /// Search hits (best first) with each key replaced by the memory it is for, which must
    /// pass `filter` (the caller's, with its validity rule); each memory once, at its best.
    pub(super) async fn resolve_keys<T>(
        &self,
        user: &str,
        hits: Vec<(Memory, T)>,
        filter: &Filter,
    ) -> Result<Vec<(Memory, T)>> {
        let [out] = self.resolve_keys_of(user, [hits], filter).await?;
        Ok(out)
    }

    /// [`Self::resolve_keys`] for several lists of hits at once: the memories their keys
    /// stand for are read together, in one statement per page.
    pub(super) async fn resolve_keys_of<T, const L: usize>(
        &self,
        user: &str,
        lists: [Vec<(Memory, T)>; L],
        filter: &Filter,
    ) -> Result<[Vec<(Memory, T)>; L]> {
        let all = || lists.iter().flatten();
        if !all().any(|(m, _)| m.kind == MemoryKind::Key) {
            return Ok(lists);
        }
        let mut wanted: Vec<i64> = all().filter_map(|(m, _)| m.key_for).collect();
        wanted.sort_unstable();
        wanted.dedup();
        // The memories are read at once (by primary key), those already among the hits
        // taken from there.
        let mut targets: HashMap<i64, Option<Memory>> = HashMap::with_capacity(wanted.len());
        for (m, _) in all() {
            if wanted.binary_search(&m.id).is_ok() {
                targets.entry(m.id).or_insert_with(|| Some(m.clone()));
            }
        }
        let missing: Vec<i64> = wanted
            .iter()
            .copied()
            .filter(|id| !targets.contains_key(id))
            .collect();
        let page = self.limits().max_page_size.max(1);
        for chunk in missing.chunks(page) {
            for t in self.store.get_memories(user, chunk).await? {
                targets.insert(t.id, Some(t));
            }
        }
        for t in targets.values_mut() {
            if t.as_ref().is_some_and(|t| !filter.matches(t)) {
                *t = None;
            }
        }
        Ok(lists.map(|hits| {
            let mut seen = HashSet::with_capacity(hits.len());
            let mut out = Vec::with_capacity(hits.len());
            for (m, score) in hits {
                let m = match (m.kind, m.key_for) {
                    (MemoryKind::Key, Some(t)) => match targets.get(&t) {
                        Some(Some(target)) => target.clone(),
                        _ => continue,
                    },
                    (MemoryKind::Key, None) => continue,
                    _ => m,
                };
                if seen.insert(m.id) {
                    out.push((m, score));
                }
            }
            out
        }))
    }
}

impl Engine {
    /// Of `firsts` (a memory and the score of its first row on a page after the first of a
    /// paged search), the memories one of whose rows (the memory itself or a key of it that
    /// passes `filter`, the store search's) scores better against `query`: those rows came
    /// earlier, so the memory was returned on an earlier page.
    pub(super) async fn returned_before(
        &self,
        user: &str,
        query: &[f32],
        firsts: &[(i64, f32)],
        filter: &Filter,
    ) -> Result<HashSet<i64>> {
        // Scores equal to within this are the same row's (the store's arithmetic may differ
        // from ours in the last bits).
        const SAME: f32 = 1e-5;
        // A key is held to its memory's metadata (the store's rule), and each memory here
        // passed the filter: its keys are tested on the rest.
        let keys_filter = Filter {
            metadata: Vec::new(),
            ..filter.clone()
        };
        let mut out = HashSet::new();
        let page = self.limits().max_page_size.max(1);
        for chunk in firsts.chunks(page) {
            let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
            let keys: Vec<(i64, i64)> = self
                .store
                .keys_for(user, &ids)
                .await?
                .iter()
                .filter(|k| keys_filter.matches(k))
                .filter_map(|k| Some((k.key_for?, k.id)))
                .collect();
            // Without keys a memory has one row, the one found.
            if keys.is_empty() {
                continue;
            }
            let mut rows: Vec<(i64, i64)> = ids.iter().map(|&id| (id, id)).collect();
            rows.extend(keys);
            let row_ids: Vec<i64> = rows.iter().map(|(_, r)| *r).collect();
            let vectors = self
                .store
                .vectors(user, self.embedder.model_id(), &row_ids)
                .await?;
            let first: HashMap<i64, f32> = chunk.iter().copied().collect();
            for (memory, row) in rows {
                if let Some(v) = vectors.get(&row)
                    && crate::embed::cosine(query, v) > first[&memory] + SAME
                {
                    out.insert(memory);
                }
            }
        }
        Ok(out)
    }
}

/// The filter a store search runs with so that keys are found too: a filter naming kinds
/// that have keys also admits keys (whose memories are then held to the caller's filter).
pub(super) fn with_keys(filter: &Filter) -> Cow<'_, Filter> {
    if filter.kinds.is_empty()
        || filter.kinds.contains(&MemoryKind::Key)
        || !filter.kinds.iter().any(|k| mk::KEYED_KINDS.contains(k))
    {
        return Cow::Borrowed(filter);
    }
    let mut f = filter.clone();
    f.kinds.push(MemoryKind::Key);
    Cow::Owned(f)
}

/// The filter of every current memory but keys.
pub(super) fn not_keys() -> Filter {
    Filter {
        kinds: MemoryKind::ALL
            .into_iter()
            .filter(|k| *k != MemoryKind::Key)
            .collect(),
        ..Filter::default()
    }
}
