//! An in-memory index of memories, per user, for places with no store (the browser package):
//! exact vector search and BM25, ranked by the same functions as the engine's retrieval
//! ([`crate::retrieval`]), with emotion and importance given at insertion as the engine gives
//! them. Memories carry what the stores' carry for a search to narrow on (a session, tags,
//! metadata, an expiry) and stay true as in the stores: one can supersede another (the old
//! one is kept, out of searches unless asked for as of a time or with its history), and an
//! expired one is never found. A search's [`crate::types::Filter`] is the stores' rule
//! ([`crate::types::Filter::matches`]). It can be saved as bytes and loaded again (a page
//! keeps it in IndexedDB). [`MemoryIndex::build_prompt`] assembles the prompt for a reply from
//! it as the engine does.
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::embed::cosine;
use crate::emotion::LexiconDetector;
use crate::error::{Error, Result};
use crate::limits::{Limits, MAX_HISTORY};
use crate::retrieval::{self, RetrieveOptions, SearchMode};
use crate::text::Bm25Index;
use crate::types::{Memory, MemoryKind, Retrieved, Role};

mod prompt;
pub use prompt::PromptOptions;

/// The saved form's version (memories saved before sessions, tags, metadata, expiry and
/// supersedes could be given read the same: they had none).
const FORMAT: u32 = 1;

/// What a memory of the index carries besides its text, vector and time; all optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexEntry {
    /// The conversation it belongs to: the neighbourhood stays inside it, and a filter's
    /// `session` finds it. Memories without one are one conversation.
    pub session: Option<String>,
    /// Tags (a filter's `tags` must all be there).
    pub tags: Vec<String>,
    /// A JSON object (or null) for metadata conditions; kept beside the engine's own signals.
    pub metadata: Value,
    /// When it stops being found (and [`MemoryIndex::purge_expired`] removes it): in the
    /// future when it is added, as in the engine.
    pub expires_at: Option<DateTime<Utc>>,
    /// The memory of the same user this one replaces: that one stays, superseded from this
    /// one's time (or its own, if later), and is found only as of an earlier time or with
    /// `include_superseded`. It must exist and still be current.
    pub supersedes: Option<i64>,
}

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
        self.add_entry(user, id, text, vector, created_at, IndexEntry::default())
    }

    /// [`MemoryIndex::add`] with a session, tags, metadata, an expiry or the memory it
    /// supersedes. Replacing a memory keeps its place in a supersede history (a memory that
    /// is already there cannot be given `supersedes`). Nothing changes when it fails.
    pub fn add_entry(
        &mut self,
        user: &str,
        id: i64,
        text: &str,
        vector: Vec<f32>,
        created_at: DateTime<Utc>,
        entry: IndexEntry,
    ) -> Result<()> {
        self.limits.check_user_id(user)?;
        self.limits.check_content(text)?;
        if let Some(session) = &entry.session {
            self.limits.check_session_id(session)?;
        }
        self.limits.check_tags(&entry.tags)?;
        self.limits.check_metadata(&entry.metadata)?;
        if let Some(at) = entry.expires_at {
            crate::limits::check_expires_at(Utc::now(), at)?;
        }
        crate::limits::check_embedding("caller", &vector)?;
        // Checked against what is there before anything is written (a failed add leaves no
        // trace, not even an empty user).
        let empty = UserIndex::default();
        let u = self.users.get(user).unwrap_or(&empty);
        if let Some((_, v)) = u.memories.values().next()
            && v.len() != vector.len()
        {
            return Err(Error::invalid(format!(
                "a vector of {} dimensions in an index of {}",
                vector.len(),
                v.len()
            )));
        }
        let existing = u.memories.get(&id).map(|(m, _)| m);
        let replaced_at = match entry.supersedes {
            None => None,
            Some(_) if existing.is_some() => {
                return Err(Error::invalid(format!(
                    "memory {id} is already there: a memory that supersedes another is new"
                )));
            }
            Some(old) if old == id => {
                return Err(Error::invalid("a memory cannot supersede itself"));
            }
            Some(old) => match u.memories.get(&old) {
                None => return Err(Error::not_found("memory", old.to_string())),
                Some((m, _)) => {
                    if let Some(by) = m.superseded_by {
                        return Err(Error::invalid(format!(
                            "memory {old} was already superseded by memory {by}: supersede that one"
                        )));
                    }
                    Some(m.created_at)
                }
            },
        };
        let (importance, emotion, mut metadata) =
            retrieval::ingest_signals(text, LexiconDetector.score(text), created_at);
        // The caller's keys, beside (and over) the engine's signals, as the engine keeps them.
        if let (Value::Object(signals), Value::Object(own)) = (&mut metadata, &entry.metadata) {
            signals.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let (supersedes, superseded_by, superseded_at) = match existing {
            Some(m) => (m.supersedes, m.superseded_by, m.superseded_at),
            None => (entry.supersedes, None, None),
        };
        let memory = Memory {
            id,
            kind: MemoryKind::Message,
            content: text.to_owned(),
            session: entry.session,
            message_id: None,
            summary_id: None,
            role: Some(Role::User),
            tags: entry.tags,
            metadata,
            importance,
            emotion: Some(emotion),
            created_at,
            updated_at: created_at,
            expires_at: entry.expires_at,
            supersedes,
            superseded_by,
            superseded_at,
            key_for: None,
        };
        let u = self.users.entry(user.to_owned()).or_default();
        // The replaced memory is no longer current from this one's time (never before it was
        // itself written), as in the stores.
        if let (Some(old), Some(at)) = (entry.supersedes, replaced_at) {
            let (m, _) = u.memories.get_mut(&old).expect("checked above");
            m.superseded_by = Some(id);
            m.superseded_at = Some(created_at.max(at));
        }
        u.lexical.insert(id, text);
        u.memories.insert(id, (memory, vector));
        Ok(())
    }

    /// One memory of the user, with its supersede links.
    pub fn get(&self, user: &str, id: i64) -> Option<&Memory> {
        self.users
            .get(user)
            .and_then(|u| u.memories.get(&id))
            .map(|(m, _)| m)
    }

    /// A memory's supersede history, oldest first: the memories it replaced, itself, and
    /// those that replaced it (at most [`MAX_HISTORY`] on each side). Empty when the user
    /// has no such memory.
    pub fn history(&self, user: &str, id: i64) -> Vec<&Memory> {
        let Some(u) = self.users.get(user) else {
            return Vec::new();
        };
        let Some((memory, _)) = u.memories.get(&id) else {
            return Vec::new();
        };
        let walk = |first: Option<i64>, next: fn(&Memory) -> Option<i64>| {
            let mut out = Vec::new();
            let mut at = first;
            while let Some((m, _)) = at.and_then(|i| u.memories.get(&i)) {
                if out.len() == MAX_HISTORY {
                    break;
                }
                out.push(m);
                at = next(m);
            }
            out
        };
        let mut before = walk(memory.supersedes, |m| m.supersedes);
        before.reverse();
        before.push(memory);
        before.extend(walk(memory.superseded_by, |m| m.superseded_by));
        before
    }

    /// Forgets one memory; false if the user had none with that id. A supersede history
    /// stays whole, as in the stores: the memory it replaced is now replaced by the one that
    /// replaced it, or current again when none did.
    pub fn remove(&mut self, user: &str, id: i64) -> bool {
        let Some(u) = self.users.get_mut(user) else {
            return false;
        };
        let Some((gone, _)) = u.memories.remove(&id) else {
            return false;
        };
        u.lexical.remove(id);
        if let Some((before, _)) = gone.supersedes.and_then(|b| u.memories.get_mut(&b)) {
            before.superseded_by = gone.superseded_by;
            if gone.superseded_by.is_none() {
                before.superseded_at = None;
            }
        }
        if let Some((after, _)) = gone.superseded_by.and_then(|a| u.memories.get_mut(&a)) {
            after.supersedes = gone.supersedes;
        }
        true
    }

    /// Removes every memory that expired by `now` (they are no longer found either way);
    /// how many went. Expiry does not relink a supersede history, as in the stores: the links
    /// to a purged memory are cleared (one it replaced stays replaced), so that none points
    /// at a memory that is gone (a saved index holding one would not load).
    pub fn purge_expired(&mut self, now: DateTime<Utc>) -> usize {
        let mut purged = 0;
        for u in self.users.values_mut() {
            let expired: std::collections::HashSet<i64> = u
                .memories
                .iter()
                .filter(|(_, (m, _))| m.expires_at.is_some_and(|e| e <= now))
                .map(|(id, _)| *id)
                .collect();
            for id in &expired {
                u.lexical.remove(*id);
                u.memories.remove(id);
                purged += 1;
            }
            for (m, _) in u.memories.values_mut() {
                if m.supersedes.is_some_and(|s| expired.contains(&s)) {
                    m.supersedes = None;
                }
                if m.superseded_by.is_some_and(|s| expired.contains(&s)) {
                    m.superseded_by = None;
                }
            }
        }
        purged
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
    /// ranked as the engine ranks (`options`, its filter included: current memories only
    /// unless it asks for another time or the history; `now` for recency, for expiry and for
    /// the time the query names). The neighbourhood of a memory is its session's memories in time order
    /// (those without a session are one conversation).
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
        self.limits.check_filter(&options.filter)?;
        let Some(u) = self.users.get(user) else {
            return Ok(Vec::new());
        };
        if options.mode != SearchMode::Text {
            crate::limits::check_embedding("query", query_vector)?;
            if let Some((_, v)) = u.memories.values().next()
                && v.len() != query_vector.len()
            {
                return Err(Error::invalid(format!(
                    "a query vector of {} dimensions for an index of {}",
                    query_vector.len(),
                    v.len()
                )));
            }
        }
        let filter = &options.filter;
        let passes = |id: i64| filter.matches_at(&u.memories[&id].0, now);
        let cfg = &options.ranking;
        let n = cfg.candidates.max(options.top_k);
        let mode = options.mode;
        let vector_hits = if mode == SearchMode::Text {
            Vec::new()
        } else {
            let mut scored: Vec<(i64, f32)> = u
                .memories
                .iter()
                .filter(|(_, (m, _))| filter.matches_at(m, now))
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
                .search_text(query, n, passes)
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
            let inside = |id: i64| w.contains(u.memories[&id].0.created_at) && passes(id);
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
        // The neighbourhood: each session's memories in time order (as the stores keep a
        // session's turns); neighbours join when they pass the filter, as in the engine.
        if cfg.uses_neighbours() && !candidates.is_empty() {
            retrieval::sort(&mut candidates);
            let mut order: Vec<(Option<&str>, DateTime<Utc>, i64)> = u
                .memories
                .values()
                .map(|(m, _)| (m.session.as_deref(), m.created_at, m.id))
                .collect();
            order.sort();
            let position: HashMap<i64, usize> = order
                .iter()
                .enumerate()
                .map(|(i, (_, _, id))| (*id, i))
                .collect();
            let mut links = Vec::new();
            for c in candidates.iter().take(retrieval::NEIGHBOURHOOD_CENTRES) {
                let at = position[&c.memory.id];
                let session = order[at].0;
                let from = at.saturating_sub(cfg.neighbours);
                let to = (at + cfg.neighbours).min(order.len() - 1);
                for (s, _, id) in &order[from..=to] {
                    if *id != c.memory.id && *s == session {
                        links.push((c.memory.id, *id));
                    }
                }
            }
            let before = candidates.len();
            retrieval::add_candidates(
                &mut candidates,
                links
                    .iter()
                    .filter(|(_, id)| passes(*id))
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
        let limits = Limits::default();
        let mut users = saved.users;
        for (name, u) in users.iter_mut() {
            check_saved(&limits, name, u)
                .map_err(|e| Error::invalid(format!("not a usable memory index: {e}")))?;
            for (id, (m, _)) in &u.memories {
                u.lexical.insert(*id, &m.content);
            }
        }
        Ok(Self { users, limits })
    }
}

/// A saved user's index holds what [`MemoryIndex::add`] would have let in: each memory
/// under its own id, its vector as long as the others and finite, and its
/// supersede links within the user.
fn check_saved(limits: &Limits, name: &str, u: &UserIndex) -> Result<()> {
    limits.check_user_id(name)?;
    let dims = u.memories.values().next().map(|(_, v)| v.len());
    for (id, (m, v)) in &u.memories {
        if m.id != *id {
            return Err(Error::invalid(format!(
                "memory {id} of {name:?} is stored as memory {}",
                m.id
            )));
        }
        limits.check_content(&m.content)?;
        crate::limits::check_embedding("saved", v)?;
        if Some(v.len()) != dims {
            return Err(Error::invalid(format!(
                "memory {id} has a vector of {} dimensions among vectors of {}",
                v.len(),
                dims.unwrap_or_default()
            )));
        }
        for link in [m.supersedes, m.superseded_by].into_iter().flatten() {
            if !u.memories.contains_key(&link) {
                return Err(Error::invalid(format!(
                    "memory {id} is linked to memory {link}, which is not there"
                )));
            }
        }
    }
    Ok(())
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

    /// A query vector that cannot be compared, and a saved index that breaks the rules
    /// `add` keeps, are refused with `InvalidInput` (never a wrong ranking, never a panic
    /// later).
    #[test]
    fn bad_query_vectors_and_damaged_saves_are_refused() {
        let mut index = MemoryIndex::new();
        index
            .add("me", 1, "my cat is Biscuit", vec![1.0, 0.0, 0.0], t(1))
            .unwrap();
        index
            .add("me", 2, "my dog is Rex", vec![0.0, 1.0, 0.0], t(2))
            .unwrap();
        let options = RetrieveOptions::for_mode(SearchMode::Vector, 5);
        for query in [vec![f32::NAN, 0.0, 0.0], vec![1.0], vec![]] {
            let err = index
                .search("me", "cat", &query, &options, t(3))
                .unwrap_err();
            assert_eq!(
                err.kind(),
                crate::error::ErrorKind::InvalidInput,
                "{query:?}"
            );
        }
        // Text search reads no vector.
        let text = RetrieveOptions::for_mode(SearchMode::Text, 5);
        assert_eq!(
            index.search("me", "cat", &[], &text, t(3)).unwrap().len(),
            1
        );

        let saved: Value = serde_json::from_slice(&index.to_bytes()).unwrap();
        let damaged = |change: &dyn Fn(&mut Value)| {
            let mut v = saved.clone();
            change(&mut v);
            MemoryIndex::from_bytes(&serde_json::to_vec(&v).unwrap())
        };
        assert!(damaged(&|_| {}).is_ok());
        type Change<'a> = &'a dyn Fn(&mut Value);
        let cases: [(&str, Change); 4] = [
            ("another id", &|v| {
                v["users"]["me"]["memories"]["1"][0]["id"] = 2.into()
            }),
            ("dimensions", &|v| {
                v["users"]["me"]["memories"]["2"][1] = serde_json::json!([0.0, 1.0])
            }),
            ("no vector", &|v| {
                v["users"]["me"]["memories"]["2"][1] = serde_json::json!([])
            }),
            ("a dangling link", &|v| {
                v["users"]["me"]["memories"]["2"][0]["supersedes"] = 9.into()
            }),
        ];
        for (what, change) in cases {
            let err = damaged(change).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput, "{what}");
            assert!(
                err.to_string().contains("not a usable memory index"),
                "{what}: {err}"
            );
        }
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

    fn entry(session: &str, tags: &[&str], metadata: Value) -> IndexEntry {
        IndexEntry {
            session: Some(session.to_owned()),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            metadata,
            ..IndexEntry::default()
        }
    }

    fn ids(hits: &[Retrieved]) -> Vec<i64> {
        let mut ids: Vec<i64> = hits.iter().map(|h| h.memory.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn filters_narrow_a_search_as_in_the_stores() {
        use serde_json::json;

        use crate::types::{Filter, MetadataCondition, MetadataOp};
        let mut index = MemoryIndex::new();
        let v = vec![1.0, 0.0];
        let rows = [
            (
                1,
                "trip",
                &["travel"][..],
                json!({"priority": 1, "city": "Lisbon"}),
            ),
            (2, "trip", &["travel", "plans"][..], json!({"priority": 3})),
            (
                3,
                "work",
                &["plans"][..],
                json!({"priority": 5, "due": "2024-03-10T00:00:00Z"}),
            ),
        ];
        for (id, session, tags, metadata) in rows {
            index
                .add_entry(
                    "alice",
                    id,
                    "plans for the spring",
                    v.clone(),
                    t(id as u32),
                    entry(session, tags, metadata),
                )
                .unwrap();
        }
        let search = |filter: Filter| {
            let options = RetrieveOptions {
                filter,
                ..RetrieveOptions::for_mode(SearchMode::Hybrid, 10)
            };
            ids(&index
                .search("alice", "spring plans", &v, &options, t(20))
                .unwrap())
        };
        assert_eq!(search(Filter::default()), vec![1, 2, 3]);
        let session = |s: &str| Filter {
            session: Some(s.to_owned()),
            ..Filter::default()
        };
        assert_eq!(
            search(session("trip")),
            vec![1, 2],
            "neighbours of another session stay out"
        );
        assert_eq!(search(session("work")), vec![3]);
        let tags = Filter {
            tags: vec!["travel".into(), "plans".into()],
            ..Filter::default()
        };
        assert_eq!(search(tags), vec![2], "every tag");
        let meta = |key: &str, op: MetadataOp, value: Value| Filter {
            metadata: vec![MetadataCondition::new(key, op, value)],
            ..Filter::default()
        };
        assert_eq!(
            search(meta("priority", MetadataOp::Gte, json!(3))),
            vec![2, 3]
        );
        assert_eq!(
            search(meta("priority", MetadataOp::In, json!([1, 5]))),
            vec![1, 3]
        );
        assert_eq!(
            search(meta("city", MetadataOp::Eq, json!("Lisbon"))),
            vec![1]
        );
        assert_eq!(
            search(meta("due", MetadataOp::Lt, json!("2024-04-01T00:00:00Z"))),
            vec![3],
            "times compare as times"
        );
        let since = Filter {
            since: Some(t(2)),
            ..Filter::default()
        };
        assert_eq!(search(since), vec![2, 3]);
        // The engine's own signals stay beside the caller's metadata.
        let m = index.get("alice", 1).unwrap();
        assert_eq!(m.metadata["city"], json!("Lisbon"));
        // A bad filter is refused, not ignored.
        let bad = RetrieveOptions {
            filter: meta("priority", MetadataOp::Gt, json!("high")),
            ..RetrieveOptions::for_mode(SearchMode::Hybrid, 10)
        };
        assert!(index.search("alice", "plans", &v, &bad, t(20)).is_err());
    }

    #[test]
    fn memories_supersede_expire_and_keep_their_history() {
        use crate::types::Filter;
        let mut index = MemoryIndex::new();
        let v = vec![0.6, 0.8];
        index
            .add("alice", 1, "I live in Porto", v.clone(), t(1))
            .unwrap();
        let moved = IndexEntry {
            supersedes: Some(1),
            ..IndexEntry::default()
        };
        index
            .add_entry(
                "alice",
                2,
                "I live in Lisbon now",
                v.clone(),
                t(5),
                moved.clone(),
            )
            .unwrap();
        let search = |index: &MemoryIndex, filter: Filter, now| {
            let options = RetrieveOptions {
                filter,
                ..RetrieveOptions::for_mode(SearchMode::Hybrid, 10)
            };
            ids(&index
                .search("alice", "where do I live", &v, &options, now)
                .unwrap())
        };
        assert_eq!(
            search(&index, Filter::default(), t(9)),
            vec![2],
            "the current one"
        );
        let as_of = |at| Filter {
            as_of: Some(at),
            ..Filter::default()
        };
        assert_eq!(
            search(&index, as_of(t(3)), t(9)),
            vec![1],
            "what was true then"
        );
        assert_eq!(search(&index, as_of(t(6)), t(9)), vec![2]);
        let all = Filter {
            include_superseded: true,
            ..Filter::default()
        };
        assert_eq!(search(&index, all, t(9)), vec![1, 2], "the history");
        let old = index.get("alice", 1).unwrap();
        assert_eq!(
            (old.superseded_by, old.superseded_at),
            (Some(2), Some(t(5)))
        );
        let history: Vec<i64> = index.history("alice", 1).iter().map(|m| m.id).collect();
        assert_eq!(history, vec![1, 2]);
        // Only a current memory of the same user can be superseded, by a new one.
        let again = index.add_entry("alice", 3, "Madrid", v.clone(), t(6), moved.clone());
        assert!(
            again
                .unwrap_err()
                .to_string()
                .contains("already superseded")
        );
        let elsewhere = index.add_entry("bob", 3, "Madrid", v.clone(), t(6), moved);
        assert_eq!(
            elsewhere.unwrap_err().kind(),
            crate::error::ErrorKind::NotFound
        );
        assert!(
            !index.users.contains_key("bob"),
            "a failed add leaves no trace"
        );
        let onto_existing = IndexEntry {
            supersedes: Some(2),
            ..IndexEntry::default()
        };
        assert!(
            index
                .add_entry("alice", 1, "x", v.clone(), t(7), onto_existing)
                .is_err()
        );
        // A third one, then the middle one removed by hand: the history stays whole.
        let next = IndexEntry {
            supersedes: Some(2),
            ..IndexEntry::default()
        };
        index
            .add_entry("alice", 3, "I live in Madrid", v.clone(), t(8), next)
            .unwrap();
        assert!(index.remove("alice", 2));
        let history: Vec<i64> = index.history("alice", 3).iter().map(|m| m.id).collect();
        assert_eq!(history, vec![1, 3]);
        assert_eq!(index.get("alice", 1).unwrap().superseded_by, Some(3));
        assert!(index.remove("alice", 3));
        let first = index.get("alice", 1).unwrap();
        assert_eq!((first.superseded_by, first.superseded_at), (None, None));
        assert_eq!(
            search(&index, Filter::default(), t(9)),
            vec![1],
            "current again"
        );
        // Expiry: out of every search from its time, removed by a purge; never in the past
        // when added.
        let now = Utc::now();
        let hours = |h: i64| now + chrono::Duration::hours(h);
        let short = IndexEntry {
            expires_at: Some(hours(2)),
            ..IndexEntry::default()
        };
        index
            .add_entry(
                "alice",
                4,
                "My hotel room is 214",
                v.clone(),
                hours(-1),
                short,
            )
            .unwrap();
        assert_eq!(search(&index, Filter::default(), hours(1)), vec![1, 4]);
        assert_eq!(search(&index, Filter::default(), hours(2)), vec![1]);
        assert_eq!(
            search(&index, as_of(hours(1)), hours(3)),
            vec![1, 4],
            "as of a time it lived"
        );
        let back = MemoryIndex::from_bytes(&index.to_bytes()).unwrap();
        assert_eq!(
            search(&back, Filter::default(), hours(1)),
            vec![1, 4],
            "saved with it"
        );
        let past = IndexEntry {
            expires_at: Some(hours(-1)),
            ..IndexEntry::default()
        };
        assert!(
            index
                .add_entry("alice", 5, "x", v.clone(), hours(-2), past)
                .is_err()
        );
        assert_eq!(index.purge_expired(hours(1)), 0);
        assert_eq!(index.purge_expired(hours(2)), 1);
        assert_eq!(index.len("alice"), 1);
        // A brief replacement expires: the one it replaced stays replaced, no link points at
        // the purged one, and the saved index loads.
        let brief = IndexEntry {
            supersedes: Some(1),
            expires_at: Some(hours(4)),
            ..IndexEntry::default()
        };
        let room = "My room is 301 this week";
        index
            .add_entry("alice", 6, room, v.clone(), hours(3), brief)
            .unwrap();
        assert_eq!(index.purge_expired(hours(5)), 1);
        let first = index.get("alice", 1).unwrap();
        assert_eq!(first.superseded_by, None);
        assert!(first.superseded_at.is_some());
        let back = MemoryIndex::from_bytes(&index.to_bytes()).unwrap();
        assert_eq!(
            search(&back, Filter::default(), hours(5)),
            Vec::<i64>::new()
        );
    }
}
