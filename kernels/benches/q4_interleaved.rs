//! A candidate weight layout for the Q4_1 products of batched decode (issue 14), measured
//! against the kernels in use, before any of it moves into `quant`: eight weight rows
//! interleaved four bytes of quants at a time (llama.cpp's repacking idea), so that one
//! broadcast of four activation bytes feeds eight rows and one register holds eight rows'
//! sums — one conversion and one FMA per eight row-blocks instead of per row-block, the
//! scales stored as f32. One thread, SmolLM2-135M's shapes (weights in L2/L3: the kernels'
//! arithmetic, not memory), 1, 4 and 8 activation rows. It checks its results against the
//! scalar reference first (and stops if they differ).
//!
//! ```sh
//! cargo bench -p recall-kernels --bench q4_interleaved
//! ```
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::time::Instant;

    use half::f16;
    use recall_kernels::quant::{BlockQ4_1, BlockQ8_1, Panel, QK, WeightBlock, quantize_q8_1};

    /// Eight weight rows of one block column: quants interleaved by four bytes (`qs[k]` holds
    /// bytes 4k..4k+4 of each row in turn: values 4k..4k+4 in the low nibbles, 16+4k..20+4k in
    /// the high ones), then the rows' scales and minimums.
    #[derive(Clone, Copy)]
    #[repr(C, align(32))]
    struct Group {
        qs: [[u8; 32]; 4],
        d: [f32; 8],
        m: [f32; 8],
    }

    /// Rows (a multiple of 8) of blocks as groups, group-major then block.
    fn interleave(rows: &[Vec<BlockQ4_1>]) -> Vec<Group> {
        let per = rows[0].len();
        let mut out = Vec::with_capacity(rows.len() / 8 * per);
        for eight in rows.chunks_exact(8) {
            for i in 0..per {
                let mut g = Group {
                    qs: [[0; 32]; 4],
                    d: [0.0; 8],
                    m: [0.0; 8],
                };
                for (r, row) in eight.iter().enumerate() {
                    let b = &row[i];
                    g.d[r] = b.d.to_f32();
                    g.m[r] = b.m.to_f32();
                    for (k, q) in g.qs.iter_mut().enumerate() {
                        q[4 * r..4 * r + 4].copy_from_slice(&b.qs[4 * k..4 * k + 4]);
                    }
                }
                out.push(g);
            }
        }
        out
    }

    /// Four activation bytes at `p`, in every 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn broadcast(p: *const i8) -> __m256i {
        // SAFETY: the caller points at four readable bytes.
        _mm256_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
    }

    /// The eight rows of one group's blocks against `R` activation rows (`d`, `s`: each
    /// block's scale and scaled sum, by row): `out[r][j]` for weight row j.
    macro_rules! group_kernel {
        ($name:ident, $features:literal, $vnni:literal) => {
            #[target_feature(enable = $features)]
            unsafe fn $name<const R: usize>(
                g: &[Group],
                x: [&[BlockQ8_1]; R],
                d: &[[f32; R]],
                s: &[[f32; R]],
            ) -> [[f32; 8]; R] {
                let mut acc = [_mm256_setzero_ps(); R];
                let nibble = _mm256_set1_epi8(0x0F);
                for (i, b) in g.iter().enumerate() {
                    let mut lo = [_mm256_setzero_si256(); 4];
                    let mut hi = [_mm256_setzero_si256(); 4];
                    for k in 0..4 {
                        // SAFETY: a group is 32-byte aligned and its quants are 4 × 32 bytes.
                        let v = unsafe { _mm256_load_si256(b.qs[k].as_ptr() as *const __m256i) };
                        lo[k] = _mm256_and_si256(v, nibble);
                        hi[k] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble);
                    }
                    // SAFETY: eight f32 each, aligned with the group.
                    let (dw, mw) =
                        unsafe { (_mm256_load_ps(b.d.as_ptr()), _mm256_load_ps(b.m.as_ptr())) };
                    for r in 0..R {
                        let q = x[r][i].qs.as_ptr();
                        // SAFETY: a Q8_1 block has 32 quants; 4k + 4 and 20 + 4k are within.
                        let sums = unsafe {
                            if $vnni {
                                let mut t = _mm256_setzero_si256();
                                for k in 0..4 {
                                    t = _mm256_dpbusd_epi32(t, lo[k], broadcast(q.add(4 * k)));
                                    t = _mm256_dpbusd_epi32(t, hi[k], broadcast(q.add(16 + 4 * k)));
                                }
                                t
                            } else {
                                // Eight pair sums of at most 15 · 127 · 2 each fit i16 (30,480).
                                let mut t = _mm256_setzero_si256();
                                for k in 0..4 {
                                    t = _mm256_add_epi16(
                                        t,
                                        _mm256_maddubs_epi16(lo[k], broadcast(q.add(4 * k))),
                                    );
                                    t = _mm256_add_epi16(
                                        t,
                                        _mm256_maddubs_epi16(hi[k], broadcast(q.add(16 + 4 * k))),
                                    );
                                }
                                _mm256_madd_epi16(t, _mm256_set1_epi16(1))
                            }
                        };
                        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(d[i][r]));
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[r]);
                        acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(s[i][r]), acc[r]);
                    }
                }
                acc.map(|a| {
                    let mut out = [0f32; 8];
                    // SAFETY: out holds eight f32.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), a) };
                    out
                })
            }
        };
    }
    group_kernel!(group_vnni, "avx2,fma,avx512f,avx512vl,avx512vnni", true);
    group_kernel!(group_avx2, "avx2,fma", false);

    /// The whole matrix (groups of `per` blocks) against `R` rows, with the CPU's best variant.
    fn interleaved<const R: usize>(
        groups: &[Group],
        per: usize,
        x: [&[BlockQ8_1]; R],
        vnni: bool,
    ) -> f32 {
        let d: Vec<[f32; R]> = (0..per)
            .map(|i| std::array::from_fn(|r| x[r][i].d.to_f32()))
            .collect();
        let s: Vec<[f32; R]> = (0..per)
            .map(|i| std::array::from_fn(|r| x[r][i].s.to_f32()))
            .collect();
        let mut sink = 0.0;
        for g in groups.chunks_exact(per) {
            // SAFETY: the CPU has the features of the variant called (checked in main).
            let out = unsafe {
                if vnni {
                    group_vnni(g, x, &d, &s)
                } else {
                    group_avx2(g, x, &d, &s)
                }
            };
            sink += out[R - 1][7];
        }
        sink
    }

    /// A deterministic pseudo-random stream.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn float(&mut self) -> f32 {
            self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
        }
    }

    /// Best of five rounds of 200 calls, in µs a call.
    fn time(mut f: impl FnMut() -> f32) -> f64 {
        let mut sink = 0.0;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            for _ in 0..200 {
                sink += f();
            }
            best = best.min(started.elapsed().as_secs_f64() / 200.0 * 1e6);
        }
        std::hint::black_box(sink);
        best
    }

    pub fn main() {
        if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("fma") {
            println!("this CPU has no AVX2 + FMA");
            return;
        }
        let vnni = std::env::var_os("DEEP_RECALL_NO_VNNI").is_none()
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl");
        println!(
            "interleaved variant: {}",
            if vnni { "VNNI" } else { "AVX2" }
        );
        println!();
        println!(
            "| shape (out × in) | activation rows | in use (µs) | interleaved (µs) | speed-up |"
        );
        println!("|---|---:|---:|---:|---:|");
        let mut rng = Lcg(7);
        for (rows, cols) in [(960, 576), (3072, 576), (576, 1536)] {
            let per = cols / QK;
            let w: Vec<Vec<BlockQ4_1>> = (0..rows)
                .map(|_| {
                    (0..per)
                        .map(|_| BlockQ4_1 {
                            d: f16::from_f32(rng.float().abs() * 0.05 + 1e-3),
                            m: f16::from_f32(rng.float() * 0.4),
                            qs: std::array::from_fn(|_| rng.next() as u8),
                        })
                        .collect()
                })
                .collect();
            let xs: Vec<Vec<BlockQ8_1>> = (0..8)
                .map(|_| {
                    let x: Vec<f32> = (0..cols).map(|_| rng.float()).collect();
                    let mut q = vec![BlockQ8_1::default(); per];
                    quantize_q8_1(&x, &mut q);
                    q
                })
                .collect();
            let groups = interleave(&w);
            let x8: [&[BlockQ8_1]; 8] = std::array::from_fn(|r| xs[r].as_slice());
            let x4: [&[BlockQ8_1]; 4] = std::array::from_fn(|r| xs[r].as_slice());
            // Agreement with the scalar reference, every row and activation row.
            let d: Vec<[f32; 8]> = (0..per).map(|i| x8.map(|x| x[i].d.to_f32())).collect();
            let s: Vec<[f32; 8]> = (0..per).map(|i| x8.map(|x| x[i].s.to_f32())).collect();
            for (gi, g) in groups.chunks_exact(per).enumerate() {
                for variant in [false, true].into_iter().filter(|&v| !v || vnni) {
                    // SAFETY: the CPU has the variant's features.
                    let out = unsafe {
                        if variant {
                            group_vnni(g, x8, &d, &s)
                        } else {
                            group_avx2(g, x8, &d, &s)
                        }
                    };
                    for (r, x) in x8.iter().enumerate() {
                        for j in 0..8 {
                            let want = BlockQ4_1::dot_scalar(&w[8 * gi + j], x);
                            let diff = (out[r][j] - want).abs() / want.abs().max(1.0);
                            assert!(
                                diff < 1e-5,
                                "row {} × {r}: {} against {want}",
                                8 * gi + j,
                                out[r][j]
                            );
                        }
                    }
                }
            }
            let panel8 = Panel::new(x8);
            let panel4 = Panel::new(x4);
            let now1 = time(|| w.iter().map(|r| BlockQ4_1::dot(r, x8[0])).sum());
            let now4 = time(|| w.iter().map(|r| BlockQ4_1::dotn(r, &panel4)[3]).sum());
            let now8 = time(|| w.iter().map(|r| BlockQ4_1::dotn(r, &panel8)[7]).sum());
            let new1 = time(|| interleaved::<1>(&groups, per, [x8[0]], vnni));
            let new4 = time(|| interleaved::<4>(&groups, per, x4, vnni));
            let new8 = time(|| interleaved::<8>(&groups, per, x8, vnni));
            for (n, now, new) in [(1, now1, new1), (4, now4, new4), (8, now8, new8)] {
                println!(
                    "| {rows} × {cols} | {n} | {now:.1} | {new:.1} | {:.2}× |",
                    now / new
                );
            }
        }
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    x86::main();
    #[cfg(not(target_arch = "x86_64"))]
    println!("the interleaved layout is measured on x86-64 only");
}
