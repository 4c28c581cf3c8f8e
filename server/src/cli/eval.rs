//! `deep-recall eval`: retrieval quality on a LoCoMo-format benchmark, per category.
use std::collections::HashMap;
use std::path::PathBuf;

use chrono::Utc;
use clap::Args;
use indicatif::ProgressBar;
use recall_core::RetrieveOptions;
use recall_core::error::Error;
use recall_core::eval::EvalOptions;
use recall_core::retrieval::{RankingConfig, SearchMode};
use recall_core::types::Actor;
use serde_json::json;

use super::search::RankingArgs;
use super::spinner_style;
use crate::settings::Settings;
use crate::startup;

#[derive(Debug, Args)]
pub(super) struct EvalArgs {
    /// The dataset (a JSON list of LoCoMo samples).
    file: PathBuf,
    /// Cut-offs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    k: Vec<usize>,
    /// Modes to evaluate (vector, text, hybrid), comma-separated; each is reported
    /// separately, on the same ingested data.
    #[arg(long, value_delimiter = ',', default_value = "hybrid")]
    mode: Vec<SearchMode>,
    /// Only questions of these categories, comma-separated (all when absent; LoCoMo's
    /// figures use 1,2,3,4 and leave out the adversarial 5).
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    /// A ranking setting to vary, `name=v1,v2,...` (a field of the ranking configuration,
    /// e.g. `neighbour_weight=0,0.1`); repeat for a matrix: every combination is reported,
    /// on the same ingested data.
    #[arg(long, value_name = "NAME=VALUES")]
    vary: Vec<String>,
    /// Also write every question's ranked turns and evidence ranks, one JSON report per
    /// line, to this file.
    #[arg(long)]
    details: Option<PathBuf>,
    /// With `--details`: how many of each question's top turns to give the signals of (the
    /// evidence's always); the whole ranked list re-scores a ranking offline.
    #[arg(long, value_name = "N", default_value_t = recall_core::eval::DETAILED_TURNS)]
    details_turns: usize,
    /// Deep memory: after the plain run, have the chat model write questions for every
    /// turn of each sample, train each sample's adapter, turn it on where it helps on the
    /// held-out pairs, and evaluate again (reports say `"deep_memory": true`); a summary of
    /// the pairs and the training follows.
    #[arg(long)]
    deep_memory: bool,
    /// Deep memory: questions per turn.
    #[arg(long, default_value_t = 1)]
    deep_memory_questions: usize,
    /// Deep memory: pairs per sample at most.
    #[arg(long, default_value_t = 5000)]
    deep_memory_max_pairs: usize,
    /// Deep memory: where the pairs come from: `generated` (the chat model writes them), or
    /// `questions` (half of each sample's questions, by a hash of their text, become the
    /// user's own pairs with their evidence turns, as clicks on search results would; every
    /// report, with and without deep memory, then judges only the other half).
    #[arg(long, value_enum, default_value = "generated")]
    deep_memory_pairs: PairsFrom,
    /// Deep memory: training epochs.
    #[arg(long, default_value_t = recall_core::deep_memory::TrainOptions::default().epochs)]
    deep_memory_epochs: usize,
    /// Deep memory: rank of the adapters.
    #[arg(long, default_value_t = recall_core::deep_memory::TrainOptions::default().rank)]
    deep_memory_rank: usize,
    /// Deep memory: learning rate.
    #[arg(long, default_value_t = recall_core::deep_memory::TrainOptions::default().learning_rate)]
    deep_memory_learning_rate: f64,
    /// Also ask the chat model (`chat.model`, e.g. `DEEP_RECALL__CHAT__MODEL=gemma-3-270m`,
    /// or `chat.url`) every question that has a reference answer, with the prompt the chat
    /// pipeline builds (the memories retrieved for it, no history), and score the answers:
    /// LoCoMo's token F1, whether the reference is in the answer, and whether an evidence turn
    /// was in the prompt. Greedy, 48 tokens at most.
    #[arg(long)]
    answers: bool,
    /// Answers: questions per category and sample at most (the first ones).
    #[arg(long)]
    answers_per_category: Option<usize>,
    /// Extra keys, measured with and without: the plain run has keys off; then turn keys on
    /// for every sample, write the context keys (one for every turn with one before it, two
    /// for an answer; `--keys-facts`: and have the chat model, `chat.model`, write a fact
    /// for every turn; `--keys-sessions`: its session window's topic), and evaluate again
    /// (reports say `"keys": true`); a summary of the keys written follows. Without it (and
    /// without `--no-keys`) the one run has what a new user gets with the settings
    /// (`memory_keys.new_users`, on by default): keys written before it, as the key job
    /// writes them.
    #[arg(long, conflicts_with = "no_keys")]
    keys: bool,
    /// Keys off, whatever new users start with (the plain run of `--keys` alone).
    #[arg(long)]
    no_keys: bool,
    /// Keys: the fact alone, without the turn's text after it (which keys hold by default,
    /// "K = V + fact").
    #[arg(long)]
    keys_fact_only: bool,
    /// Keys: facts written by the chat model too (off by default, as in the job).
    #[arg(long)]
    keys_facts: bool,
    /// Keys: session keys too (the topic of each stretch of a session, off by default).
    #[arg(long)]
    keys_sessions: bool,
    /// Keys: no context keys (the turns around each turn; written without the model).
    #[arg(long)]
    keys_no_context: bool,
    /// Keys: turns asked about at once.
    #[arg(long, default_value_t = recall_core::memory_keys::KeyOptions::default().concurrency)]
    keys_concurrency: usize,
    #[command(flatten)]
    ranking: RankingArgs,
}

/// Where `eval --deep-memory` takes its pairs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PairsFrom {
    /// The chat model writes a question per turn.
    Generated,
    /// Half of the benchmark's own questions, with their evidence.
    Questions,
}

/// Whether a question is in the half that `--deep-memory-pairs questions` trains on (FNV-1a
/// of its text).
fn trains_on(question: &str) -> bool {
    let h = question.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h % 2 == 0
}

/// One `--vary` axis: a ranking field and its values.
fn parse_vary(spec: &str) -> recall_core::Result<(String, Vec<serde_json::Value>)> {
    let (name, values) = spec
        .split_once('=')
        .ok_or_else(|| Error::invalid(format!("--vary {spec:?}: expected NAME=V1,V2")))?;
    let known = serde_json::to_value(RankingConfig::default())
        .map_err(|e| Error::Internal(e.to_string()))?;
    if known.get(name).is_none_or(serde_json::Value::is_object) {
        return Err(Error::invalid(format!(
            "--vary: {name:?} is not a ranking setting that takes a value"
        )));
    }
    let values = values
        .split(',')
        .map(|v| {
            serde_json::from_str(v.trim())
                .map_err(|_| Error::invalid(format!("--vary {name}: {v:?} is not a value")))
        })
        .collect::<recall_core::Result<Vec<_>>>()?;
    Ok((name.to_owned(), values))
}

/// The configurations of the matrix: `base` with every combination of the axes' values.
fn matrix(
    base: &RankingConfig,
    axes: &[(String, Vec<serde_json::Value>)],
) -> recall_core::Result<Vec<(RankingConfig, serde_json::Map<String, serde_json::Value>)>> {
    let mut out = vec![(base.clone(), serde_json::Map::new())];
    for (name, values) in axes {
        let mut next = Vec::with_capacity(out.len() * values.len());
        for (config, set) in &out {
            for v in values {
                let mut json =
                    serde_json::to_value(config).map_err(|e| Error::Internal(e.to_string()))?;
                json[name.as_str()] = v.clone();
                let config: RankingConfig = serde_json::from_value(json)
                    .map_err(|e| Error::invalid(format!("--vary {name}={v}: {e}")))?;
                config.validate()?;
                let mut set = set.clone();
                set.insert(name.clone(), v.clone());
                next.push((config, set));
            }
        }
        out = next;
    }
    Ok(out)
}

pub(super) async fn run(
    settings: &Settings,
    args: &EvalArgs,
    json: bool,
) -> recall_core::Result<()> {
    let (file, ks, modes, ranking) = (&args.file, &args.k, &args.mode, &args.ranking);
    if ks.is_empty() || ks.contains(&0) {
        return Err(Error::invalid("--k needs cut-offs of at least 1"));
    }
    let axes = args
        .vary
        .iter()
        .map(|v| parse_vary(v))
        .collect::<recall_core::Result<Vec<_>>>()?;
    // Every configuration is checked before anything is ingested.
    let mut plans = Vec::new();
    for mode in modes {
        for (config, varied) in matrix(&ranking.config(*mode, None)?, &axes)? {
            plans.push((*mode, config, varied));
        }
    }
    let eval = EvalOptions {
        ks: ks.clone(),
        categories: args.categories.clone(),
        details: args.details.is_some(),
        detail_turns: args.details_turns,
    };
    let text = std::fs::read_to_string(file).map_err(|e| Error::input_file(file, e))?;
    let (samples, warnings) = recall_core::eval::parse_locomo(&text)?;
    // The details file is opened now: a path it cannot be written at is said before the
    // run, not after it.
    let details = args
        .details
        .as_ref()
        .map(|path| {
            std::fs::File::create(path).map_err(|e| {
                Error::invalid(format!("cannot write --details {}: {e}", path.display()))
            })
        })
        .transpose()?;
    for w in &warnings.bad_evidence {
        eprintln!("warning: skipped evidence id {w}");
    }
    for w in &warnings.undated_sessions {
        eprintln!("warning: no readable date for {w}: its turns are stamped when stored");
    }
    let engine = startup::engine(settings).await?;
    let run = format!("{:x}", Utc::now().timestamp_micros());
    // Pairs from the questions: their half is set aside, every report judges the other.
    let from_questions = args.deep_memory && args.deep_memory_pairs == PairsFrom::Questions;
    // Default settings: the keys a new user gets, written as the key job writes them.
    let keyed_plain = !args.keys && !args.no_keys && settings.memory_keys.new_users;
    // The users whose ingestion began: they go at the end whatever happened, on an error or
    // an interruption (Ctrl-C) too.
    let mut started: Vec<String> = Vec::new();
    let mut ingested = Vec::with_capacity(samples.len());
    let (mut keyed, mut reports, mut deep, mut answered) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let work = async {
        let bar = ProgressBar::new(samples.len() as u64).with_style(spinner_style());
        bar.set_message("ingesting");
        for s in samples {
            let user = format!("eval-{run}-{}", s.id);
            started.push(user.clone());
            // Keys off until the key job has run (below); off for the plain run of `--keys`.
            let i = recall_core::eval::ingest_sample(&engine, &user, &s).await?;
            engine.set_memory_keys(&user, false).await?;
            ingested.push((s, i));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut training: Vec<Vec<recall_core::eval::Question>> = Vec::new();
        if from_questions {
            for (s, _) in &mut ingested {
                let (train, judge) = std::mem::take(&mut s.questions)
                    .into_iter()
                    .partition(|q| trains_on(&q.question));
                s.questions = judge;
                training.push(train);
            }
        }
        if keyed_plain {
            keys(settings, args, &engine, &ingested, &mut keyed).await?;
        }
        evaluate_all(&engine, &ingested, &eval, &plans, &mut reports).await?;
        if args.deep_memory {
            deep_memory(settings, args, &engine, &ingested, &training, &mut deep).await?;
            let before = reports.len();
            evaluate_all(&engine, &ingested, &eval, &plans, &mut reports).await?;
            for r in &mut reports[before..] {
                r["deep_memory"] = json!(true);
            }
        }
        if args.keys {
            keys(settings, args, &engine, &ingested, &mut keyed).await?;
            let before = reports.len();
            evaluate_all(&engine, &ingested, &eval, &plans, &mut reports).await?;
            for r in &mut reports[before..] {
                r["keys"] = json!(true);
            }
        }
        if args.answers {
            answers(settings, args, &engine, &ingested, &mut answered).await?;
        }
        Ok::<_, Error>(())
    };
    let outcome = tokio::select! {
        out = work => Some(out),
        _ = tokio::signal::ctrl_c() => None,
    };
    for user in &started {
        engine.delete_user(user, &Actor::cli()).await?;
    }
    let Some(outcome) = outcome else {
        eprintln!("interrupted: the run's temporary users were deleted");
        std::process::exit(130);
    };
    outcome?;
    if keyed_plain {
        for r in &mut reports {
            r["keys"] = json!(true);
        }
        // What the keys are is `--keys`'s to tell: default settings print only the reports.
        keyed.clear();
    }
    if from_questions {
        for r in &mut reports {
            r["questions_judged"] = json!("the half not trained on");
        }
    }
    if let (Some(path), Some(mut out)) = (&args.details, details) {
        let mut lines = String::new();
        for r in reports.iter().chain(&answered).chain(&keyed) {
            lines += &r.to_string();
            lines.push('\n');
        }
        std::io::Write::write_all(&mut out, lines.as_bytes()).map_err(|e| Error::io(path, e))?;
    }
    for r in &mut reports {
        r["bad_evidence"] = json!(warnings.bad_evidence.len());
        r["skipped_questions"] = json!(warnings.skipped_questions);
        r["undated_sessions"] = json!(warnings.undated_sessions.len());
        if let Some(m) = r.as_object_mut() {
            m.remove("details");
        }
        if json {
            println!("{r}");
        } else {
            print_eval(r, ks);
        }
    }
    for r in &mut answered {
        if let Some(m) = r.as_object_mut() {
            m.remove("details");
        }
        if json {
            println!("{r}");
        } else {
            print_answers(r);
        }
    }
    for k in &keyed {
        if json {
            println!("{k}");
        } else {
            println!(
                "keys {}: {} keys ({} from {} session windows, {} rejected) for {} turns ({} \
                 rejected) by {} in {:.0}s",
                k["sample"].as_str().unwrap_or("?"),
                k["keys"],
                k["session_keys"],
                k["windows"],
                k["rejected_windows"],
                k["memories"],
                k["rejected"],
                k["model"].as_str().unwrap_or("?"),
                k["seconds"].as_f64().unwrap_or(0.0),
            );
            for e in k["examples"].as_array().into_iter().flatten() {
                println!(
                    "  {:?}\n    -> {:?}",
                    e["turn"].as_str().unwrap_or(""),
                    e["key"].as_str().unwrap_or("")
                );
            }
        }
    }
    for d in &deep {
        if json {
            println!("{d}");
        } else if let Some(err) = d["error"].as_str() {
            println!(
                "deep memory {}: {} pairs; not trained: {err}",
                d["sample"].as_str().unwrap_or("?"),
                d["pairs"]
            );
        } else {
            let e = &d["held_out"];
            println!(
                "deep memory {}: {} pairs in {:.0}s ({:.2}/s), trained in {:.1}s; held-out \
                 recall@10 {:.3} -> {:.3}, MRR {:.3} -> {:.3} ({} pairs); {}",
                d["sample"].as_str().unwrap_or("?"),
                d["pairs"],
                d["generate_seconds"].as_f64().unwrap_or(0.0),
                d["pairs_per_second"].as_f64().unwrap_or(0.0),
                d["train_seconds"].as_f64().unwrap_or(0.0),
                e["before"]["recall@10"].as_f64().unwrap_or(0.0),
                e["after"]["recall@10"].as_f64().unwrap_or(0.0),
                e["before"]["mrr"].as_f64().unwrap_or(0.0),
                e["after"]["mrr"].as_f64().unwrap_or(0.0),
                e["pairs"],
                if d["enabled"] == json!(true) {
                    "on"
                } else {
                    "off (did not help)"
                }
            );
        }
    }
    Ok(())
}

/// Writes pairs for every sample with the chat model, trains its adapter and turns it on
/// where it helps; one summary per sample.
async fn deep_memory(
    settings: &Settings,
    args: &EvalArgs,
    engine: &recall_core::Engine,
    ingested: &[(recall_core::eval::Sample, recall_core::eval::Ingested)],
    training: &[Vec<recall_core::eval::Question>],
    out: &mut Vec<serde_json::Value>,
) -> recall_core::Result<()> {
    let generate = recall_core::deep_memory::GenerateOptions {
        questions_per_memory: args.deep_memory_questions,
        max_pairs: args.deep_memory_max_pairs,
        ..recall_core::deep_memory::GenerateOptions::default()
    };
    generate.validate()?;
    let train = recall_core::deep_memory::TrainOptions {
        epochs: args.deep_memory_epochs,
        rank: args.deep_memory_rank,
        learning_rate: args.deep_memory_learning_rate,
        ..Default::default()
    };
    train.validate()?;
    let engine = if args.deep_memory_pairs == PairsFrom::Generated {
        let model = startup::chat_model(settings, generate.concurrency, true).await?;
        engine.clone().with_llm(Some(model))
    } else {
        engine.clone()
    };
    for (n, (s, i)) in ingested.iter().enumerate() {
        let bar = ProgressBar::new(0).with_style(spinner_style());
        bar.set_message(format!("{}: writing questions", s.id));
        let report = match training.get(n) {
            Some(questions) => question_pairs(&engine, s, i, questions, &args.categories).await?,
            None => {
                engine
                    .deep_memory_generate(&i.user, &generate, &mut |done, total, _| {
                        bar.set_length(total);
                        bar.set_position(done);
                    })
                    .await?
            }
        };
        bar.set_message(format!("{}: training", s.id));
        let trained = engine.deep_memory_train(&i.user, &train, &mut |_| {}).await;
        bar.finish_and_clear();
        let mut summary = json!({
            "deep_memory_summary": true,
            "sample": s.id,
            "pairs": report.pairs,
            "rejected": report.rejected,
            "model": report.model,
            "generate_seconds": report.seconds,
            "pairs_per_second": report.pairs_per_second,
            "enabled": false,
        });
        match trained {
            Ok(stored) => {
                summary["enabled"] = json!(engine.deep_memory_enable(&i.user).await.is_ok());
                summary["train_seconds"] = json!(stored.report.seconds);
                summary["train_pairs"] = json!(stored.report.train_pairs);
                summary["best_epoch"] = json!(stored.report.best_epoch);
                summary["held_out"] = json!(stored.report.evaluation);
            }
            // Too few pairs to train on: the sample goes without.
            Err(e) if e.kind() == recall_core::error::ErrorKind::InvalidInput => {
                summary["error"] = json!(e.to_string());
            }
            Err(e) => return Err(e),
        }
        out.push(summary);
    }
    Ok(())
}

/// Adds a sample's training questions (of the chosen categories) as the user's own pairs,
/// one per evidence turn.
async fn question_pairs(
    engine: &recall_core::Engine,
    sample: &recall_core::eval::Sample,
    ingested: &recall_core::eval::Ingested,
    questions: &[recall_core::eval::Question],
    categories: &[String],
) -> recall_core::Result<recall_core::deep_memory::GenerateReport> {
    let started = std::time::Instant::now();
    // Turn id → the ids of its memories.
    let mut by_turn: std::collections::HashMap<&str, Vec<i64>> = Default::default();
    let mut page = recall_core::types::PageRequest {
        first: 500,
        after: None,
    };
    loop {
        let got = engine
            .memories(&ingested.user, &Default::default(), &page)
            .await?;
        for m in &got.items {
            if let Some(turn) = m.message_id.and_then(|id| ingested.by_message.get(&id)) {
                by_turn.entry(turn.as_str()).or_default().push(m.id);
            }
        }
        match got.next_cursor {
            Some(c) => page.after = Some(c),
            None => break,
        }
    }
    let pairs: Vec<(String, i64)> = questions
        .iter()
        .filter(|q| categories.is_empty() || categories.contains(&q.category))
        .flat_map(|q| {
            q.evidence
                .iter()
                .flat_map(|e| by_turn.get(e.as_str()).into_iter().flatten())
                .map(|id| (q.question.clone(), *id))
        })
        .collect();
    let mut stored = 0;
    for chunk in pairs.chunks(recall_core::deep_memory::MAX_PAIRS_PER_CALL) {
        stored += engine
            .deep_memory_add_pairs(&ingested.user, chunk.to_vec())
            .await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(recall_core::deep_memory::GenerateReport {
        memories: by_turn.len() as u64,
        pairs: stored,
        model: format!("{} questions", sample.id),
        seconds,
        pairs_per_second: stored as f64 / seconds.max(1e-9),
        ..Default::default()
    })
}

/// Every mode × every configuration of the matrix, on the same ingested samples.
async fn evaluate_all(
    engine: &recall_core::Engine,
    ingested: &[(recall_core::eval::Sample, recall_core::eval::Ingested)],
    eval: &EvalOptions,
    plans: &[(
        SearchMode,
        RankingConfig,
        serde_json::Map<String, serde_json::Value>,
    )],
    reports: &mut Vec<serde_json::Value>,
) -> recall_core::Result<()> {
    for (mode, config, varied) in plans {
        let options = RetrieveOptions {
            mode: *mode,
            ranking: config.clone(),
            ..RetrieveOptions::default()
        };
        let mut r = recall_core::eval::evaluate(engine, ingested, eval, &options).await?;
        r["mode"] = json!(mode);
        r["reranked"] = json!(options.ranking != RankingConfig::plain());
        r["store"] = json!(engine.backend());
        if !varied.is_empty() {
            r["varied"] = serde_json::Value::Object(varied.clone());
        }
        r["ranking"] = json!(options.ranking);
        reports.push(r);
    }
    Ok(())
}

fn print_eval(r: &serde_json::Value, ks: &[usize]) {
    let mode = r["mode"].as_str().unwrap_or("?");
    let reranked = if r["reranked"].as_bool() == Some(true) {
        " + re-ranking"
    } else {
        ""
    };
    let varied = r["varied"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!(" {k}={v}"))
                .collect::<String>()
        })
        .unwrap_or_default();
    let deep = if r["deep_memory"] == json!(true) {
        " with deep memory"
    } else {
        ""
    };
    println!(
        "mode {mode}{reranked}{varied}{deep} on the {} store: {} questions",
        r["store"].as_str().unwrap_or("?"),
        r["questions"]
    );
    let mut header = format!("{:<10}", "category");
    for k in ks {
        header += &format!(" {:>9} {:>7}", format!("recall@{k}"), format!("hit@{k}"));
    }
    let top = ks.iter().copied().max().unwrap_or(10);
    println!(
        "{header} {:>8} {:>6} {:>5}",
        format!("ndcg@{top}"),
        "mrr",
        "n"
    );
    let row = |name: &str, m: &serde_json::Value| {
        let mut line = format!("{name:<10}");
        for k in ks {
            line += &format!(
                " {:>9.3} {:>7.3}",
                m[format!("recall@{k}")].as_f64().unwrap_or(0.0),
                m[format!("hit@{k}")].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "{line} {:>8.3} {:>6.3} {:>5}",
            m[format!("ndcg@{top}")].as_f64().unwrap_or(0.0),
            m["mrr"].as_f64().unwrap_or(0.0),
            m["questions"]
        );
    };
    if let Some(cats) = r["by_category"].as_object() {
        for (c, m) in cats {
            row(c, m);
        }
    }
    row("overall", &r["overall"]);
    // Only worth a line each when there is more than one.
    if let Some(samples) = r["by_sample"].as_object().filter(|s| s.len() > 1) {
        for (id, m) in samples {
            row(id, m);
        }
    }
    let interval = |name: &str| {
        let v = &r["interval95"][name];
        v[0].as_f64()
            .zip(v[1].as_f64())
            .map(|(lo, hi)| format!("{name} {lo:.3}–{hi:.3}"))
    };
    // The goal's cut-off where it was asked for, else the deepest.
    let at = if ks.contains(&10) { 10 } else { top };
    let wanted = [
        format!("recall@{at}"),
        format!("hit@{at}"),
        "mrr".to_owned(),
    ];
    let intervals: Vec<String> = wanted.iter().filter_map(|n| interval(n)).collect();
    if !intervals.is_empty() {
        println!(
            "95% interval over the questions (bootstrap): {}",
            intervals.join(", ")
        );
    }
    println!();
}

/// Keys on for every sample, and a key written for every turn (the `--keys-*` flags say
/// which; before the one run of default settings, or between the two of `--keys`); a summary
/// per sample.
async fn keys(
    settings: &Settings,
    args: &EvalArgs,
    engine: &recall_core::Engine,
    ingested: &[(recall_core::eval::Sample, recall_core::eval::Ingested)],
    out: &mut Vec<serde_json::Value>,
) -> recall_core::Result<()> {
    let options = recall_core::memory_keys::KeyOptions {
        concurrency: args.keys_concurrency,
        with_text: !args.keys_fact_only,
        facts: args.keys_facts,
        sessions: args.keys_sessions,
        context: !args.keys_no_context,
        max_keys: recall_core::memory_keys::MAX_KEYS_PER_RUN,
        ..Default::default()
    };
    options.validate()?;
    // Context keys alone need no chat model.
    let model = if options.facts || options.sessions {
        Some(startup::chat_model(settings, options.concurrency, true).await?)
    } else {
        None
    };
    let engine = engine.clone().with_llm(model);
    for (s, i) in ingested {
        let bar = ProgressBar::new(0).with_style(spinner_style());
        bar.set_message(format!("{}: writing keys", s.id));
        engine.set_memory_keys(&i.user, true).await?;
        let report = engine
            .write_memory_keys(&i.user, &options, &mut |done, total, _| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
        bar.finish_and_clear();
        let mut r = serde_json::to_value(&report).map_err(|e| Error::Internal(e.to_string()))?;
        r["sample"] = json!(s.id);
        // A few keys beside their turns, to judge the model by.
        let filter = recall_core::types::Filter {
            kinds: vec![recall_core::types::MemoryKind::Key],
            ..Default::default()
        };
        let page = recall_core::types::PageRequest {
            first: 64,
            after: None,
        };
        let mut examples = Vec::new();
        let mut per_source: HashMap<String, usize> = HashMap::new();
        for k in engine.memories(&i.user, &filter, &page).await?.items {
            let source = k.metadata["key"].as_str().unwrap_or("").to_owned();
            let n = per_source.entry(source).or_default();
            *n += 1;
            if *n > 3 {
                continue;
            }
            if let Some(m) = engine.memory(&i.user, k.key_for.unwrap_or(0)).await? {
                examples.push(json!({ "turn": m.content, "key": k.content }));
            }
        }
        r["examples"] = json!(examples);
        out.push(r);
    }
    Ok(())
}

/// `eval --answers`: the chat model answers every chosen question; one report.
async fn answers(
    settings: &Settings,
    args: &EvalArgs,
    engine: &recall_core::Engine,
    ingested: &[(recall_core::eval::Sample, recall_core::eval::Ingested)],
    out: &mut Vec<serde_json::Value>,
) -> recall_core::Result<()> {
    let model = startup::chat_model(settings, 1, true).await?;
    let mode = args.mode.first().copied().unwrap_or(SearchMode::Hybrid);
    let mut options = recall_core::eval::AnswerOptions {
        categories: args.categories.clone(),
        per_category: args.answers_per_category.unwrap_or(usize::MAX),
        details: args.details.is_some(),
        ..Default::default()
    };
    options.context.retrieve = RetrieveOptions {
        mode,
        ranking: args.ranking.config(mode, None)?,
        ..options.context.retrieve
    };
    let bar = ProgressBar::new_spinner().with_style(spinner_style());
    bar.set_message(format!("answering with {}", model.name()));
    let report =
        recall_core::eval::evaluate_answers(engine, model.as_ref(), ingested, &options).await;
    bar.finish_and_clear();
    let mut report = report?;
    report["answers"] = json!(true);
    report["mode"] = json!(mode);
    out.push(report);
    Ok(())
}

fn print_answers(r: &serde_json::Value) {
    println!(
        "answers by {} ({} questions; answer p50 {:.0} ms, p95 {:.0} ms)",
        r["model"].as_str().unwrap_or("?"),
        r["questions"],
        r["answer_ms"]["p50"].as_f64().unwrap_or(0.0),
        r["answer_ms"]["p95"].as_f64().unwrap_or(0.0)
    );
    println!(
        "{:<10} {:>8} {:>9} {:>19} {:>5}",
        "category", "f1", "contains", "evidence in prompt", "n"
    );
    let row = |name: &str, v: &serde_json::Value| {
        println!(
            "{name:<10} {:>8.3} {:>9.3} {:>19.3} {:>5}",
            v["f1"].as_f64().unwrap_or(0.0),
            v["contains"].as_f64().unwrap_or(0.0),
            v["evidence_in_prompt"].as_f64().unwrap_or(0.0),
            v["questions"]
        );
    };
    if let Some(cats) = r["by_category"].as_object() {
        for (c, v) in cats {
            row(c, v);
        }
    }
    row("overall", &r["overall"]);
}
