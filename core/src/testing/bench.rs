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
