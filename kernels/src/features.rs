//! The CPU features the kernels are chosen by, detected once.
use std::sync::OnceLock;

/// AVX2 with FMA and F16C (every AVX2 CPU has the other two).
pub fn avx2() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    })
}

/// AVX-512 VNNI on 256-bit registers (`vpdpbusd` with AVX-512VL), on top of [`avx2`];
/// `DEEP_RECALL_NO_VNNI` set in the environment turns it off (to measure the AVX2 kernels
/// on a CPU that has both).
pub fn vnni() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        avx2()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::env::var_os("DEEP_RECALL_NO_VNNI").is_none()
    })
}
