//! An in-memory index of memories, per user, for places with no store (the browser package):
//! exact vector search and BM25, ranked by the same functions as the engine's retrieval
//! ([`crate::retrieval`]), with emotion and importance given at insertion as the engine gives
//! them. It can be saved as bytes and loaded again (a page keeps it in IndexedDB).
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::embed::cosine;
use crate::emotion::LexiconDetector;
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::retrieval::{self, RetrieveOptions, SearchMode};
use crate::text::Bm25Index;
use crate::types::{Memory, MemoryKind, Retrieved, Role};

/// The saved form's version.
const FORMAT: u32 = 1;

/// One user's memories.
#[derive(Debug, Default, Serialize, Deserialize)]
struct UserIndex {
    memories: HashMap<i64, (Memory, Vec<f32>)>,
    #[serde(skip)]
    lexical: Bm25Index,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct MemoryIndex {
    users: HashMap<String, UserIndex>,
    limits: Limits,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    users: HashMap<String, UserIndex>,
}

impl MemoryIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Indexes (or replaces) the memory `id` of `user`: its text, its vector (from the
    /// caller's embedding model) and when it was written.
    pub fn add(
        &mut self,
        user: &str,
        id: i64,
        text: &str,
        vector: Vec<f32>,
        created_at: DateTime<Utc>,
    ) -> Result<()> {
        self.limits.check_user_id(user)?;
        self.limits.check_content(text)?;
        crate::limits::check_embedding("caller", &vector)?;
        let u = self.users.entry(user.to_owned()).or_default();
        if let Some((_, v)) = u.memories.values().next()
            && v.len() != vector.len()
        {
            return Err(Error::invalid(format!(
                "a vector of {} dimensions in an index of {}",
                vector.len(),
                v.len()
            )));
        }
        let (importance, emotion, metadata) =
            retrieval::ingest_signals(text, LexiconDetector.score(text), created_at);
        let memory = Memory {
            id,
            kind: MemoryKind::Message,
            content: text.to_owned(),
            session: None,
            message_id: None,
            summary_id: None,
            role: Some(Role::User),
            tags: Vec::new(),
            metadata,
            importance,
            emotion: Some(emotion),
            created_at,
            updated_at: created_at,
            expires_at: None,
            supersedes: None,
            superseded_by: None,
            superseded_at: None,
            key_for: None,
        };
        u.lexical.insert(id, text);
        u.memories.insert(id, (memory, vector));
        Ok(())
    }

    /// Forgets one memory; false if the user had none with that id.
    pub fn remove(&mut self, user: &str, id: i64) -> bool {
        let Some(u) = self.users.get_mut(user) else {
            return false;
        };
        u.lexical.remove(id);
        u.memories.remove(&id).is_some()
    }

    /// Forgets everything of the user; how many memories went.
    pub fn forget(&mut self, user: &str) -> usize {
        self.users.remove(user).map_or(0, |u| u.memories.len())
    }

    /// How many memories the user has.
    pub fn len(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |u| u.memories.len())
    }

    /// Whether the user has no memory.
    pub fn is_empty(&self, user: &str) -> bool {
        self.len(user) == 0
    }

    /// The user's memories that matter for `query` (its text and its vector), best first,
    /// ranked as the engine ranks (`options`; its filter does not apply: the index keeps no
    /// sessions, and a user's memories in time order are one conversation for the
    /// neighbourhood; `now` for recency and for the time the query names).
    pub fn search(
        &self,
        user: &str,
        query: &str,
        query_vector: &[f32],
        options: &RetrieveOptions,
        now: DateTime<Utc>,
    ) -> Result<Vec<Retrieved>> {
        self.limits.check_user_id(user)?;
        self.limits.check_content(query)?;
        self.limits.check_page_size(options.top_k)?;
        options.ranking.validate()?;
        let Some(u) = self.users.get(user) else {
            return Ok(Vec::new());
        };
        let cfg = &options.ranking;
        let n = cfg.candidates.max(options.top_k);
        let mode = options.mode;
        let vector_hits = if mode == SearchMode::Text {
            Vec::new()
        } else {
            let mut scored: Vec<(i64, f32)> = u
                .memories
                .iter()
                .map(|(id, (_, v))| (*id, cosine(query_vector, v)))
                .collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            scored.truncate(n);
            scored
                .into_iter()
                .map(|(id, s)| (u.memories[&id].0.clone(), s))
                .collect()
        };
        let text_hits = if mode == SearchMode::Vector {
            Vec::new()
        } else {
            u.lexical
                .search_text(query, n, |_| true)
                .into_iter()
                .map(|(id, s)| (u.memories[&id].0.clone(), s as f32))
                .collect()
        };
        let mut candidates = retrieval::merge(vector_hits, text_hits);
        let cues = retrieval::QueryCues {
            emotion: (cfg.emotion_weight > 0.0).then(|| LexiconDetector.score(query)),
            ..retrieval::QueryCues::read(query, now, cfg)
        };
        // As the engine does: a query that names a time also searches inside it.
        for w in &cues.windows {
            let inside = |id: i64| w.contains(u.memories[&id].0.created_at);
            if mode != SearchMode::Vector {
                let hits = u.lexical.search_text(query, n, inside);
                retrieval::add_candidates(
                    &mut candidates,
                    hits.into_iter()
                        .map(|(id, s)| (u.memories[&id].0.clone(), None, Some(s as f32))),
                );
            }
            if mode != SearchMode::Text {
                let mut scored: Vec<(i64, f32)> = u
                    .memories
                    .iter()
                    .filter(|(id, _)| inside(**id))
                    .map(|(id, (_, v))| (*id, cosine(query_vector, v)))
                    .collect();
                scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                scored.truncate(n);
                retrieval::add_candidates(
                    &mut candidates,
                    scored
                        .into_iter()
                        .map(|(id, s)| (u.memories[&id].0.clone(), Some(s), None)),
                );
            }
        }
        for c in candidates.iter_mut() {
            c.vector = Some(u.memories[&c.memory.id].1.clone());
        }
        retrieval::score(&mut candidates, Some(query_vector), mode, cfg, now, &cues);
        // The neighbourhood: the index keeps one conversation per user, in time order.
        if cfg.uses_neighbours() && !candidates.is_empty() {
            retrieval::sort(&mut candidates);
            let mut order: Vec<(DateTime<Utc>, i64)> = u
                .memories
                .values()
                .map(|(m, _)| (m.created_at, m.id))
                .collect();
            order.sort();
            let position: HashMap<i64, usize> = order
                .iter()
                .enumerate()
                .map(|(i, (_, id))| (*id, i))
                .collect();
            let mut links = Vec::new();
            for c in candidates.iter().take(retrieval::NEIGHBOURHOOD_CENTRES) {
                let at = position[&c.memory.id];
                let from = at.saturating_sub(cfg.neighbours);
                let to = (at + cfg.neighbours).min(order.len() - 1);
                for (_, id) in &order[from..=to] {
                    if *id != c.memory.id {
                        links.push((c.memory.id, *id));
                    }
                }
            }
            let before = candidates.len();
            retrieval::add_candidates(
                &mut candidates,
                links
                    .iter()
                    .map(|(_, id)| (u.memories[id].0.clone(), None, None)),
            );
            for c in candidates[before..].iter_mut() {
                let v = &u.memories[&c.memory.id].1;
                if mode != SearchMode::Text {
                    c.signals.similarity = Some(cosine(query_vector, v));
                }
                c.vector = Some(v.clone());
            }
            retrieval::score(&mut candidates, Some(query_vector), mode, cfg, now, &cues);
            retrieval::apply_neighbours(&mut candidates, &links, cfg.neighbour_weight);
        }
        Ok(retrieval::finish(candidates, options.top_k, cfg))
    }

    /// The index as bytes (versioned JSON), for keeping it elsewhere.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&SavedRef {
            format: FORMAT,
            users: &self.users,
        })
        .expect("the index serialises")
    }

    /// An index saved by [`MemoryIndex::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let saved: Saved = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("not a saved memory index: {e}")))?;
        if saved.format != FORMAT {
            return Err(Error::invalid(format!(
                "a memory index of format {} (this version reads {FORMAT})",
                saved.format
            )));
        }
        let mut users = saved.users;
        for u in users.values_mut() {
            for (id, (m, _)) in &u.memories {
                u.lexical.insert(*id, &m.content);
            }
        }
        Ok(Self {
            users,
            limits: Limits::default(),
        })
    }
}

#[derive(Serialize)]
struct SavedRef<'a> {
    format: u32,
    users: &'a HashMap<String, UserIndex>,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, day, 12, 0, 0).unwrap()
    }

    #[test]
    fn users_are_apart_and_modes_rank_like_the_engine() {
        let mut index = MemoryIndex::new();
        index
            .add(
                "alice",
                1,
                "I moved to Lisbon in May",
                vec![1.0, 0.0, 0.0],
                t(1),
            )
            .unwrap();
        index
            .add(
                "alice",
                2,
                "My sister is a biologist",
                vec![0.0, 1.0, 0.0],
                t(2),
            )
            .unwrap();
        index
            .add(
                "bob",
                3,
                "Bob lives in Lisbon too",
                vec![1.0, 0.0, 0.0],
                t(3),
            )
            .unwrap();
        let now = t(20);
        for mode in [SearchMode::Vector, SearchMode::Text, SearchMode::Hybrid] {
            let hits = index
                .search(
                    "alice",
                    "Lisbon",
                    &[0.9, 0.1, 0.0],
                    &RetrieveOptions::for_mode(mode, 5),
                    now,
                )
                .unwrap();
            assert_eq!(hits[0].memory.id, 1, "{mode}");
            assert!(
                hits.iter().all(|h| h.memory.id != 3),
                "{mode}: Bob's memory"
            );
        }
        let vector = index
            .search(
                "alice",
                "Lisbon",
                &[0.9, 0.1, 0.0],
                &RetrieveOptions::for_mode(SearchMode::Vector, 5),
                now,
            )
            .unwrap();
        assert!((vector[0].score - cosine(&[0.9, 0.1, 0.0], &[1.0, 0.0, 0.0])).abs() < 1e-6);
        assert!(index.remove("alice", 1));
        assert!(!index.remove("alice", 1));
        assert_eq!(index.len("alice"), 1);
        assert_eq!(index.forget("bob"), 1);
        assert!(index.is_empty("bob"));
    }

    #[test]
    fn bytes_round_trip_and_bad_input_is_refused() {
        let mut index = MemoryIndex::new();
        index
            .add(
                "alice",
                7,
                "We adopted a cat called Miso",
                vec![0.6, 0.8],
                t(1),
            )
            .unwrap();
        let back = MemoryIndex::from_bytes(&index.to_bytes()).unwrap();
        let options = RetrieveOptions::for_mode(SearchMode::Hybrid, 3);
        let a = index
            .search("alice", "cat", &[0.6, 0.8], &options, t(9))
            .unwrap();
        let b = back
            .search("alice", "cat", &[0.6, 0.8], &options, t(9))
            .unwrap();
        assert_eq!(a, b, "the saved index answers the same");
        assert!(MemoryIndex::from_bytes(b"garbage").is_err());
        assert!(MemoryIndex::from_bytes(br#"{"format":99,"users":{}}"#).is_err());
        let mut index = back;
        assert!(index.add("alice", 8, "", vec![1.0, 0.0], t(1)).is_err());
        assert!(
            index
                .add("alice", 8, "x", vec![1.0, 0.0, 0.0], t(1))
                .is_err(),
            "dims"
        );
        assert!(index.add("", 8, "x", vec![1.0, 0.0], t(1)).is_err());
        assert!(
            index
                .add("alice", 8, "x", vec![f32::NAN, 0.0], t(1))
                .is_err()
        );
        assert_eq!(index.len("alice"), 1, "nothing half-added");
    }
}
