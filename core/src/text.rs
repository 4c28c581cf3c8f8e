//! Lexical text processing: the terms a text is indexed and searched by, and an in-memory
//! BM25 index over one user's memories (the embedded store's full-text side).
//!
//! Terms are lowercased runs of letters and digits, English stop words removed, irregular verbs'
//! past forms taken as their base form, reduced with the Snowball English stemmer (the
//! algorithm of Postgres's `english` text search configuration); both stores search with this
//! index by default ([`words`] holds the word lists).
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use rust_stemmers::{Algorithm, Stemmer};

mod words;

pub use words::irregular_base;
use words::is_stop_word;

/// BM25 term-frequency saturation.
pub const BM25_K1: f64 = 1.2;
/// BM25 document-length normalisation.
pub const BM25_B: f64 = 0.75;

/// Terms longer than this (in bytes) are ignored (Postgres ignores words over 2047 bytes; very
/// long "words" are noise such as base64).
const MAX_TERM_BYTES: usize = 64;

/// The shortest part of a compound [`Bm25Index::compound_terms`] reads ("ice" in "icecream").
pub const MIN_COMPOUND_PART: usize = 3;

/// The Snowball English stemmer (shared).
pub(crate) fn stemmer() -> &'static Stemmer {
    static STEMMER: OnceLock<Stemmer> = OnceLock::new();
    STEMMER.get_or_init(|| Stemmer::create(Algorithm::English))
}

/// A text lowercased for [`lower_words`], its typographic apostrophes (’, which phones type for
/// ') made plain, so that "wasn’t" is the negation "wasn't" and not "wasn" and "t".
pub(crate) fn lower_text(text: &str) -> String {
    text.to_lowercase().replace(['\u{2019}', '\u{2018}'], "'")
}

/// Lowercased words of a text, apostrophes kept inside words ("don't"), for the lexicon-based
/// scorers (emotion, importance), which need negations and pronouns that [`terms`] drops.
pub(crate) fn lower_words(lower: &str) -> Vec<&str> {
    lower
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The index terms of a text, in order, repeats kept.
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && w.len() <= MAX_TERM_BYTES)
        .map(|w| (w.to_lowercase(), contracted_not(text, w)))
        .filter(|(w, _)| !is_stop_word(w))
        .map(|(w, not)| if not { stem(&w) } else { term_of(&w) })
        .collect()
}

/// The term of one lowercase word that is not a stop word: an irregular verb's past form as
/// its base form, then stemmed.
fn term_of(word: &str) -> String {
    stem(irregular_base(word).unwrap_or(word))
}

fn stem(word: &str) -> String {
    stemmer().stem(word).into_owned()
}

/// Whether `word` (a slice of `text`) is followed by "'t" ("won't" is not "won").
fn contracted_not(text: &str, word: &str) -> bool {
    let end = word.as_ptr() as usize - text.as_ptr() as usize + word.len();
    let after = &text[end..];
    after
        .strip_prefix('\'')
        .or_else(|| after.strip_prefix('\u{2019}'))
        .is_some_and(|t| {
            t.strip_prefix(['t', 'T'])
                .is_some_and(|r| !r.starts_with(char::is_alphanumeric))
        })
}

/// The distinct terms of a query, in first-seen order.
pub fn query_terms(text: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for t in terms(text) {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }
    seen
}

/// BM25 inverse document frequency (the always-positive variant of Lucene).
pub fn idf(docs: f64, with_term: f64) -> f64 {
    (1.0 + (docs - with_term + 0.5) / (with_term + 0.5)).ln()
}

/// BM25 weight of one term in one document.
pub fn term_weight(idf: f64, tf: f64, doc_len: f64, avg_len: f64) -> f64 {
    let norm = if avg_len > 0.0 {
        1.0 - BM25_B + BM25_B * doc_len / avg_len
    } else {
        1.0
    };
    idf * tf * (BM25_K1 + 1.0) / (tf + BM25_K1 * norm)
}

#[derive(Debug)]
struct Doc {
    id: i64,
    terms: Box<[(u32, u16)]>,
}

thread_local! {
    /// [`Bm25Index::search`]'s score accumulator, all zeros between queries.
    static SCORES: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An in-memory BM25 index keyed by memory id. Documents live in dense slots (reused after
/// removal) so that a query accumulates scores in a flat array.
#[derive(Debug, Default)]
pub(crate) struct Bm25Index {
    vocab: HashMap<String, u32>,
    /// Per term: (slot, term frequency).
    postings: Vec<Vec<(u32, u16)>>,
    slots: Vec<Option<Doc>>,
    /// Per slot: the document's length in terms (0 when free); read for every posting a
    /// query touches, so kept dense.
    lens: Vec<u32>,
    free: Vec<u32>,
    by_id: HashMap<i64, u32>,
    total_len: u64,
}

impl Bm25Index {
    /// Indexes (or re-indexes) one document.
    pub fn insert(&mut self, id: i64, text: &str) {
        self.remove(id);
        let mut counts: HashMap<u32, u16> = HashMap::new();
        let mut len = 0u32;
        for t in terms(text) {
            len += 1;
            let next = self.vocab.len() as u32;
            let tid = *self.vocab.entry(t).or_insert(next);
            if tid as usize == self.postings.len() {
                self.postings.push(Vec::new());
            }
            let c = counts.entry(tid).or_default();
            *c = c.saturating_add(1);
        }
        let mut terms: Vec<(u32, u16)> = counts.into_iter().collect();
        terms.sort_unstable();
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.lens.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.lens[slot as usize] = len;
        for &(tid, tf) in &terms {
            self.postings[tid as usize].push((slot, tf));
        }
        self.total_len += u64::from(len);
        self.by_id.insert(id, slot);
        self.slots[slot as usize] = Some(Doc {
            id,
            terms: terms.into_boxed_slice(),
        });
    }

    /// Forgets one document.
    pub fn remove(&mut self, id: i64) {
        let Some(slot) = self.by_id.remove(&id) else {
            return;
        };
        let Some(doc) = self.slots[slot as usize].take() else {
            return;
        };
        self.total_len -= u64::from(std::mem::take(&mut self.lens[slot as usize]));
        for &(tid, _) in doc.terms.iter() {
            self.postings[tid as usize].retain(|(s, _)| *s != slot);
        }
        self.free.push(slot);
    }

    /// BM25 scores for a query's text: its [terms](query_terms) and the
    /// [compounds](Self::compound_terms) this index's documents write the other way.
    pub fn search_text(
        &self,
        text: &str,
        limit: usize,
        keep: impl Fn(i64) -> bool,
    ) -> Vec<(i64, f64)> {
        let mut query = query_terms(text);
        for t in self.compound_terms(text) {
            if !query.contains(&t) {
                query.push(t);
            }
        }
        self.search(&query, limit, keep)
    }

    /// The terms of a query's compounds as this index's documents write them: two adjacent
    /// words written as one ("ice cream" → `icecream`, where a document says "icecream"),
    /// and one word written as two ("roadtrip" → `road`, `trip`, where documents have both
    /// words at least as often as the one word). Parts are words of at least
    /// [`MIN_COMPOUND_PART`] letters other than stop words.
    pub fn compound_terms(&self, text: &str) -> Vec<String> {
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty() && w.len() <= MAX_TERM_BYTES)
            .collect();
        let part = |w: &str| {
            w.chars().count() >= MIN_COMPOUND_PART
                && w.chars().all(char::is_alphabetic)
                && !is_stop_word(w)
        };
        let postings = |term: &str| {
            self.vocab
                .get(term)
                .map(|&t| &self.postings[t as usize])
                .filter(|p| !p.is_empty())
        };
        let mut out = Vec::new();
        for pair in words.windows(2) {
            if part(pair[0]) && part(pair[1]) {
                let joined = term_of(&format!("{}{}", pair[0], pair[1]));
                if postings(&joined).is_some() {
                    out.push(joined);
                }
            }
        }
        for w in words.iter().filter(|w| part(w)) {
            let whole = postings(&term_of(w)).map_or(0, Vec::len);
            let mut best: Option<(usize, String, String)> = None;
            for (i, _) in w.char_indices().skip(MIN_COMPOUND_PART) {
                let (a, b) = w.split_at(i);
                if !(part(a) && part(b)) {
                    continue;
                }
                let (ta, tb) = (term_of(a), term_of(b));
                let (Some(pa), Some(pb)) = (postings(&ta), postings(&tb)) else {
                    continue;
                };
                let (small, large) = if pa.len() <= pb.len() {
                    (pa, pb)
                } else {
                    (pb, pa)
                };
                let slots: HashSet<u32> = small.iter().map(|&(s, _)| s).collect();
                let both = large.iter().filter(|(s, _)| slots.contains(s)).count();
                if both > 0 && both >= whole && best.as_ref().is_none_or(|b| both > b.0) {
                    best = Some((both, ta, tb));
                }
            }
            if let Some((_, a, b)) = best {
                out.extend([a, b]);
            }
        }
        out
    }

    /// BM25 scores of the documents that contain at least one query term and pass `keep`,
    /// best first (ties by id), at most `limit`.
    pub fn search(
        &self,
        query: &[String],
        limit: usize,
        keep: impl Fn(i64) -> bool,
    ) -> Vec<(i64, f64)> {
        let n = self.by_id.len() as f64;
        if n == 0.0 || limit == 0 {
            return vec![];
        }
        let avg = self.total_len as f64 / n;
        // Scores accumulate in a flat array per slot, kept between queries (only the
        // touched slots are reset) so that a query allocates nothing in proportion to the
        // index.
        let mut ranked: Vec<(i64, f64)> = SCORES.with_borrow_mut(|scores| {
            if scores.len() < self.slots.len() {
                scores.resize(self.slots.len(), 0.0);
            }
            let mut touched: Vec<u32> = Vec::new();
            for term in query {
                let Some(&tid) = self.vocab.get(term) else {
                    continue;
                };
                let postings = &self.postings[tid as usize];
                if postings.is_empty() {
                    continue;
                }
                let w = idf(n, postings.len() as f64);
                for &(slot, tf) in postings {
                    let len = self.lens[slot as usize];
                    let s = &mut scores[slot as usize];
                    if *s == 0.0 {
                        touched.push(slot);
                    }
                    *s += term_weight(w, tf as f64, len as f64, avg);
                }
            }
            touched
                .into_iter()
                .filter_map(|slot| {
                    let score = std::mem::take(&mut scores[slot as usize]);
                    Some((self.slots[slot as usize].as_ref()?.id, score))
                })
                .collect()
        });
        let by_score = |a: &(i64, f64), b: &(i64, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // `keep` is asked best first, of a few more than the limit at a time (most
        // documents pass a filter), rather than of every touched document.
        let mut out = Vec::with_capacity(limit.min(ranked.len()));
        let mut from = 0;
        let mut step = limit.saturating_mul(2);
        while from < ranked.len() && out.len() < limit {
            let rest = &mut ranked[from..];
            let take = step.min(rest.len());
            if take < rest.len() {
                rest.select_nth_unstable_by(take - 1, by_score);
            }
            rest[..take].sort_by(by_score);
            for &(id, score) in &rest[..take] {
                if out.len() == limit {
                    break;
                }
                if keep(id) {
                    out.push((id, score));
                }
            }
            from += take;
            step = step.saturating_mul(4);
        }
        out
    }
}

/// Capitalised words that are not names even where they do not start a sentence (months and
/// days are not either: they are time, which [`crate::when`] reads).
const NOT_NAMES: &[&str] = &["i", "i'm", "i've", "i'll", "i'd", "ok", "okay"];

/// The most entities taken from one query.
pub const MAX_QUERY_ENTITIES: usize = 8;

/// The names and quoted phrases of a query, lowercased, in first-seen order (at most
/// [`MAX_QUERY_ENTITIES`]): capitalised words that do not start a sentence and are not stop
/// words ("What did *Nate* cook for *Joanna*?", possessives stripped), and phrases in double
/// quotes ("the song \"The Four Seasons\"").
pub fn query_entities(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let push = |e: String, out: &mut Vec<String>| {
        if !e.is_empty() && !out.contains(&e) && out.len() < MAX_QUERY_ENTITIES {
            out.push(e);
        }
    };
    // Quoted phrases (straight or curly quotes).
    let quotes = |c: char| matches!(c, '"' | '\u{201c}' | '\u{201d}');
    for (i, part) in query.split(quotes).enumerate() {
        if i % 2 == 1 && !part.trim().is_empty() && i < query.split(quotes).count() - 1 {
            push(part.trim().to_lowercase(), &mut out);
        }
    }
    let mut sentence_start = true;
    for raw in query.split_whitespace() {
        let word = raw.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'');
        let word = word
            .strip_suffix("'s")
            .or_else(|| word.strip_suffix("\u{2019}s"))
            .unwrap_or(word)
            .trim_matches('\'');
        let capitalised = word.chars().next().is_some_and(char::is_uppercase);
        let lower = word.to_lowercase();
        if capitalised
            && !sentence_start
            && !is_stop_word(&lower)
            && !NOT_NAMES.contains(&lower.as_str())
            && !crate::when::is_calendar_word(&lower)
        {
            push(lower, &mut out);
        }
        sentence_start = raw.ends_with(['.', '?', '!', ':']) || word.is_empty() && sentence_start;
    }
    out
}

/// The share of `entities` (from [`query_entities`]) that `content` mentions: a phrase
/// anywhere, a name as a whole word (case-insensitive).
pub fn entity_share(entities: &[String], content: &str) -> f32 {
    if entities.is_empty() {
        return 0.0;
    }
    let lower = content.to_lowercase();
    let words = lower_words(&lower);
    let found = entities
        .iter()
        .filter(|e| {
            if e.contains(' ') {
                lower.contains(e.as_str())
            } else {
                words
                    .iter()
                    .any(|w| w == e || w.strip_suffix("'s") == Some(e.as_str()))
            }
        })
        .count();
    found as f32 / entities.len() as f32
}

/// The longest speaker label read at the start of a memory (bytes before the colon).
const MAX_SPEAKER_LABEL: usize = 40;

/// The speaker a memory's text names at its start, the way transcripts and group chats
/// write a turn ("Melanie: I painted a lake…", "Dr. Lee: …"): one to three words before a
/// colon and a space, each starting with a capital letter, letters, digits and `.'-` only.
/// `None` for any other text.
pub fn speaker_label(content: &str) -> Option<&str> {
    let (label, rest) = content.split_once(':')?;
    if label.is_empty() || label.len() > MAX_SPEAKER_LABEL || !rest.starts_with(' ') {
        return None;
    }
    let words: Vec<&str> = label.split(' ').collect();
    let word_ok = |w: &&str| {
        w.chars().next().is_some_and(char::is_uppercase)
            && w.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '\'' | '-'))
    };
    (words.len() <= 3 && words.iter().all(word_ok)).then_some(label)
}

/// Whether a text asks a question anywhere: one of its sentences ends with a question mark
/// (followed by a space, a closing quote or bracket, or the end; not a URL's query). "Wow,
/// that sounds awesome! What's it about? Glad it's all down!" asks one, as does any text
/// that [ends with one](ends_with_question).
pub fn asks_question(content: &str) -> bool {
    let mut chars = content.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?'
            && chars
                .peek()
                .is_none_or(|n| !(n.is_alphanumeric() || matches!(n, '=' | '&' | '/' | '_')))
        {
            return true;
        }
    }
    false
}

/// Whether a text ends with a question (its last character other than a closing quote,
/// bracket, emoji or space is a question mark).
pub fn ends_with_question(content: &str) -> bool {
    content
        .trim_end_matches(|c: char| {
            !(c.is_alphanumeric() || c.is_ascii_punctuation())
                || matches!(c, '"' | '\'' | ')' | ']')
        })
        .ends_with('?')
}

/// Content words at which [`content_signal`] reaches 1.
pub const CONTENT_WORDS_FULL: usize = 24;

/// How much a text says, in [0, 1]: `ln(1 + n) / ln(1 + CONTENT_WORDS_FULL)` for its `n`
/// content words (words other than stop words) after a [`speaker_label`], capped at 1.
/// "Take care!" says nothing, a sentence of a dozen content words most of what one can.
pub fn content_signal(content: &str) -> f32 {
    let rest = match speaker_label(content) {
        Some(label) => &content[label.len() + 1..],
        None => content,
    };
    let n = rest
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && w.len() <= MAX_TERM_BYTES)
        .filter(|w| {
            let mut buf = [0u8; MAX_TERM_BYTES];
            let lower = &mut buf[..w.len()];
            lower.copy_from_slice(w.as_bytes());
            lower.make_ascii_lowercase();
            std::str::from_utf8(lower).is_ok_and(|l| !is_stop_word(l))
        })
        .take(CONTENT_WORDS_FULL)
        .count();
    ((1 + n) as f32).ln() / ((1 + CONTENT_WORDS_FULL) as f32).ln()
}

/// Whether a memory was said by someone the query names: a name among `entities` (from
/// [`query_entities`]) is a word of the memory's [`speaker_label`] (case-insensitive).
pub fn said_by_named(entities: &[String], content: &str) -> bool {
    let Some(label) = speaker_label(content) else {
        return false;
    };
    let label = label.to_lowercase();
    let words = lower_words(&label);
    entities
        .iter()
        .any(|e| !e.contains(' ') && words.contains(&e.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_stemmed_lowercased_and_skip_stop_words() {
        assert_eq!(
            terms("The Dolphins were swimming near my boat!"),
            vec!["dolphin", "swim", "near", "boat"]
        );
        assert_eq!(
            terms("Lily's 3 climbing-gyms"),
            vec!["lili", "3", "climb", "gym"]
        );
        assert!(terms("it is what it is").is_empty());
        // An irregular verb's past form is its base form's term.
        assert_eq!(terms("Nate won; he wins"), vec!["nate", "win", "win"]);
        assert_eq!(terms("We went and got it"), terms("go and get it"));
        assert_eq!(terms("I left early"), vec!["left", "earli"]);
        assert_eq!(
            terms("He won't quit; she won\u{2019}t"),
            vec!["won", "quit", "won"]
        );
        assert_eq!(terms("They won 'today'"), vec!["win", "today"]);
    }

    #[test]
    fn rare_terms_outweigh_common_ones() {
        let mut ix = Bm25Index::default();
        ix.insert(1, "I went to the market today");
        ix.insert(2, "Went for a run today, nothing much happened");
        ix.insert(3, "Today I adopted a greyhound called Pixel");
        ix.insert(4, "Nothing happened today");
        let hits = ix.search(&query_terms("what happened with Pixel today"), 10, |_| true);
        assert_eq!(hits[0].0, 3, "{hits:?}");
        // "pixel" is in one document, "happened" in two, "today" in all four; of the two
        // with "happened", the shorter ranks higher.
        assert_eq!(hits[1].0, 4, "{hits:?}");
        assert_eq!(hits[2].0, 2, "{hits:?}");
        assert_eq!(hits.len(), 4);
    }

    #[test]
    fn shorter_documents_win_at_equal_term_frequency() {
        let mut ix = Bm25Index::default();
        ix.insert(1, "peanut allergy");
        ix.insert(
            2,
            "peanut butter sandwiches with jam and a long walk in the park afterwards",
        );
        ix.insert(3, "unrelated words entirely");
        let hits = ix.search(&query_terms("peanut"), 10, |_| true);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn a_compound_matches_as_the_documents_write_it() {
        let mut ix = Bm25Index::default();
        ix.insert(1, "Joanna: I love it when you make coconut milk icecream!");
        ix.insert(2, "Melanie: The road trip this weekend was wild.");
        ix.insert(3, "Melanie: We hiked the day after the road trip.");
        ix.insert(4, "Melanie: That roadtrip was long.");
        ix.insert(5, "Caroline: Next weekend I rest; this week has no end.");
        ix.insert(6, "Caroline: A calm weekend at home.");
        // Two words of the query, one word in a document.
        assert_eq!(
            ix.compound_terms("What ice cream does Nate make?"),
            vec!["icecream"]
        );
        let hits = ix.search_text("What ice cream does Nate make?", 10, |_| true);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1]);
        assert!(
            ix.search(&query_terms("ice cream"), 10, |_| true)
                .is_empty()
        );
        // One word of the query, two words in documents (as often as the one word or more).
        assert_eq!(
            ix.compound_terms("after the roadtrip?"),
            vec!["road", "trip"]
        );
        let hits = ix.search_text("after the roadtrip?", 10, |_| true);
        let mut ids: Vec<i64> = hits.iter().map(|h| h.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![2, 3, 4]);
        // A word written whole more often than apart stays whole ("weekend", not "week
        // end"); short parts and stop words make no compound.
        assert!(ix.compound_terms("this weekend").is_empty());
        assert!(ix.compound_terms("into the wild").is_empty());
        // Nothing the index lacks is added.
        assert!(ix.compound_terms("milk shake and shake milk").is_empty());
    }

    #[test]
    fn remove_and_reinsert_keep_statistics_right() {
        let mut ix = Bm25Index::default();
        ix.insert(1, "alpha beta");
        ix.insert(2, "beta gamma");
        ix.remove(1);
        assert_eq!(ix.by_id.len(), 1);
        assert!(ix.search(&query_terms("alpha"), 10, |_| true).is_empty());
        ix.insert(2, "alpha");
        assert_eq!(ix.search(&query_terms("alpha"), 10, |_| true)[0].0, 2);
        assert!(ix.search(&query_terms("gamma"), 10, |_| true).is_empty());
        assert_eq!(ix.total_len, 1);
    }

    #[test]
    fn keep_filters_and_limit_truncates() {
        let mut ix = Bm25Index::default();
        for i in 0..10 {
            ix.insert(i, "shared word");
        }
        let hits = ix.search(&query_terms("shared"), 3, |id| id % 2 == 0);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 2, 4]);
        // The filter passes only documents far down the order: found all the same.
        for i in 10..100 {
            ix.insert(i, "shared word");
        }
        let hits = ix.search(&query_terms("shared"), 3, |id| id >= 90);
        assert_eq!(
            hits.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![90, 91, 92]
        );
        assert!(ix.search(&query_terms("shared"), 3, |_| false).is_empty());
    }

    #[test]
    fn bm25_weight_matches_the_formula() {
        // idf(10 docs, 2 with the term) = ln(1 + 8.5 / 2.5)
        let w = idf(10.0, 2.0);
        assert!((w - (1.0f64 + 3.4).ln()).abs() < 1e-12);
        // tf 2, doc as long as average: idf * 2 * 2.2 / (2 + 1.2)
        let s = term_weight(w, 2.0, 5.0, 5.0);
        assert!((s - w * 4.4 / 3.2).abs() < 1e-12);
    }

    proptest::proptest! {
        /// The index against a plain model of its documents, through any sequence of
        /// inserts, re-inserts and removals: a search finds exactly the live documents that
        /// share a term with the query (when the limit allows), with positive scores, best
        /// first, and never a removed one.
        #[test]
        fn bm25_matches_a_model_of_its_documents(
            ops in proptest::collection::vec(
                (0i64..12, proptest::option::of("(apple|river|stone|cloud|music|violet) {1,3}")),
                0..60,
            ),
            query in "(apple|river|stone|cloud|music|lemon) {1,3}",
        ) {
            let mut index = Bm25Index::default();
            let mut model: HashMap<i64, String> = HashMap::new();
            for (id, text) in ops {
                match text {
                    Some(t) => {
                        let t = t.repeat(2);
                        index.insert(id, &t);
                        model.insert(id, t);
                    }
                    None => {
                        index.remove(id);
                        model.remove(&id);
                    }
                }
            }
            let q = query_terms(&query);
            let hits = index.search(&q, 100, |_| true);
            let mut expected: Vec<i64> = model
                .iter()
                .filter(|(_, t)| terms(t).iter().any(|w| q.contains(w)))
                .map(|(id, _)| *id)
                .collect();
            expected.sort_unstable();
            let mut got: Vec<i64> = hits.iter().map(|(id, _)| *id).collect();
            got.sort_unstable();
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert!(hits.iter().all(|(_, s)| *s > 0.0 && s.is_finite()));
            proptest::prop_assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
            // A limit and a filter only narrow the answer.
            let few = index.search(&q, 2, |id| id % 2 == 0);
            let first_even: Vec<(i64, f64)> =
                hits.iter().copied().filter(|(id, _)| id % 2 == 0).take(2).collect();
            proptest::prop_assert_eq!(few, first_even);
        }
    }

    #[test]
    fn entities_of_a_query() {
        assert_eq!(
            query_entities("What did Nate do for Joanna on 25 May, 2022?"),
            vec!["nate", "joanna"]
        );
        assert_eq!(
            query_entities("Would Melanie likely enjoy the song \"The Four Seasons\" by Vivaldi?"),
            vec!["the four seasons", "melanie", "four", "seasons", "vivaldi"]
        );
        assert_eq!(
            query_entities("What's Nate's favourite dish?"),
            vec!["nate"]
        );
        // Sentence starts and stop words are not names; an unclosed quote is no phrase.
        assert!(query_entities("Where do I live? Tell me. The \"thing").is_empty());
        assert!(query_entities("").is_empty());
    }

    #[test]
    fn entity_share_counts_whole_words() {
        let e = query_entities("Did Nate cook for Joanna?");
        assert_eq!(entity_share(&e, "Nate: I made Joanna's cake"), 1.0);
        assert_eq!(entity_share(&e, "Nate: I made a cake"), 0.5);
        assert_eq!(entity_share(&e, "Natey said hi"), 0.0);
        assert_eq!(entity_share(&[], "anything"), 0.0);
        let q = query_entities("the song \"Four Seasons\"");
        assert_eq!(entity_share(&q, "I love the four seasons by Vivaldi"), 1.0);
    }

    #[test]
    fn a_speaker_label_is_a_few_capitalised_words_before_a_colon() {
        assert_eq!(speaker_label("Melanie: I painted a lake."), Some("Melanie"));
        assert_eq!(speaker_label("Dr. Lee: take two."), Some("Dr. Lee"));
        assert_eq!(
            speaker_label("Mary-Ann O'Neil: hi"),
            Some("Mary-Ann O'Neil")
        );
        // Not labels: no space after the colon, lower case, a sentence, too many words.
        assert_eq!(speaker_label("Time: 10:30"), Some("Time"));
        assert_eq!(speaker_label("10:30 is fine"), None);
        assert_eq!(speaker_label("note: buy milk"), None);
        assert_eq!(speaker_label("I said this: no"), None);
        assert_eq!(speaker_label("The Big Red Dog: woof"), None);
        assert_eq!(speaker_label("no colon at all"), None);
        assert_eq!(speaker_label(": empty"), None);
    }

    #[test]
    fn a_memory_is_said_by_a_named_speaker_only_through_its_label() {
        let named = query_entities("What has Melanie painted?");
        assert_eq!(named, vec!["melanie".to_owned()]);
        assert!(said_by_named(&named, "Melanie: a horse, last week."));
        assert!(said_by_named(&named, "MELANIE Smith: a horse."));
        // Addressed, not said by her.
        assert!(!said_by_named(&named, "Caroline: Thanks, Melanie!"));
        assert!(!said_by_named(&named, "Melanie painted a horse."));
        assert!(!said_by_named(&[], "Melanie: a horse."));
        assert!(!said_by_named(
            &["melanie smith".to_owned()],
            "Melanie: a horse."
        ));
    }

    #[test]
    fn content_counts_the_words_that_say_something() {
        assert_eq!(content_signal(""), 0.0);
        assert_eq!(
            content_signal("Nate: Take care!"),
            content_signal("take care")
        );
        let closing = content_signal("Nate: You bet, see you!");
        let fact = content_signal("Nate: I bought a Nintendo Switch and play Zelda every night.");
        assert!(closing < fact, "{closing} {fact}");
        // Stop words do not count, whatever their case; the speaker's name does not either.
        assert_eq!(content_signal("The THE and Of"), 0.0);
        assert_eq!(
            content_signal("Joanna: screenplay"),
            (2f32).ln() / ((1 + CONTENT_WORDS_FULL) as f32).ln()
        );
        let long = "word ".repeat(3 * CONTENT_WORDS_FULL);
        assert_eq!(content_signal(&long), 1.0);
    }

    #[test]
    fn a_question_is_a_text_that_ends_with_a_question_mark() {
        assert!(ends_with_question(
            "Caroline: Love it! For walking or running?"
        ));
        assert!(ends_with_question("Did you see it?\u{201d} "));
        assert!(ends_with_question("Is that yours? \u{1f60a}"));
        assert!(ends_with_question("(really?)"));
        assert!(!ends_with_question("Was it fun? It was."));
        assert!(!ends_with_question("Melanie: I painted a lake."));
        assert!(!ends_with_question(""));
        assert!(asks_question(
            "Nate: Wow, that sounds awesome! What's it about? Glad it's all down!"
        ));
        assert!(asks_question("Is that yours? \u{1f60a}"));
        assert!(asks_question("Did you see it?\u{201d} Me too."));
        assert!(!asks_question("See https://example.com/a?id=3 for more."));
        assert!(!asks_question("Melanie: I painted a lake."));
    }
}
