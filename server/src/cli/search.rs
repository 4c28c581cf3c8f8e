//! `deep-recall search`: hybrid retrieval with re-ranking by default, or the paginated plain
//! vector search.
use chrono::{DateTime, Utc};
use clap::Args;
use recall_core::error::Error;
use recall_core::retrieval::{Fusion, RankingConfig, SearchMode};
use recall_core::types::{Filter, MemoryKind, MetadataCondition, Role, SearchPage};
use recall_core::{Engine, RetrieveOptions, SearchOptions};
use serde_json::json;

use crate::settings::Settings;
use crate::startup;

#[derive(Debug, Args)]
pub(super) struct SearchArgs {
    /// Whose memories to search.
    #[arg(long)]
    user: String,
    /// How many results.
    #[arg(long, short = 'k', default_value_t = 10)]
    top_k: usize,
    #[command(flatten)]
    filter: FilterArgs,
    /// Drop results scoring below this (raw similarity in plain vector mode).
    #[arg(long)]
    min_score: Option<f32>,
    /// Continue after a previous page (its `next_cursor`; plain vector mode only).
    #[arg(long)]
    cursor: Option<String>,
    /// Retrievers: vector, text or hybrid.
    #[arg(long, default_value = "hybrid")]
    mode: SearchMode,
    #[command(flatten)]
    ranking: RankingArgs,
    /// The time the question is asked at (RFC 3339; now by default): what recency and time
    /// words ("last week") are read against, as `eval` sets it to a day after the last session.
    #[arg(long)]
    now: Option<DateTime<Utc>>,
    /// What to look for.
    query: String,
}

/// What narrows a search or a listing (`search`, `memories`): core's `Filter`.
#[derive(Debug, Args)]
pub(super) struct FilterArgs {
    /// Only this session.
    #[arg(long)]
    session: Option<String>,
    /// Only these kinds (message, fact, persona, summary); repeatable.
    #[arg(long)]
    kind: Vec<MemoryKind>,
    /// Only these roles (user, assistant, system); repeatable.
    #[arg(long)]
    role: Vec<Role>,
    /// Only memories with every one of these tags; repeatable.
    #[arg(long)]
    tag: Vec<String>,
    /// Only memories at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only memories before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// What was true at this time (RFC 3339): memories written by then and neither
    /// superseded nor expired by then.
    #[arg(long)]
    as_of: Option<DateTime<Utc>>,
    /// Superseded memories too.
    #[arg(long)]
    include_superseded: bool,
    /// A condition on the metadata, `KEY OP VALUE` (OP: eq, ne, in, gt, gte, lt, lte,
    /// contains, exists; VALUE as JSON or a plain string), e.g. `--where 'priority gte 2'`;
    /// repeatable, all must hold.
    #[arg(long = "where", value_name = "KEY OP VALUE")]
    conditions: Vec<MetadataCondition>,
}

impl FilterArgs {
    /// The filter these flags say.
    pub(super) fn filter(&self) -> Filter {
        Filter {
            session: self.session.clone(),
            kinds: self.kind.clone(),
            roles: self.role.clone(),
            tags: self.tag.clone(),
            since: self.since,
            until: self.until,
            as_of: self.as_of,
            include_superseded: self.include_superseded,
            metadata: self.conditions.clone(),
        }
    }
}

pub(super) async fn run(
    settings: &Settings,
    args: &SearchArgs,
    json: bool,
) -> recall_core::Result<()> {
    let filter = args.filter.filter();
    // Every ranking flag is checked, whichever path serves the search.
    let ranking = args.ranking.config(args.mode, args.min_score)?;
    if args.ranking.is_plain_vector(args.mode) {
        if args.now.is_some() {
            return Err(Error::invalid(
                "--now is for ranked search (plain vector search reads no time)",
            ));
        }
        let options = SearchOptions {
            top_k: args.top_k,
            min_score: args.min_score,
            filter,
            cursor: args.cursor.clone(),
        };
        let engine = startup::engine(settings).await?;
        return search(&engine, &args.user, &args.query, &options, json).await;
    }
    if args.cursor.is_some() {
        return Err(Error::invalid(
            "--cursor pages plain vector search only (--mode vector without re-ranking)",
        ));
    }
    let options = RetrieveOptions {
        top_k: args.top_k,
        mode: args.mode,
        filter,
        ranking,
        now: args.now,
    };
    let engine = startup::engine(settings).await?;
    retrieve(&engine, &args.user, &args.query, &options, json).await
}

/// Re-ranking flags shared by `search` and `eval`.
#[derive(Debug, Clone, Args)]
pub(super) struct RankingArgs {
    /// Apply the re-ranking signals (the default in hybrid mode).
    #[arg(long, overrides_with = "no_rerank")]
    rerank: bool,
    /// Relevance only (the default in vector and text modes).
    #[arg(long)]
    no_rerank: bool,
    /// Candidates taken from each retriever.
    #[arg(long)]
    candidates: Option<usize>,
    /// Hybrid fusion: rrf or weighted.
    #[arg(long)]
    fusion: Option<String>,
    /// RRF's k, or the vector weight alpha of weighted fusion.
    #[arg(long)]
    fusion_param: Option<f32>,
    /// Weight of recency (0 switches it off).
    #[arg(long)]
    recency_weight: Option<f32>,
    /// Recency half-life in days.
    #[arg(long)]
    half_life_days: Option<f32>,
    /// Weight of importance (0 switches it off).
    #[arg(long)]
    importance_weight: Option<f32>,
    /// Weight of emotional match (0 switches it off).
    #[arg(long)]
    emotion_weight: Option<f32>,
    /// MMR lambda in [0, 1] (1 switches diversity off).
    #[arg(long)]
    mmr: Option<f32>,
    /// Candidates re-scored by the cross-encoder (with --cross-encoder).
    #[arg(long)]
    cross_encoder_top_n: Option<usize>,
    /// Weight of the cross-encoder's probability in [0, 1] (0 switches it off).
    #[arg(long)]
    cross_encoder_weight: Option<f32>,
    /// Weight of the time signal: memories in a window the query names (0 switches it off).
    #[arg(long)]
    time_weight: Option<f32>,
    /// Weight of the query's names and quoted phrases found in a memory (0 switches it off).
    #[arg(long)]
    entity_weight: Option<f32>,
    /// Weight of the speaker signal: memories said by someone the query names (0 switches
    /// it off).
    #[arg(long)]
    speaker_weight: Option<f32>,
    /// Subtracted from the score of memories that end with a question (0 switches it off).
    #[arg(long)]
    question_penalty: Option<f32>,
    /// Weight of the content signal: how much a memory says (0 switches it off).
    #[arg(long)]
    content_weight: Option<f32>,
    /// Weight of the time-answer signal: memories that name a time, for a query that asks
    /// for one (0 switches it off).
    #[arg(long)]
    time_answer_weight: Option<f32>,
    /// Turns on each side of the best candidates read as their neighbourhood (0 to 5).
    #[arg(long)]
    neighbours: Option<usize>,
    /// Weight of the best neighbouring turn's relevance (0 switches it off).
    #[arg(long)]
    neighbour_weight: Option<f32>,
}

impl RankingArgs {
    pub(super) fn config(
        &self,
        mode: SearchMode,
        min_score: Option<f32>,
    ) -> recall_core::Result<RankingConfig> {
        let mut c = if self.no_rerank {
            RankingConfig::plain()
        } else if self.rerank {
            RankingConfig::default()
        } else {
            RankingConfig::for_mode(mode)
        };
        if let Some(n) = self.candidates {
            c.candidates = n;
        }
        // The parameter alone tunes the mode's own fusion; a method named without one gets
        // that method's default.
        c.fusion = match (self.fusion.as_deref(), self.fusion_param) {
            (None, None) => c.fusion,
            (None, Some(p)) => c.fusion.with_param(p),
            (Some("rrf"), p) => Fusion::Rrf {
                k: p.unwrap_or(Fusion::RRF_K),
            },
            (Some("weighted"), p) => Fusion::Weighted {
                alpha: p.unwrap_or(Fusion::WEIGHTED_ALPHA),
            },
            (Some(other), _) => {
                return Err(Error::invalid(format!(
                    "unknown fusion {other:?} (rrf or weighted)"
                )));
            }
        };
        if let Some(w) = self.recency_weight {
            c.recency_weight = w;
        }
        if let Some(d) = self.half_life_days {
            c.recency_half_life_days = d;
        }
        if let Some(w) = self.importance_weight {
            c.importance_weight = w;
        }
        if let Some(w) = self.emotion_weight {
            c.emotion_weight = w;
        }
        if let Some(l) = self.mmr {
            c.mmr_lambda = Some(l);
        }
        if let Some(n) = self.cross_encoder_top_n {
            c.cross_encoder_top_n = n;
        }
        if let Some(w) = self.cross_encoder_weight {
            c.cross_encoder_weight = w;
        }
        if let Some(w) = self.time_weight {
            c.time_weight = w;
        }
        if let Some(w) = self.entity_weight {
            c.entity_weight = w;
        }
        if let Some(w) = self.speaker_weight {
            c.speaker_weight = w;
        }
        if let Some(w) = self.question_penalty {
            c.question_penalty = w;
        }
        if let Some(w) = self.content_weight {
            c.content_weight = w;
        }
        if let Some(w) = self.time_answer_weight {
            c.time_answer_weight = w;
        }
        if let Some(n) = self.neighbours {
            c.neighbours = n;
        }
        if let Some(w) = self.neighbour_weight {
            c.neighbour_weight = w;
        }
        c.min_score = min_score;
        c.validate()?;
        Ok(c)
    }

    /// Plain vector search with no signal and no ranking flag: served by the paginated
    /// similarity search.
    fn is_plain_vector(&self, mode: SearchMode) -> bool {
        mode == SearchMode::Vector
            && !self.rerank
            && self.candidates.is_none()
            && self.fusion.is_none()
            && self.fusion_param.is_none()
            && self.half_life_days.is_none()
            && self.cross_encoder_top_n.is_none()
            && self.cross_encoder_weight.is_none_or(|w| w == 0.0)
            && self.neighbours.is_none()
            && self.recency_weight.is_none_or(|w| w == 0.0)
            && self.importance_weight.is_none_or(|w| w == 0.0)
            && self.emotion_weight.is_none_or(|w| w == 0.0)
            && self.time_weight.is_none_or(|w| w == 0.0)
            && self.entity_weight.is_none_or(|w| w == 0.0)
            && self.speaker_weight.is_none_or(|w| w == 0.0)
            && self.question_penalty.is_none_or(|w| w == 0.0)
            && self.content_weight.is_none_or(|w| w == 0.0)
            && self.time_answer_weight.is_none_or(|w| w == 0.0)
            && self.neighbour_weight.is_none_or(|w| w == 0.0)
            && self.mmr.is_none_or(|l| l >= 1.0)
    }
}

fn print_page(page: &SearchPage, json: bool) {
    if json {
        let hits: Vec<_> = page
            .hits
            .iter()
            .map(|h| {
                json!({
                    "id": h.memory.id,
                    "score": h.score,
                    "distance": h.distance,
                    "kind": h.memory.kind,
                    "content": h.memory.content,
                    "session": h.memory.session,
                    "role": h.memory.role,
                    "message_id": h.memory.message_id,
                    "tags": h.memory.tags,
                    "metadata": h.memory.metadata,
                    "created_at": h.memory.created_at,
                    "expires_at": h.memory.expires_at,
                    "supersedes": h.memory.supersedes,
                    "superseded_by": h.memory.superseded_by,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "hits": hits, "next_cursor": page.next_cursor })
        );
        return;
    }
    if page.hits.is_empty() {
        println!("no memories found");
    }
    for (i, h) in page.hits.iter().enumerate() {
        let m = &h.memory;
        let role = m.role.map_or(String::new(), |r| format!("{r}, "));
        println!(
            "{:>3}. [{:.4}] ({}session {}, {}) {}",
            i + 1,
            h.score,
            role,
            m.session.as_deref().unwrap_or("-"),
            m.created_at.format("%Y-%m-%d %H:%M"),
            m.content
        );
    }
    if let Some(c) = &page.next_cursor {
        println!("more: --cursor {c}");
    }
}

async fn search(
    engine: &Engine,
    user: &str,
    query: &str,
    options: &SearchOptions,
    json: bool,
) -> recall_core::Result<()> {
    let page = engine.search(user, query, options).await?;
    print_page(&page, json);
    Ok(())
}

async fn retrieve(
    engine: &Engine,
    user: &str,
    query: &str,
    options: &RetrieveOptions,
    json: bool,
) -> recall_core::Result<()> {
    let hits = engine.retrieve(user, query, options).await?;
    if json {
        let hits: Vec<_> = hits
            .iter()
            .map(|h| {
                json!({
                    "id": h.memory.id,
                    "score": h.score,
                    "similarity": h.signals.similarity,
                    "signals": h.signals,
                    "kind": h.memory.kind,
                    "content": h.memory.content,
                    "session": h.memory.session,
                    "role": h.memory.role,
                    "message_id": h.memory.message_id,
                    "tags": h.memory.tags,
                    "importance": h.memory.importance,
                    "emotion": h.memory.emotion,
                    "metadata": h.memory.metadata,
                    "created_at": h.memory.created_at,
                    "expires_at": h.memory.expires_at,
                    "supersedes": h.memory.supersedes,
                    "superseded_by": h.memory.superseded_by,
                })
            })
            .collect();
        println!("{}", json!({ "mode": options.mode, "hits": hits }));
        return Ok(());
    }
    if hits.is_empty() {
        println!("no memories found");
    }
    for (i, h) in hits.iter().enumerate() {
        let m = &h.memory;
        let role = m.role.map_or(String::new(), |r| format!("{r}, "));
        let sim = h
            .signals
            .similarity
            .map_or(String::new(), |s| format!(" sim {s:.4}"));
        println!(
            "{:>3}. [{:.4}{sim}] ({}session {}, {}) {}",
            i + 1,
            h.score,
            role,
            m.session.as_deref().unwrap_or("-"),
            m.created_at.format("%Y-%m-%d %H:%M"),
            m.content
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        ranking: RankingArgs,
    }

    fn fusion(args: &[&str]) -> recall_core::Result<Fusion> {
        let flags = Flags::parse_from(std::iter::once("t").chain(args.iter().copied()));
        Ok(flags.ranking.config(SearchMode::Hybrid, None)?.fusion)
    }

    /// `--fusion-param` alone tunes the default fusion (weighted: its alpha), not RRF; a
    /// method named alone gets its own default.
    #[test]
    fn fusion_flags() {
        assert_eq!(fusion(&[]).unwrap(), Fusion::default());
        assert_eq!(
            fusion(&["--fusion-param", "0.5"]).unwrap(),
            Fusion::Weighted { alpha: 0.5 }
        );
        assert_eq!(
            fusion(&["--fusion", "weighted"]).unwrap(),
            Fusion::Weighted {
                alpha: Fusion::WEIGHTED_ALPHA
            }
        );
        assert_eq!(
            fusion(&["--fusion", "rrf"]).unwrap(),
            Fusion::Rrf { k: Fusion::RRF_K }
        );
        assert_eq!(
            fusion(&["--fusion", "rrf", "--fusion-param", "10"]).unwrap(),
            Fusion::Rrf { k: 10.0 }
        );
        assert!(fusion(&["--fusion", "bogus"]).is_err());
        assert!(
            fusion(&["--fusion-param", "1.5"]).is_err(),
            "alpha is in [0, 1]"
        );
    }
}
