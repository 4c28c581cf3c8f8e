//! Splitting long texts into overlapping chunks that each fit the embedding model, counted in
//! the model's own tokens, so that nothing past the model's input limit is silently lost.
use serde::{Deserialize, Serialize};

/// How long messages are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChunkConfig {
    /// Tokens per chunk at most; the embedder's own limit when `None`.
    pub max_tokens: Option<usize>,
    /// Tokens shared by consecutive chunks.
    pub overlap_tokens: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            max_tokens: None,
            overlap_tokens: 32,
        }
    }
}

/// Byte ranges of the chunks of `text`, given its tokens' byte ranges. A text of at most
/// `max_tokens` tokens is one chunk (the whole text). Otherwise windows of `max_tokens`
/// tokens start every `max_tokens - overlap` tokens; a window ends early, after the last
/// sentence end (`.`, `!`, `?`, newline) in its final third, when there is one, so that chunks
/// tend to hold whole sentences.
pub fn chunk_ranges(
    text: &str,
    spans: &[(usize, usize)],
    max_tokens: usize,
    overlap: usize,
) -> Vec<(usize, usize)> {
    let max_tokens = max_tokens.max(1);
    let overlap = overlap.min(max_tokens / 2);
    if spans.len() <= max_tokens {
        return vec![(0, text.len())];
    }
    let sentence_end = |i: usize| {
        let (_, end) = spans[i];
        let next_start = spans.get(i + 1).map_or(text.len(), |s| s.0);
        text[spans[i].0..end].ends_with(['.', '!', '?']) || text[end..next_start].contains('\n')
    };
    let mut out = Vec::new();
    let mut start = 0usize;
    loop {
        let mut end = (start + max_tokens).min(spans.len());
        if end < spans.len() {
            let floor = start + max_tokens * 2 / 3;
            if let Some(cut) = (floor..end).rev().find(|&i| sentence_end(i)) {
                end = cut + 1;
            }
        }
        // Chunks start at the first byte of their first token (the first chunk at 0), and
        // end at the last byte of their last token (the last chunk at the end of the text).
        let from = if start == 0 { 0 } else { spans[start].0 };
        let to = if end == spans.len() {
            text.len()
        } else {
            spans[end - 1].1
        };
        out.push((from, to));
        if end == spans.len() {
            break;
        }
        start = (end - overlap).max(start + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace tokens, as byte ranges.
    fn spans(text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            match (c.is_whitespace(), start) {
                (true, Some(s)) => {
                    out.push((s, i));
                    start = None;
                }
                (false, None) => start = Some(i),
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push((s, text.len()));
        }
        out
    }

    fn words(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    #[test]
    fn short_text_is_one_chunk() {
        let t = "just a few words";
        assert_eq!(chunk_ranges(t, &spans(t), 10, 2), vec![(0, t.len())]);
    }

    #[test]
    fn windows_overlap_and_cover_everything() {
        let t: String = (0..25).map(|i| format!("w{i} ")).collect();
        let ranges = chunk_ranges(&t, &spans(&t), 10, 3);
        let chunks: Vec<Vec<&str>> = ranges.iter().map(|&(a, b)| words(&t[a..b])).collect();
        assert!(chunks.iter().all(|c| c.len() <= 10), "{chunks:?}");
        assert_eq!(chunks[0][0], "w0");
        assert_eq!(*chunks.last().unwrap().last().unwrap(), "w24");
        for pair in chunks.windows(2) {
            // The next chunk starts three words before the previous one ended.
            let tail = &pair[0][pair[0].len() - 3..];
            assert_eq!(&pair[1][..3], tail, "{chunks:?}");
        }
        // Every word is in some chunk.
        for i in 0..25 {
            let w = format!("w{i}");
            assert!(chunks.iter().any(|c| c.contains(&w.as_str())), "{w}");
        }
    }

    #[test]
    fn prefers_to_end_at_a_sentence() {
        let t = "one two three four five six seven. eight nine ten eleven twelve";
        let ranges = chunk_ranges(t, &spans(t), 9, 0);
        assert_eq!(
            &t[ranges[0].0..ranges[0].1],
            "one two three four five six seven."
        );
        assert_eq!(&t[ranges[1].0..ranges[1].1], "eight nine ten eleven twelve");
    }

    #[test]
    fn multibyte_text_is_cut_on_token_boundaries() {
        let t = "ça va très bien — merci beaucoup à vous tous ici";
        for (a, b) in chunk_ranges(t, &spans(t), 3, 1) {
            assert!(t.is_char_boundary(a) && t.is_char_boundary(b));
        }
    }

    proptest::proptest! {
        /// For any text and limits: chunks are non-empty, in order, on character boundaries,
        /// at most `max` tokens each, from the start of the text to its end, and consecutive
        /// chunks leave no token out.
        #[test]
        fn chunks_cover_everything_within_the_limit(
            text in "([a-zé]{1,8}[.!?]?[ \n]{1,2}){0,120}",
            max in 1usize..40,
            overlap in 0usize..20,
        ) {
            let sp = spans(&text);
            let ranges = chunk_ranges(&text, &sp, max, overlap);
            proptest::prop_assert!(!ranges.is_empty());
            proptest::prop_assert_eq!(ranges[0].0, 0);
            proptest::prop_assert_eq!(ranges.last().unwrap().1, text.len());
            for &(a, b) in &ranges {
                proptest::prop_assert!(a <= b && text.is_char_boundary(a) && text.is_char_boundary(b));
                if sp.len() > max {
                    let inside = sp.iter().filter(|&&(x, y)| x >= a && y <= b).count();
                    proptest::prop_assert!(inside <= max, "{} tokens in {:?}", inside, (a, b));
                }
            }
            for pair in ranges.windows(2) {
                proptest::prop_assert!(pair[0].0 < pair[1].0, "chunks advance: {:?}", ranges);
                // No gap between consecutive chunks' tokens.
                let gap = sp.iter().any(|&(x, y)| x >= pair[0].1 && y <= pair[1].0);
                proptest::prop_assert!(!gap, "a token fell between {:?}", pair);
            }
        }
    }
}
