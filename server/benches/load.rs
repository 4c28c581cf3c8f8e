//! Load test of `deep-recall serve` from a second process on loopback: many concurrent users
//! searching (and chatting) over GraphQL, bounded in time. Prints p50/p95/p99 latency per
//! operation, requests/s, errors and the server's resident memory.
//!
//! ```text
//! cargo bench -p recall-server --bench load -- [--users 100] [--seconds 20] [--messages 20]
//!     [--chat-every 10] [--max-tokens 16] [--think-ms 0] [--sweep 1,2,4,8,16]
//!     [--database-url URL] [--start-only]
//! ```
//!
//! It first reports the start-up: seconds from the process start to `/ready`, and the server's
//! resident memory with the default models loaded (`--start-only` stops there).
//!
//! Phases: seed every user with `--messages` messages (embedded on the server); search only
//! at each concurrency of `--sweep` (closed loop, no pause) to find the throughput at which
//! p95 stays under 50 ms; search only with all `--users`; then a mix in which each user's
//! every `--chat-every`-th request is a `chat` mutation (answers of `--max-tokens` tokens from
//! the packaged SmolLM2) and the rest are searches, each user pausing `--think-ms` between
//! requests. Rate limits are raised above the offered load, so every error counts.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

const SECRET: &str = "load-test-secret-0123456789";

struct Args {
    users: usize,
    seconds: u64,
    messages: usize,
    chat_every: usize,
    max_tokens: usize,
    think_ms: u64,
    sweep: Vec<usize>,
    database_url: Option<String>,
    start_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        users: 100,
        seconds: 20,
        messages: 20,
        chat_every: 10,
        max_tokens: 16,
        think_ms: 0,
        sweep: vec![1, 2, 4, 8, 16],
        database_url: None,
        start_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().expect("flag value");
        match flag.as_str() {
            "--users" => a.users = val().parse().unwrap(),
            "--seconds" => a.seconds = val().parse().unwrap(),
            "--messages" => a.messages = val().parse().unwrap(),
            "--chat-every" => a.chat_every = val().parse().unwrap(),
            "--max-tokens" => a.max_tokens = val().parse().unwrap(),
            "--think-ms" => a.think_ms = val().parse().unwrap(),
            "--sweep" => a.sweep = val().split(',').map(|v| v.parse().unwrap()).collect(),
            "--database-url" => a.database_url = Some(val()),
            "--start-only" => a.start_only = true,
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// (current, peak) resident memory in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

fn start(a: &Args, data: &std::path::Path) -> Server {
    let models = std::env::var("DEEP_RECALL_MODELS_DIR").unwrap_or_else(|_| "models".into());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deep-recall"));
    match &a.database_url {
        Some(url) => cmd.args(["--database-url", url]),
        None => cmd.arg("--data-dir").arg(data),
    };
    cmd.args(["--models-dir", &models, "--device", "cpu"])
        .args(["serve", "--bind", "127.0.0.1:0", "--jwt-secret", SECRET])
        .env_remove("DATABASE_URL")
        .env("DEEP_RECALL__LOG__FILTER", "warn")
        .env("DEEP_RECALL__LIMITS__REQUESTS_PER_MINUTE", "0")
        .env("DEEP_RECALL__LIMITS__IP_REQUESTS_PER_MINUTE", "0")
        .env("DEEP_RECALL__CHAT__QUEUE_CAPACITY", "256")
        .env("DEEP_RECALL__CHAT__SUMMARY_TRIGGER_MESSAGES", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start deep-recall serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("deep-recall: listening on ")
        .unwrap_or_else(|| panic!("server did not start: {line:?}"))
        .to_owned();
    Server { child, base }
}

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 7200;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

const TOPICS: [&str; 10] = [
    "I moved to Lisbon last spring and I take the tram to work.",
    "My sister is a marine biologist who studies octopuses.",
    "I am allergic to peanuts, so please no satay.",
    "We adopted a grey cat called Miso in October.",
    "I run 10 kilometres every Sunday morning along the river.",
    "My favourite book is The Left Hand of Darkness.",
    "I work as a nurse on night shifts at the children's hospital.",
    "Our wedding anniversary is on the 14th of June.",
    "I am learning Japanese and practise kanji every evening.",
    "I grow tomatoes and basil on my balcony.",
];

const QUERIES: [&str; 8] = [
    "where do I live?",
    "what am I allergic to?",
    "what is my pet's name?",
    "what do I do on weekends?",
    "what is my job?",
    "which language am I learning?",
    "what plants do I grow?",
    "when is our anniversary?",
];

#[derive(Debug, Default)]
struct Stats {
    search: Vec<f64>,
    chat: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

async fn gql(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
    vars: Value,
) -> Result<Value, String> {
    let resp = http
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": vars }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() || !body["errors"].is_null() {
        return Err(format!("{status}: {body}"));
    }
    Ok(body)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

const SEARCH: &str = "query($q: String!) { search(query: $q, topK: 5) { score memory { id } } }";
const CHAT: &str =
    "mutation($i: ChatInput!) { chat(input: $i) { text usage { completionTokens } } }";

async fn phase(
    a: &Args,
    server: &Server,
    users: &[(String, String)],
    chat_every: usize,
    think: Duration,
) -> Stats {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.users)
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for (i, (_, tok)) in users.iter().enumerate() {
        let (http, base, tok, stats) = (
            http.clone(),
            server.base.clone(),
            tok.clone(),
            stats.clone(),
        );
        let max_tokens = a.max_tokens;
        tasks.push(tokio::spawn(async move {
            let mut n = i; // users start at different points of the mix
            while Instant::now() < deadline {
                if !think.is_zero() {
                    // Spread the pauses so that users do not move in lockstep.
                    tokio::time::sleep(think.mul_f64(0.5 + (n % 11) as f64 / 10.0)).await;
                }
                n += 1;
                let q = QUERIES[n % QUERIES.len()];
                let is_chat = chat_every > 0 && n % chat_every == 0;
                let started = Instant::now();
                let out = if is_chat {
                    gql(
                        &http,
                        &base,
                        &tok,
                        CHAT,
                        json!({ "i": {
                        "session": format!("load-{n}"), "message": q, "maxTokens": max_tokens
                    } }),
                    )
                    .await
                } else {
                    gql(&http, &base, &tok, SEARCH, json!({ "q": q })).await
                };
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let mut s = stats.lock().await;
                match out {
                    Ok(_) if is_chat => s.chat.push(ms),
                    Ok(_) => s.search.push(ms),
                    Err(e) => {
                        s.errors += 1;
                        s.first_error.get_or_insert(e);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(stats).unwrap().into_inner()
}

fn report(name: &str, s: &mut Stats, seconds: f64, rss: (f64, f64)) {
    let total = s.search.len() + s.chat.len();
    println!(
        "{name}: {total} requests in {seconds:.1}s = {:.1} req/s, errors {}{}",
        total as f64 / seconds,
        s.errors,
        s.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (first: {e})"))
    );
    for (op, v) in [("search", &mut s.search), ("chat", &mut s.chat)] {
        if v.is_empty() {
            continue;
        }
        let n = v.len();
        println!(
            "  {op:6} n={n:6}  p50 {:8.1} ms  p95 {:8.1} ms  p99 {:8.1} ms  ({:.1}/s)",
            pct(v, 0.5),
            pct(v, 0.95),
            pct(v, 0.99),
            n as f64 / seconds
        );
    }
    println!("  server RSS {:.0} MiB (peak {:.0} MiB)", rss.0, rss.1);
}

fn main() {
    let a = args();
    let data = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Start-up: from the process start to /ready answering 200, and the resident memory with
    // the default models (embedding and chat) loaded, before any request.
    let spawned = Instant::now();
    let server = start(&a, data.path());
    rt.block_on(async {
        let http = reqwest::Client::new();
        let url = format!("{}/ready", server.base);
        while !http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let ready = spawned.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "start: /ready after {ready:.2} s; server RSS {:.0} MiB with the default models loaded, idle",
        server.rss_mib().0
    );
    if a.start_only {
        return;
    }
    let users: Vec<(String, String)> = (0..a.users)
        .map(|i| {
            let u = format!("load-user-{i}");
            let t = token(&u);
            (u, t)
        })
        .collect();
    println!(
        "load: {} users, {} messages each, {}s per phase, chat every {} requests ({} tokens), store {}",
        a.users,
        a.messages,
        a.seconds,
        a.chat_every,
        a.max_tokens,
        if a.database_url.is_some() {
            "postgres"
        } else {
            "embedded"
        }
    );
    rt.block_on(async {
        let http = reqwest::Client::new();
        let started = Instant::now();
        let seeds = futures::stream::iter(users.iter().enumerate().map(|(i, (_, tok))| {
            let http = http.clone();
            let base = server.base.clone();
            let msgs: Vec<Value> = (0..a.messages)
                .map(|j| {
                    json!({
                        "session": format!("s{}", j / 5),
                        "role": "USER",
                        "content": format!("{} (note {j} of user {i})", TOPICS[(i + j) % TOPICS.len()]),
                    })
                })
                .collect();
            async move {
                gql(&http, &base, tok, "mutation($m: [MessageInput!]!) { addMessages(messages: $m) { id } }", json!({ "m": msgs }))
                    .await
                    .expect("seed");
            }
        }));
        use futures::StreamExt;
        seeds.buffer_unordered(4).collect::<Vec<()>>().await;
        println!(
            "seeded {} messages in {:.1}s",
            a.users * a.messages,
            started.elapsed().as_secs_f64()
        );
        for &c in &a.sweep {
            let started = Instant::now();
            let mut s = phase(&a, &server, &users[..c.min(users.len())], 0, Duration::ZERO).await;
            report(
                &format!("search only, {c} concurrent"),
                &mut s,
                started.elapsed().as_secs_f64(),
                server.rss_mib(),
            );
        }
        let started = Instant::now();
        let mut s = phase(&a, &server, &users, 0, Duration::ZERO).await;
        report(
            &format!("search only, {} concurrent", users.len()),
            &mut s,
            started.elapsed().as_secs_f64(),
            server.rss_mib(),
        );
        let started = Instant::now();
        let think = Duration::from_millis(a.think_ms);
        let mut s = phase(&a, &server, &users, a.chat_every, think).await;
        report(
            &format!(
                "mixed, {} users, think {} ms, chat every {}",
                users.len(),
                a.think_ms,
                a.chat_every
            ),
            &mut s,
            started.elapsed().as_secs_f64(),
            server.rss_mib(),
        );
    });
}
