//! Deep Recall's CPU kernels where candle 0.11 has no fast one, as candle custom ops.
//!
//! A crate of its own so that it is compiled with optimisations in every profile (see the
//! workspace `Cargo.toml`): SIMD intrinsics unoptimised are slower than scalar code, and the
//! model tests run through them.
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod features;
pub mod gated;
pub mod int8;
pub mod math;
pub mod quant;
pub mod sgemm;

pub use attention::{HostKv, Query, attend, attend_window, dot};
pub use gated::Gated;
pub use int8::{I8Matrix, QuantizedRows};
pub use quant::{Format, QLinear, QMatrix};
