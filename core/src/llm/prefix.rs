//! Prefix reuse: the attention caches of recently finished sequences, kept so that a new
//! prompt that starts with the same tokens reads only the rest. Chat clients that send the
//! whole conversation at every turn (the OpenAI-compatible API, SillyTavern-style front ends)
//! begin each prompt with the previous prompt and answer; requests sharing a long system
//! prompt begin alike too.
//!
//! A prefix's keys and values depend only on its tokens and positions (attention is causal),
//! so a fork of a cache cut to the common prefix is what reading those tokens again would
//! build — up to the rounding of a different chunking, as between two chunk sizes of
//! chunked prefill.
//!
//! Caches are kept apart by owner (the user whose data the prompt holds,
//! [`super::local::GenerationParams::cache_owner`]): a prompt is read from a cache of its own
//! owner only, so that how fast one user's answer starts says nothing of what another user
//! asked, and no user's answer depends on another's earlier request.
use super::decoder::KvCache;

/// Fewest common tokens worth a fork (copying a cache costs about what reading a few tokens
/// does).
pub const MIN_REUSE: usize = 16;

/// Caches held at most.
const MAX_ENTRIES: usize = 8;

/// A held cache: whose prompt it read, the tokens it holds, the cache.
type Entry = (Option<String>, Vec<u32>, KvCache);

/// Recently finished sequences' caches, most recent first, within a memory budget.
pub struct PrefixCache {
    entries: Vec<Entry>,
    max_bytes: usize,
}

impl PrefixCache {
    /// Holds at most `max_bytes` of caches (0: none).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            entries: Vec::new(),
            max_bytes,
        }
    }

    /// A fork of the held cache of `owner` sharing the longest prefix with `prompt`, cut to
    /// that prefix (at most all but the prompt's last token, whose logits the caller needs),
    /// with its length; `None` below [`MIN_REUSE`] tokens.
    pub fn fork(&mut self, owner: Option<&str>, prompt: &[u32]) -> Option<(usize, KvCache)> {
        let (at, common) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, (of, _, _))| of.as_deref() == owner)
            .map(|(i, (_, tokens, _))| (i, common_prefix(tokens, prompt)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))?;
        let n = common.min(prompt.len().saturating_sub(1));
        if n < MIN_REUSE {
            return None;
        }
        let entry = self.entries.remove(at);
        let mut cache = entry.2.clone();
        cache.truncate(n);
        self.entries.insert(0, entry);
        Some((n, cache))
    }

    /// Keeps a finished sequence's cache (`tokens` are those it holds) for prompts of
    /// `owner`. Held caches of the same owner whose tokens it begins with are dropped (it
    /// serves every prompt they would); the least recently used go when the budget is passed.
    pub fn keep(&mut self, owner: Option<String>, tokens: Vec<u32>, cache: KvCache) {
        if tokens.len() < MIN_REUSE || cache.len() != tokens.len() || self.max_bytes == 0 {
            return;
        }
        if cache.bytes() > self.max_bytes {
            return;
        }
        self.entries.retain(|(of, held, _)| {
            !(*of == owner && held.len() <= tokens.len() && tokens.starts_with(held))
        });
        self.entries.insert(0, (owner, tokens, cache));
        let mut total = 0;
        let mut keep = 0;
        for (_, _, c) in &self.entries {
            if keep == MAX_ENTRIES || total + c.bytes() > self.max_bytes {
                break;
            }
            total += c.bytes();
            keep += 1;
        }
        self.entries.truncate(keep);
    }

    /// Caches held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty cache claiming `len` positions (no buffers: 0 bytes).
    fn cache(len: usize) -> KvCache {
        KvCache::claiming(len)
    }

    fn tokens(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    #[test]
    fn the_longest_common_prefix_is_forked_and_cut() {
        let mut p = PrefixCache::new(1 << 20);
        p.keep(None, tokens(0..40), cache(40));
        p.keep(None, tokens(100..160), cache(60));
        assert_eq!(p.len(), 2);
        // Shares 30 tokens with the first.
        let mut prompt = tokens(0..30);
        prompt.extend(500..520);
        let (n, c) = p.fork(None, &prompt).unwrap();
        assert_eq!((n, c.len()), (30, 30));
        // The held cache itself is not cut.
        let (n, _) = p.fork(None, &tokens(0..45)).unwrap();
        assert_eq!(n, 40);
        // A prompt equal to a held sequence leaves its last token to read.
        assert_eq!(p.fork(None, &tokens(100..160)).unwrap().0, 59);
        // Too short a prefix, or none.
        assert!(p.fork(None, &tokens(0..10)).is_none());
        assert!(p.fork(None, &tokens(7..60)).is_none());
    }

    #[test]
    fn a_longer_conversation_replaces_its_beginning() {
        let mut p = PrefixCache::new(1 << 20);
        p.keep(None, tokens(0..20), cache(20));
        p.keep(None, tokens(0..50), cache(50));
        assert_eq!(p.len(), 1, "0..20 is served by 0..50");
        // Too short, or not matching its cache: not kept.
        p.keep(None, tokens(0..5), cache(5));
        p.keep(None, tokens(200..260), cache(10));
        assert_eq!(p.len(), 1);
        for i in 0..12 {
            p.keep(None, tokens(1000 * (i + 1)..1000 * (i + 1) + 20), cache(20));
        }
        assert_eq!(p.len(), MAX_ENTRIES);
        // The oldest went first.
        assert!(p.fork(None, &tokens(0..50)).is_none());
        // Nothing is held without a budget.
        let mut none = PrefixCache::new(0);
        none.keep(None, tokens(0..50), cache(50));
        assert!(none.is_empty());
    }

    #[test]
    fn a_cache_serves_its_own_owner_only() {
        let mut p = PrefixCache::new(1 << 20);
        let (alice, bob) = (Some("alice".to_owned()), Some("bob".to_owned()));
        p.keep(alice.clone(), tokens(0..40), cache(40));
        assert!(p.fork(Some("bob"), &tokens(0..45)).is_none());
        assert!(p.fork(None, &tokens(0..45)).is_none());
        assert_eq!(p.fork(Some("alice"), &tokens(0..45)).unwrap().0, 40);
        // Bob's longer conversation over the same tokens does not replace Alice's cache.
        p.keep(bob, tokens(0..50), cache(50));
        assert_eq!(p.len(), 2);
        assert_eq!(p.fork(Some("alice"), &tokens(0..60)).unwrap().0, 40);
        assert_eq!(p.fork(Some("bob"), &tokens(0..60)).unwrap().0, 50);
        // Alice's own longer one does.
        p.keep(alice, tokens(0..55), cache(55));
        assert_eq!(p.len(), 2);
        assert_eq!(p.fork(Some("alice"), &tokens(0..60)).unwrap().0, 55);
    }
}
