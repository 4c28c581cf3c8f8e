//! No code: this crate only exists for its `Cargo.toml` (see there).
