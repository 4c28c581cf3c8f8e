//! Persona cards as memories. A card (who the assistant is: a name, a manner, a backstory;
//! SillyTavern character cards run to thousands of tokens) is split into chunks of whole
//! sentences, stored as the session's `persona` memories, and searched like the rest. The
//! prompt carries the card whole when it fits its share of the budget
//! ([`crate::context::ContextBudget::persona_share`]); a longer card is represented by its
//! first chunk (the card's opening: the name) and then the chunks most relevant to the
//! message, as many as fit, in the card's order ([`crate::context::fit_persona`]).

/// Longest chunk, in bytes (a piece of a longer sentence is cut at a space).
pub const PERSONA_CHUNK_BYTES: usize = 400;

/// Most chunks one card is split into (a card of the largest allowed size, 64 KiB, makes
/// about 170).
pub const MAX_PERSONA_CHUNKS: usize = 256;

/// The metadata key of a persona memory's position in its card.
pub const PERSONA_CHUNK_KEY: &str = "persona_chunk";

/// The card's lines, then sentences, packed into chunks of at most [`PERSONA_CHUNK_BYTES`]
/// bytes, in order; a chunk never starts or ends inside a sentence unless that sentence alone
/// is longer than a chunk. Empty for a blank card; at most [`MAX_PERSONA_CHUNKS`] (the rest
/// of a longer card is left out).
pub fn chunks(card: &str) -> Vec<String> {
    let mut pieces: Vec<&str> = Vec::new();
    for line in card.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut start = 0;
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let ends = matches!(b, b'.' | b'!' | b'?')
                && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace());
            if ends {
                pieces.push(line[start..=i].trim());
                start = i + 1;
            }
        }
        if start < line.len() {
            pieces.push(line[start..].trim());
        }
    }
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
        for part in split_long(piece) {
            if !current.is_empty() && current.len() + 1 + part.len() > PERSONA_CHUNK_BYTES {
                out.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(part);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out.truncate(MAX_PERSONA_CHUNKS);
    out
}

/// A sentence longer than a chunk, cut at spaces (or, with none, at a character boundary).
fn split_long(sentence: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = sentence;
    while rest.len() > PERSONA_CHUNK_BYTES {
        let mut cut = PERSONA_CHUNK_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let at = rest[..cut].rfind(' ').filter(|&i| i > 0).unwrap_or(cut);
        out.push(rest[..at].trim_end());
        rest = rest[at..].trim_start();
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cards_are_one_chunk_and_blank_ones_none() {
        assert_eq!(
            chunks("You are Mira, a ship's captain."),
            ["You are Mira, a ship's captain."]
        );
        assert!(chunks("  \n \n").is_empty());
    }

    #[test]
    fn long_cards_are_packed_sentences_in_order() {
        let card: String = (0..60)
            .map(|i| format!("Sentence number {i} tells something about Mira.\n"))
            .collect();
        let out = chunks(&card);
        assert!(out.len() > 4, "{}", out.len());
        assert!(out.iter().all(|c| c.len() <= PERSONA_CHUNK_BYTES));
        // Every sentence is in exactly one chunk, whole, and in order.
        let joined = out.join(" ");
        let expected: Vec<String> = (0..60)
            .map(|i| format!("Sentence number {i} tells something about Mira."))
            .collect();
        assert_eq!(joined, expected.join(" "));
        assert!(out.iter().all(|c| c.ends_with('.')));
    }

    #[test]
    fn an_overlong_sentence_is_cut_at_spaces_and_multibyte_text_survives() {
        let long = "word ".repeat(300);
        let out = chunks(&long);
        assert!(out.len() >= 3);
        assert!(
            out.iter()
                .all(|c| c.len() <= PERSONA_CHUNK_BYTES && !c.starts_with(' '))
        );
        assert_eq!(out.join(" ").split_whitespace().count(), 300);
        let cjk = "船長".repeat(400);
        let out = chunks(&cjk);
        assert_eq!(out.concat(), cjk);
        assert!(out.iter().all(|c| c.len() <= PERSONA_CHUNK_BYTES));
    }

    #[test]
    fn decimals_and_abbreviations_without_a_following_space_do_not_split() {
        assert_eq!(
            chunks("Version 2.5 of Mira.Really."),
            ["Version 2.5 of Mira.Really."]
        );
    }
}
