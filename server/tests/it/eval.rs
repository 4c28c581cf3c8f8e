//! `deep-recall eval`: retrieval quality on a LoCoMo-format benchmark through the command line
//! (modes, the settings matrix and its details, deep memory, answers, malformed files).
use serde_json::Value;

use super::cli::{Backend, cli, cli_with, json_lines, ok_json};
use recall_core::testing::repo_root;

#[test]
fn eval_reports_every_mode_and_hybrid_wins() {
    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let data = repo_root().join("eval/data/recall-mini.json");
    // The table a person reads on stdout, and the same reports as JSON in the details file.
    let details = tempfile::NamedTempFile::new().unwrap();
    let out = cli(
        &backend,
        &[
            "eval",
            data.to_str().unwrap(),
            "--k",
            "1,5,10",
            "--mode",
            "vector,text,hybrid",
            "--details",
            details.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let reports: Vec<Value> = std::fs::read_to_string(details.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 3);
    let mrr = |r: &Value| r["overall"]["mrr"].as_f64().unwrap();
    for r in &reports {
        assert_eq!(r["questions"], 110);
        for key in [
            "recall@1",
            "recall@5",
            "recall@10",
            "hit@1",
            "hit@5",
            "hit@10",
            "mrr",
        ] {
            let v = r["overall"][key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
        assert!(r["overall"]["recall@1"].as_f64() <= r["overall"]["recall@10"].as_f64());
        let cats = r["by_category"].as_object().unwrap();
        assert_eq!(cats.keys().collect::<Vec<_>>(), ["1", "2", "3", "4", "5"]);
        let n: u64 = cats
            .values()
            .map(|c| c["questions"].as_u64().unwrap())
            .sum();
        assert_eq!(n, 110);
        // Per sample: every conversation, its questions adding up, its figures averaging
        // (weighted by its questions) to the overall ones.
        let samples = r["by_sample"].as_object().unwrap();
        assert_eq!(
            samples.keys().collect::<Vec<_>>(),
            ["mini-1", "mini-2", "mini-3", "mini-4", "mini-5"]
        );
        let weighted = |key: &str| {
            samples
                .values()
                .map(|m| m[key].as_f64().unwrap() * m["questions"].as_f64().unwrap())
                .sum::<f64>()
                / 110.0
        };
        for key in ["recall@10", "hit@10", "mrr"] {
            let overall = r["overall"][key].as_f64().unwrap();
            assert!((weighted(key) - overall).abs() < 1e-9, "{key}");
            // The bootstrap interval holds the figure and is no wider than it can be.
            let lo = r["interval95"][key][0].as_f64().unwrap();
            let hi = r["interval95"][key][1].as_f64().unwrap();
            assert!(
                0.0 <= lo && lo <= overall && overall <= hi && hi <= 1.0,
                "{key}"
            );
            assert!(
                lo < hi,
                "110 questions of mixed outcome have some spread: {key}"
            );
        }
    }
    let (vector, text, hybrid) = (&reports[0], &reports[1], &reports[2]);
    assert_eq!(
        (vector["mode"].as_str(), hybrid["reranked"].as_bool()),
        (Some("vector"), Some(true))
    );
    // The yardstick of the retrieval issue: hybrid with re-ranking beats both pure modes.
    assert!(
        mrr(hybrid) > mrr(vector) && mrr(hybrid) > mrr(text),
        "{reports:?}"
    );
    for k in ["recall@5", "recall@10"] {
        let h = hybrid["overall"][k].as_f64().unwrap();
        assert!(h > vector["overall"][k].as_f64().unwrap(), "{k}");
        assert!(h > text["overall"][k].as_f64().unwrap(), "{k}");
    }
    // The table has the same figures: a row per sample, and the interval (hybrid's is last).
    let mini_2 = table.lines().rfind(|l| l.starts_with("mini-2 ")).unwrap();
    let expected = format!(
        "{:.3}",
        hybrid["by_sample"]["mini-2"]["recall@10"].as_f64().unwrap()
    );
    assert!(mini_2.contains(&expected), "{mini_2} / {expected}");
    let interval = &hybrid["interval95"]["hit@10"];
    let expected = format!(
        "hit@10 {:.3}–{:.3}",
        interval[0].as_f64().unwrap(),
        interval[1].as_f64().unwrap()
    );
    assert!(table.contains(&expected), "{table}");
    // The temporary users are gone.
    let export = ok_json(cli(
        &backend,
        &["--json", "search", "--user", "eval", "anything"],
    ));
    assert!(export["hits"].as_array().unwrap().is_empty());
}

/// `eval --answers`: the chat model (the tiny test model here: its answers are noise, the
/// pipeline is what is checked) answers the first question of a category in each
/// conversation, with the retrieved memories in its prompt; F1 and the rest are reported,
/// and the details carry each answer beside its reference.
#[test]
fn eval_scores_the_chat_model_s_answers() {
    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let data = repo_root().join("eval/data/recall-mini.json");
    let details = tempfile::NamedTempFile::new().unwrap();
    let reports = json_lines(cli_with(
        &backend,
        &[
            "--json",
            "eval",
            data.to_str().unwrap(),
            "--categories",
            "4",
            "--answers",
            "--answers-per-category",
            "1",
            "--details",
            details.path().to_str().unwrap(),
        ],
        &[("DEEP_RECALL__CHAT__MODEL", "tiny-llama-gguf")],
    ));
    assert_eq!(reports.len(), 2, "{reports:?}");
    let answers = &reports[1];
    assert_eq!(answers["answers"], true);
    assert!(
        answers["model"].as_str().unwrap().contains("tiny"),
        "{answers}"
    );
    // One question of category 4 from each of the five conversations.
    assert_eq!(answers["questions"], 5);
    let cats = answers["by_category"].as_object().unwrap();
    assert_eq!(cats.keys().collect::<Vec<_>>(), ["4"]);
    for key in ["f1", "contains", "evidence_in_prompt"] {
        let v = answers["overall"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert!(answers.get("details").is_none());
    // The details: the retrieval report, then the answers with their references.
    let text = std::fs::read_to_string(details.path()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let asked = lines[1]["details"].as_array().unwrap();
    assert_eq!(asked.len(), 5);
    let dataset: Value = serde_json::from_str(&std::fs::read_to_string(&data).unwrap()).unwrap();
    for a in asked {
        let sample = dataset
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["sample_id"] == a["sample"])
            .unwrap_or_else(|| panic!("{a}"));
        let first = sample["qa"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["category"] == 4)
            .unwrap();
        assert_eq!(a["question"], first["question"]);
        assert_eq!(a["reference"], first["answer"]);
        assert!(a["answer"].is_string() && a["f1"].is_number(), "{a}");
    }
    // Nothing was stored: the temporary users are gone with their questions.
    let export = ok_json(cli(
        &backend,
        &["--json", "search", "--user", "eval", "anything"],
    ));
    assert!(export["hits"].as_array().unwrap().is_empty());
}

/// `eval --deep-memory` with half of the questions as the users' own pairs: every report
/// judges the other half, before and after, and each sample gets a training summary.
#[test]
fn eval_measures_deep_memory_on_the_half_it_did_not_train_on() {
    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let data = repo_root().join("eval/data/recall-mini.json");
    let lines = json_lines(cli(
        &backend,
        &[
            "--json",
            "eval",
            data.to_str().unwrap(),
            "--mode",
            "vector",
            "--deep-memory",
            "--deep-memory-pairs",
            "questions",
        ],
    ));
    let (summaries, reports): (Vec<&Value>, Vec<&Value>) =
        lines.iter().partition(|l| l["deep_memory_summary"] == true);
    assert_eq!(reports.len(), 2, "{lines:?}");
    let (plain, deep) = (reports[0], reports[1]);
    assert_eq!(deep["deep_memory"], true);
    assert!(plain.get("deep_memory").is_none());
    // The same questions, fewer than all 110.
    assert_eq!(plain["questions"], deep["questions"]);
    let judged = plain["questions"].as_u64().unwrap();
    assert!((20..90).contains(&judged), "{judged}");
    // One summary per sample: trained and judged, or too few pairs to train on.
    assert_eq!(summaries.len(), 5, "{summaries:?}");
    let mut trained = 0;
    for s in &summaries {
        assert!(s["pairs"].as_u64().unwrap() > 0, "{s}");
        if let Some(err) = s["error"].as_str() {
            assert!(err.contains("training pairs"), "{s}");
            assert_eq!(s["enabled"], false);
            continue;
        }
        trained += 1;
        let e = &s["held_out"];
        for k in ["recall@1", "recall@5", "recall@10", "mrr"] {
            assert!(
                e["before"][k].is_number() && e["after"][k].is_number(),
                "{s}"
            );
        }
        assert!(s["enabled"].is_boolean());
    }
    assert!(trained > 0, "{summaries:?}");
}

#[test]
fn eval_runs_a_matrix_of_settings_and_writes_the_details() {
    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let data = repo_root().join("eval/data/recall-mini.json");
    let dir = tempfile::tempdir().unwrap();
    let details = dir.path().join("details.jsonl");
    let reports = json_lines(cli(
        &backend,
        &[
            "--json",
            "eval",
            data.to_str().unwrap(),
            "--categories",
            "1,2",
            "--vary",
            "neighbour_weight=0,0.5",
            "--vary",
            "time_weight=0,0.2",
            "--details",
            details.to_str().unwrap(),
            "--details-turns",
            "8",
        ],
    ));
    assert_eq!(reports.len(), 4, "every combination is reported");
    let varied: Vec<(f64, f64)> = reports
        .iter()
        .map(|r| {
            let v = &r["varied"];
            assert_eq!(
                r["ranking"]["neighbour_weight"].as_f64(),
                v["neighbour_weight"].as_f64()
            );
            (
                v["neighbour_weight"].as_f64().unwrap(),
                v["time_weight"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(varied, [(0.0, 0.0), (0.0, 0.2), (0.5, 0.0), (0.5, 0.2)]);
    for r in &reports {
        let cats = r["by_category"].as_object().unwrap();
        assert_eq!(cats.keys().collect::<Vec<_>>(), ["1", "2"]);
        let ndcg = r["overall"]["ndcg@10"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ndcg));
        assert!(r["search_ms"]["p95"].as_f64().unwrap() >= r["search_ms"]["p50"].as_f64().unwrap());
        assert!(r.get("details").is_none(), "details go to their file");
    }
    // The details: one report per line, one entry per question, ranks that agree with hit@1.
    let lines: Vec<Value> = std::fs::read_to_string(&details)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let first = lines[0]["details"].as_array().unwrap();
    assert_eq!(
        first.len() as u64,
        reports[0]["questions"].as_u64().unwrap()
    );
    let top_hits = first
        .iter()
        .filter(|q| {
            q["evidence_ranks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == 1)
        })
        .count() as f64;
    let hit1 = reports[0]["overall"]["hit@1"].as_f64().unwrap();
    assert!((top_hits / first.len() as f64 - hit1).abs() < 1e-9);
    // Each question's first turns and its evidence come with their scores and signals, in
    // ranked order.
    for q in first {
        let ranked = q["ranked"].as_array().unwrap();
        let explained = q["signals"].as_array().unwrap();
        let ranks: Vec<u64> = explained
            .iter()
            .map(|e| e["rank"].as_u64().unwrap())
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        // The first eight (`--details-turns 8`), then only evidence.
        let top = ranked.len().min(8) as u64;
        assert_eq!(
            ranks.iter().filter(|&&r| r <= top).count() as u64,
            top,
            "{ranks:?}"
        );
        for e in explained
            .iter()
            .filter(|e| e["rank"].as_u64().unwrap() > top)
        {
            assert!(q["evidence"].as_array().unwrap().contains(&e["id"]), "{e}");
        }
        for e in explained {
            let rank = e["rank"].as_u64().unwrap() as usize;
            assert_eq!(e["id"], ranked[rank - 1]);
            assert!(e["score"].as_f64().unwrap().is_finite());
            assert!(e["signals"]["relevance"].as_f64().is_some(), "{e}");
        }
        for (e, r) in q["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .zip(q["evidence_ranks"].as_array().unwrap())
        {
            if r.is_u64() {
                assert!(
                    explained.iter().any(|x| &x["id"] == e),
                    "evidence {e} explained"
                );
            }
        }
    }
    // A setting that does not exist, or a value that does not fit, is refused.
    for bad in ["nonsense=1", "neighbours=9", "fusion=1", "time_weight"] {
        let out = cli(&backend, &["eval", data.to_str().unwrap(), "--vary", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("vary")
                || String::from_utf8_lossy(&out.stderr).contains("neighbours"),
            "{bad}"
        );
    }
}

#[test]
fn eval_skips_malformed_evidence_and_refuses_broken_files() {
    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.json");
    let data = serde_json::json!([{
        "sample_id": "tiny",
        "conversation": {
            "speaker_a": "Ana", "speaker_b": "Ben",
            "session_1_date_time": "9:00 am on 2 March, 2024",
            "session_1": [
                {"speaker": "Ana", "dia_id": "D1:1", "text": "My cat is called Miso."},
                {"speaker": "Ben", "dia_id": "D1:2", "text": "I am flying to Oslo on Friday."}
            ]
        },
        "qa": [
            {"question": "What is Ana's cat called?", "answer": "Miso", "evidence": ["D1:1", "D1"], "category": 4},
            {"question": "Where is Ben flying?", "answer": "Oslo", "evidence": ["D7:7"], "category": 4}
        ]
    }]);
    std::fs::write(&file, data.to_string()).unwrap();
    let out = cli(
        &backend,
        &["--json", "eval", file.to_str().unwrap(), "--k", "1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let reports = json_lines(out);
    assert_eq!(reports[0]["questions"], 1);
    assert_eq!(reports[0]["bad_evidence"], 2);
    assert_eq!(reports[0]["skipped_questions"], 1);
    assert_eq!(reports[0]["overall"]["hit@1"], 1.0);
    assert!(
        reports[0]["overall"].get("recall@5").is_none(),
        "keys follow --k"
    );
    assert!(
        stderr.contains("tiny: D1") && stderr.contains("tiny: D7:7"),
        "{stderr}"
    );

    // The one sample has no question of category 2: no figures for it, no interval.
    let none = json_lines(cli(
        &backend,
        &[
            "--json",
            "eval",
            file.to_str().unwrap(),
            "--categories",
            "2",
        ],
    ));
    assert_eq!(none[0]["questions"], 0);
    assert_eq!(none[0]["by_sample"], serde_json::json!({}));
    assert_eq!(none[0]["interval95"], serde_json::json!({}));
    assert_eq!(reports[0]["by_sample"]["tiny"]["questions"], 1);

    std::fs::write(&file, "{\"not\": \"a list\"}").unwrap();
    let out = cli(&backend, &["eval", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("list of samples"));
}

/// Default settings give new users keys: the one run of `eval` has them (written before it,
/// as the key job writes them), `--no-keys` has them off, and `--keys` reports both, with the
/// same figures as the two.
#[test]
fn eval_measures_what_default_settings_give() {
    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let data = repo_root().join("eval/data/recall-mini.json");
    let run = |extra: &[&str]| {
        let mut args = vec!["--json", "eval", data.to_str().unwrap(), "--k", "1,5,10"];
        args.extend_from_slice(extra);
        json_lines(cli(&backend, &args))
    };
    let default = run(&[]);
    assert_eq!(
        default.len(),
        1,
        "one report, no key summaries: {default:?}"
    );
    assert_eq!(default[0]["keys"], true);
    let off = run(&["--no-keys"]);
    assert_eq!(off.len(), 1);
    assert!(off[0].get("keys").is_none(), "{:?}", off[0]);
    assert_ne!(
        default[0]["overall"], off[0]["overall"],
        "keys rank differently"
    );
    let both = run(&["--keys"]);
    let reports: Vec<&Value> = both.iter().filter(|r| r.get("overall").is_some()).collect();
    assert_eq!(reports.len(), 2);
    assert!(both.len() > 2, "a summary of the keys per sample follows");
    assert_eq!(reports[0]["overall"], off[0]["overall"]);
    assert_eq!(reports[1]["overall"], default[0]["overall"]);

    let out = cli(
        &backend,
        &["eval", data.to_str().unwrap(), "--keys", "--no-keys"],
    );
    assert_eq!(out.status.code(), Some(2));
}

/// A run interrupted with Ctrl-C deletes the users it made for the samples before it exits
/// (130): nothing of the benchmark stays in the store.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_eval_leaves_no_users_behind() {
    super::cli::on_postgres(|backend| async move {
        let data = repo_root().join("eval/data/recall-mini.json");
        let backup = tempfile::tempdir().unwrap();
        let users = |backend: &Backend| {
            let path = backup.path().join("all.bak");
            let out = cli(
                backend,
                &["--json", "backup", "--out", path.to_str().unwrap()],
            );
            ok_json(out)["users"].as_u64().unwrap()
        };
        let mut run = super::cli::command(
            &backend,
            &["eval", data.to_str().unwrap(), "--k", "10", "--keys"],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        // Once its first users are stored, the run is interrupted.
        let started = std::time::Instant::now();
        while users(&backend) == 0 {
            assert!(
                run.try_wait().unwrap().is_none(),
                "the run ended before it stored anything"
            );
            assert!(
                started.elapsed().as_secs() < 120,
                "no user stored in 2 minutes"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let status = std::process::Command::new("kill")
            .args(["-INT", &run.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = run.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
        assert_eq!(users(&backend), 0);
    })
    .await;
}
