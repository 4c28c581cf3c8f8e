//! What the bench targets share: a seeded generator and command-line arguments.

/// A xorshift generator: the same numbers for the same seed on every run.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Roughly normal (the sum of four uniforms, centred).
    pub fn gauss(&mut self) -> f32 {
        (0..4)
            .map(|_| (self.next_u64() % 10_000) as f32 / 10_000.0)
            .sum::<f32>()
            - 2.0
    }

    /// A random direction: a unit vector of `dims` roughly normal components.
    pub fn unit_vector(&mut self, dims: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dims).map(|_| self.gauss()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }
}

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The value after `name` on the command line, or `default`.
pub fn arg_or(name: &str, default: &str) -> String {
    arg(name).unwrap_or_else(|| default.to_owned())
}

/// The comma-separated values after `name`, or those of `default`.
pub fn list(name: &str, default: &str) -> Vec<String> {
    arg_or(name, default)
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Chat-like texts from a LoCoMo file (`data`, read where it lies): `size` texts, each the
/// first half of one turn's words and the second half of another's (seeded: the same texts
/// for the same size on every run), and the file's first `queries` questions.
pub fn recombined_turns(data: &str, size: usize, queries: usize) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(data)
        .unwrap_or_else(|e| panic!("cannot read {data}: {e} (pass --data)"));
    let (samples, _) = crate::eval::parse_locomo(&text).unwrap();
    let turns: Vec<Vec<&str>> = samples
        .iter()
        .flat_map(|s| &s.turns)
        .map(|t| t.text.split_whitespace().collect())
        .filter(|w: &Vec<&str>| w.len() >= 4)
        .collect();
    let questions: Vec<String> = samples
        .iter()
        .flat_map(|s| &s.questions)
        .map(|q| q.question.clone())
        .take(queries)
        .collect();
    let mut rng = Rng(7);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let texts = (0..size)
        .map(|_| {
            let a = &turns[pick(turns.len())];
            let b = &turns[pick(turns.len())];
            let mut words: Vec<&str> = a[..a.len() / 2].to_vec();
            words.extend_from_slice(&b[b.len() / 2..]);
            words.join(" ")
        })
        .collect();
    (texts, questions)
}

/// The embeddings of `texts` by `embedder`, kept between runs in `cache` when given (a file of
/// little-endian F32s, read when it holds `texts.len()` vectors of `dims`): embedding 100k
/// texts takes minutes.
pub async fn cached_vectors(
    embedder: &dyn crate::embed::Embedder,
    texts: &[String],
    dims: usize,
    cache: Option<&str>,
) -> Vec<Vec<f32>> {
    let cached = cache.and_then(|path| {
        let bytes = std::fs::read(path).ok()?;
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (floats.len() == texts.len() * dims)
            .then(|| floats.chunks(dims).map(<[f32]>::to_vec).collect())
    });
    if let Some(vectors) = cached {
        return vectors;
    }
    let t = std::time::Instant::now();
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(256) {
        vectors.extend(embedder.embed(chunk.to_vec()).await.unwrap());
    }
    println!(
        "embedded {} texts in {:.0} s",
        texts.len(),
        t.elapsed().as_secs_f64()
    );
    if let Some(path) = cache {
        let bytes: Vec<u8> = vectors
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(path, bytes).unwrap();
    }
    vectors
}
