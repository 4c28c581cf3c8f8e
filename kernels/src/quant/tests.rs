//! The kernels against their scalar references, and the layouts against the dense matrix.
use super::*;

/// A deterministic pseudo-random stream (tests need no seedable RNG crate).
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

/// Random blocks: scales and minimums in the range real models have, and every quant
/// value (Q8_0 down to -127; -128 is not produced by GGUF quantizers).
fn random(format: Format, rows: usize, cols: usize, rng: &mut Lcg) -> QMatrix {
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / QK {
        let d = f16::from_f32(rng.float().abs() * 0.05 + 1e-3);
        bytes.extend(d.to_le_bytes());
        match format {
            Format::Q4_1 => {
                bytes.extend(f16::from_f32(rng.float() * 0.4).to_le_bytes());
                bytes.extend((0..16).map(|_| rng.next() as u8));
            }
            // Q5_0: 4 bytes of fifth bits, then the nibbles.
            Format::Q4_0 => bytes.extend((0..16).map(|_| rng.next() as u8)),
            Format::Q5_0 => bytes.extend((0..20).map(|_| rng.next() as u8)),
            Format::Q8_0 => bytes.extend(
                (0..32)
                    .map(|_| (rng.next() % 255) as i32 - 127)
                    .map(|q| q as u8),
            ),
        }
    }
    QMatrix::from_bytes(format, &bytes, rows, cols).unwrap()
}

const ALL: [Format; 4] = [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q8_0];

type Results = Vec<(String, Vec<f32>)>;

/// Row 0 of `w` with each of eight rows of `x`: the scalar reference, then, for every
/// kernel this CPU runs (the dispatched one, and each SIMD variant it supports), `dot` of
/// each row, `dotn` of the first four and `dotn` of the eight (named results, in row
/// order).
fn dots(w: &QMatrix, x: [&[BlockQ8_1]; 8]) -> ([f32; 8], Results) {
    macro_rules! variants {
        ($b:ident, $m:ident) => {{
            let row = $b.row(0);
            let four = Panel::<4>::new([x[0], x[1], x[2], x[3]]);
            let eight = Panel::<8>::new(x);
            let mut got: Results = Vec::new();
            let mut add = |name: &str, one: [f32; 8], four: [f32; 4], eight: [f32; 8]| {
                got.push((format!("{name} dot"), one.to_vec()));
                got.push((format!("{name} dotn 4"), four.to_vec()));
                got.push((format!("{name} dotn 8"), eight.to_vec()));
            };
            add(
                "dispatched",
                x.map(|x| WeightBlock::dot(row, x)),
                WeightBlock::dotn(row, &four),
                WeightBlock::dotn(row, &eight),
            );
            #[cfg(target_arch = "x86_64")]
            {
                if crate::features::avx2() {
                    // SAFETY: the CPU has AVX2.
                    unsafe {
                        add(
                            "avx2",
                            x.map(|x| avx2::$m::avx2::dot(row, x)),
                            avx2::$m::avx2::dotn(row, &four),
                            avx2::$m::avx2::dotn(row, &eight),
                        )
                    }
                }
                if crate::features::vnni() {
                    // SAFETY: the CPU has AVX-512 VNNI.
                    unsafe {
                        add(
                            "vnni",
                            x.map(|x| avx2::$m::vnni::dot(row, x)),
                            avx2::$m::vnni::dotn(row, &four),
                            avx2::$m::vnni::dotn(row, &eight),
                        )
                    }
                }
            }
            (x.map(|x| WeightBlock::dot_scalar(row, x)), got)
        }};
    }
    match w {
        QMatrix::Q4_0(b) => variants!(b, q4_0),
        QMatrix::Q4_1(b) => variants!(b, q4_1),
        QMatrix::Q5_0(b) => variants!(b, q5_0),
        QMatrix::Q8_0(b) => variants!(b, q8_0),
    }
}

#[test]
fn simd_dot_products_match_the_scalar_reference() {
    let mut rng = Lcg(7);
    for format in ALL {
        // 576 columns (SmolLM2's width, 18 blocks), odd block counts and a single block.
        for cols in [32, 96, 576, 1536] {
            let w = random(format, 1, cols, &mut rng);
            for _ in 0..10 {
                let xq: Vec<Vec<BlockQ8_1>> = (0..8)
                    .map(|_| {
                        let x: Vec<f32> = (0..cols).map(|_| rng.float() * 3.0).collect();
                        let mut xq = vec![BlockQ8_1::default(); cols / QK];
                        quantize_q8_1(&x, &mut xq);
                        xq
                    })
                    .collect();
                let (reference, got) = dots(&w, std::array::from_fn(|r| &xq[r][..]));
                for (kernel, values) in got {
                    for (r, v) in values.into_iter().enumerate() {
                        // The kernels add the per-block terms in another order (and
                        // scale them in another order): a rounding error that grows
                        // with the number of blocks.
                        let tolerance =
                            1e-5 * ((cols / QK) as f32).sqrt() * reference[r].abs().max(1.0);
                        assert!(
                            (v - reference[r]).abs() <= tolerance,
                            "{format:?} {cols} {kernel} row {r}: {v} vs {}",
                            reference[r]
                        );
                    }
                }
            }
        }
    }
}

/// Three grouped kernels of one group type, for panels of 1, 4 and 8 rows.
type GroupKernels<G> = (
    fn(&[G], &Panel<1>) -> [[f32; 8]; 1],
    fn(&[G], &Panel<4>) -> [[f32; 8]; 4],
    fn(&[G], &Panel<8>) -> [[f32; 8]; 8],
);

/// Eight rows of `w` as groups against 1, 4 and 8 rows of `xq`, through each of
/// `kernels`: every product against the scalar reference of the rows' plain blocks.
fn check_grouped<B: WeightBlock>(
    w: &Blocks<B>,
    xq: &[Vec<BlockQ8_1>],
    kernels: Vec<(&str, GroupKernels<B::Group>)>,
    what: &str,
) {
    let per = w.cols / QK;
    let plain = w.blocks();
    let groups: Vec<B::Group> = (0..per)
        .map(|i| B::group(std::array::from_fn(|l| &plain[l * per + i])).expect("grouped"))
        .collect();
    // The groups give back their blocks bit for bit.
    for (l, row) in plain.chunks_exact(per).take(8).enumerate() {
        for (i, g) in groups.iter().enumerate() {
            let (back, want) = (B::ungroup(g, l).values(), row[i].values());
            assert!(
                back.map(f32::to_bits) == want.map(f32::to_bits),
                "{what}: row {l} block {i} changed in its group"
            );
        }
    }
    let x: [&[BlockQ8_1]; 8] = std::array::from_fn(|r| &xq[r][..]);
    let reference: Vec<[f32; 8]> = x
        .iter()
        .map(|x| std::array::from_fn(|l| B::dot_scalar(&plain[l * per..][..per], x)))
        .collect();
    let (one, four, eight) = (
        Panel::<1>::new([x[0]]),
        Panel::<4>::new([x[0], x[1], x[2], x[3]]),
        Panel::<8>::new(x),
    );
    for (name, (k1, k4, k8)) in kernels {
        let got = [
            k1(&groups, &one).to_vec(),
            k4(&groups, &four).to_vec(),
            k8(&groups, &eight).to_vec(),
        ];
        for (r, lanes) in got.iter().flat_map(|rows| rows.iter().enumerate()) {
            for (l, v) in lanes.iter().enumerate() {
                let want = reference[r][l];
                let tolerance = 1e-5 * (per as f32).sqrt() * want.abs().max(1.0);
                assert!(
                    (v - want).abs() <= tolerance,
                    "{what} {name}: activation row {r}, weight row {l}: {v} vs {want}"
                );
            }
        }
    }
}

/// The dispatched grouped kernel, the scalar reference and every SIMD variant this CPU
/// runs, for groups of type `$group` whose SIMD kernel is `$kernel`.
macro_rules! group_kernels {
    ($b:ty, $kernel:ident) => {{
        #[allow(unused_mut)]
        let mut kernels: Vec<(&str, GroupKernels<<$b as WeightBlock>::Group>)> = vec![
            (
                "dispatched",
                (
                    <$b>::group_dotn::<1>,
                    <$b>::group_dotn::<4>,
                    <$b>::group_dotn::<8>,
                ),
            ),
            (
                "scalar",
                (
                    grouped::dotn_scalar::<$b, 1>,
                    grouped::dotn_scalar::<$b, 4>,
                    grouped::dotn_scalar::<$b, 8>,
                ),
            ),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY (each call): only pushed where the CPU has the variant's features;
            // the rows have as many blocks as the groups.
            if crate::features::avx2() {
                kernels.push((
                    "avx2",
                    (
                        |g, x| unsafe { avx2::grouped::avx2::$kernel::<1>(g, x) },
                        |g, x| unsafe { avx2::grouped::avx2::$kernel::<4>(g, x) },
                        |g, x| unsafe { avx2::grouped::avx2::$kernel::<8>(g, x) },
                    ),
                ));
            }
            if crate::features::vnni() {
                kernels.push((
                    "vnni",
                    (
                        |g, x| unsafe { avx2::grouped::vnni::$kernel::<1>(g, x) },
                        |g, x| unsafe { avx2::grouped::vnni::$kernel::<4>(g, x) },
                        |g, x| unsafe { avx2::grouped::vnni::$kernel::<8>(g, x) },
                    ),
                ));
            }
        }
        kernels
    }};
}

#[test]
fn grouped_kernels_match_the_scalar_reference() {
    let mut rng = Lcg(17);
    for format in [Format::Q4_0, Format::Q4_1, Format::Q8_0] {
        for cols in [32, 96, 576, 1536] {
            let w = random(format, 8, cols, &mut rng);
            let xq: Vec<Vec<BlockQ8_1>> = (0..8)
                .map(|_| {
                    let x: Vec<f32> = (0..cols).map(|_| rng.float() * 3.0).collect();
                    let mut xq = vec![BlockQ8_1::default(); cols / QK];
                    quantize_q8_1(&x, &mut xq);
                    xq
                })
                .collect();
            let what = format!("{format:?} 8×{cols}");
            match &w {
                QMatrix::Q4_0(b) => check_grouped(b, &xq, group_kernels!(BlockQ4_0, q4), &what),
                QMatrix::Q4_1(b) => check_grouped(b, &xq, group_kernels!(BlockQ4_1, q4), &what),
                QMatrix::Q8_0(b) => check_grouped(b, &xq, group_kernels!(BlockQ8_0, q8), &what),
                QMatrix::Q5_0(_) => unreachable!("not a grouped format"),
            }
        }
    }
}

#[test]
fn simd_quantization_gives_the_scalar_bytes() {
    let mut rng = Lcg(13);
    let mut rows: Vec<Vec<f32>> = (0..50)
        .map(|i| (0..96).map(|_| rng.float() * (i as f32 + 0.5)).collect())
        .collect();
    // Zeros; exact ties (the largest value 127, so that the scale is 1); NaN and infinity.
    rows.push(vec![0.0; 64]);
    rows.push(
        (0..64)
            .map(|j| [127.0, 2.5, -3.5, 0.5, -0.5, -0.0][j % 6])
            .collect(),
    );
    rows.push(
        (0..64)
            .map(|j| {
                if j % 7 == 3 {
                    f32::NAN
                } else {
                    j as f32 - 30.0
                }
            })
            .collect(),
    );
    rows.push(
        (0..32)
            .map(|j| if j == 5 { f32::INFINITY } else { 1.0 })
            .collect(),
    );
    for row in rows {
        let mut fast = vec![BlockQ8_1::default(); row.len() / QK];
        let mut reference = fast.clone();
        quantize_q8_1(&row, &mut fast);
        quantize_q8_1_scalar(&row, &mut reference);
        for (a, b) in fast.iter().zip(&reference) {
            assert_eq!(a.qs, b.qs, "{row:?}");
            assert_eq!(a.d.to_bits(), b.d.to_bits(), "{row:?}");
            assert_eq!(a.s.to_bits(), b.s.to_bits(), "{row:?}");
        }
    }
}

#[test]
fn matmul_agrees_with_the_dequantized_matrix() {
    let mut rng = Lcg(11);
    for format in ALL {
        // Odd shapes: 7 output rows (no full tile), 576 columns, 1–9 input rows (one row,
        // four and one, eight and one), and 45 (a prompt: two chunks of eight-row panels,
        // the second short, then four rows and one left over).
        for (rows, cols, m) in [
            (7, 576, 1),
            (193, 576, 5),
            (64, 1536, 9),
            (3, 32, 4),
            (37, 640, 45),
        ] {
            let w = random(format, rows, cols, &mut rng);
            let dense = w.dequantize();
            let x: Vec<f32> = (0..m * cols).map(|_| rng.float()).collect();
            let mut out = vec![0f32; m * rows];
            w.matmul(&x, m, &mut out);
            for i in 0..m {
                let xi = &x[i * cols..(i + 1) * cols];
                let amax = xi.iter().fold(0f32, |a, v| a.max(v.abs()));
                for r in 0..rows {
                    let wr = &dense[r * cols..(r + 1) * cols];
                    let exact: f32 = wr.iter().zip(xi).map(|(a, b)| a * b).sum();
                    // The only difference is the 8-bit rounding of x: half a step
                    // (amax / 254) per value plus the f16 rounding of the step (127 · 2⁻¹¹
                    // of a step), times |w|, and for Q4_1 the f16 rounding of each block's
                    // d·Σq (times |m|: at most 0.4 for Q4_1, 8d and 16d ≤ 0.82 for Q4_0 and
                    // Q5_0).
                    let step = amax / 127.0;
                    let bound: f32 = wr.iter().map(|v| v.abs()).sum::<f32>() * step * 0.57
                        + (cols / QK) as f32 * 0.82 * 32.0 * amax / 2048.0
                        + 1e-4;
                    let got = out[i * rows + r];
                    assert!(
                        (got - exact).abs() <= bound,
                        "{format:?} {rows}×{cols}, row {i}, col {r}: {got} vs {exact}"
                    );
                }
            }
        }
    }
}

#[test]
fn rows_stack_and_select_like_the_dense_matrix() {
    let mut rng = Lcg(5);
    for format in ALL {
        // 11 rows (a group and three more) and 7 (no group): stacked, 18 rows are two
        // groups and two more, regrouped across the seam.
        let (a, b) = (
            random(format, 11, 64, &mut rng),
            random(format, 7, 64, &mut rng),
        );
        let both = QMatrix::stack(&[&a, &b]).unwrap();
        assert_eq!((both.rows(), both.cols()), (18, 64));
        let dense = [a.dequantize(), b.dequantize()].concat();
        assert_eq!(both.dequantize(), dense);
        let picked = both.select_rows(&[17, 0, 9, 17]).unwrap();
        assert_eq!(picked[..64], dense[17 * 64..18 * 64]);
        assert_eq!(picked[64..128], dense[..64]);
        assert_eq!(picked[128..192], dense[9 * 64..10 * 64]);
        assert!(both.select_rows(&[18]).is_err());
    }
    let (a, b) = (
        random(Format::Q4_1, 1, 64, &mut rng),
        random(Format::Q8_0, 1, 64, &mut rng),
    );
    assert!(QMatrix::stack(&[&a, &b]).is_err());
    let c = random(Format::Q4_1, 1, 96, &mut rng);
    assert!(QMatrix::stack(&[&a, &c]).is_err());
}

/// The blocks mean what GGML means by them: dequantized here as candle (GGML's reference
/// code) dequantizes the same bytes, for matrices candle quantized.
#[test]
fn blocks_dequantize_as_candle_does() {
    use candle_core::quantized::{GgmlDType, QTensor};
    let cpu = candle_core::Device::Cpu;
    // 14 rows: a group and six more.
    let dense = Tensor::randn(0f32, 1.0, (14, 96), &cpu).unwrap();
    for (format, dtype) in [
        (Format::Q4_0, GgmlDType::Q4_0),
        (Format::Q4_1, GgmlDType::Q4_1),
        (Format::Q5_0, GgmlDType::Q5_0),
        (Format::Q8_0, GgmlDType::Q8_0),
    ] {
        let q = QTensor::quantize(&dense, dtype).unwrap();
        let ours = QMatrix::from_bytes(format, &q.data().unwrap(), 14, 96).unwrap();
        let theirs: Vec<f32> = q
            .dequantize(&cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours.dequantize(), theirs, "{format:?}");
    }
}

#[test]
fn the_candle_op_keeps_the_leading_dimensions() {
    let mut rng = Lcg(3);
    let w = Arc::new(random(Format::Q4_1, 10, 64, &mut rng));
    let x = Tensor::rand(-1f32, 1f32, (2, 3, 64), &candle_core::Device::Cpu).unwrap();
    let y = QLinear(w.clone()).forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 3, 10]);
    let flat: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let mut out = vec![0f32; 6 * 10];
    w.matmul(&flat, 6, &mut out);
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), out);
    let bad = Tensor::zeros((2, 63), candle_core::DType::F32, &candle_core::Device::Cpu);
    assert!(QLinear(w).forward(&bad.unwrap()).is_err());
}
