//! The grouped layouts: a matrix's rows taken eight at a time, each block column of the eight
//! stored as one group with the rows' quants interleaved four bytes at a time (llama.cpp's
//! repacking idea). One broadcast of four activation bytes then meets the same four values of
//! all eight rows, and one register holds the eight rows' sums, so a block's integer-to-float
//! conversion, scaling and accumulation serve eight rows instead of one, and no horizontal
//! sum is left at the end. A group is the same bytes as the eight blocks it was made from
//! (Q4_0 gains its implied minimum, `-8·d`, as an f16: 16 bytes more per eight blocks), and
//! gives them back bit for bit ([`WeightBlock::ungroup`]).
use half::f16;

use super::{BlockQ4_0, BlockQ4_1, BlockQ8_0, Panel, QK, WeightBlock};

/// Eight rows' 4-bit blocks of one block column (Q4_0 and Q4_1): `qs[k]` holds bytes
/// `4k..4k+4` of each row in turn (row `r` at `4r..4r+4`: values `4k..4k+4` in the low
/// nibbles, `16+4k..20+4k` in the high ones); `value = d·q + m` per row.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(32))]
pub struct Q4Group {
    /// Interleaved packed quants.
    pub qs: [[u8; 32]; 4],
    /// Each row's scale.
    pub d: [f16; 8],
    /// Each row's minimum.
    pub m: [f16; 8],
}
const _: () = assert!(std::mem::size_of::<Q4Group>() == 160);

impl Q4Group {
    fn new(qs: [&[u8; QK / 2]; 8], d: [f16; 8], m: [f16; 8]) -> Self {
        let mut g = Self {
            qs: [[0; 32]; 4],
            d,
            m,
        };
        for (r, q) in qs.iter().enumerate() {
            for (k, dst) in g.qs.iter_mut().enumerate() {
                dst[4 * r..4 * r + 4].copy_from_slice(&q[4 * k..4 * k + 4]);
            }
        }
        g
    }

    /// Row `lane`'s packed quants.
    fn quants(&self, lane: usize) -> [u8; QK / 2] {
        std::array::from_fn(|j| self.qs[j / 4][4 * lane + j % 4])
    }
}

/// Eight rows' Q8_0 blocks of one block column: `qs[k]` holds values `4k..4k+4` of each row
/// in turn (row `r` at `4r..4r+4`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q8Group {
    /// Interleaved quants.
    pub qs: [[i8; 32]; 8],
    /// Each row's scale.
    pub d: [f16; 8],
}
const _: () = assert!(std::mem::size_of::<Q8Group>() == 272);

/// The group type of a format with no grouped layout (Q5_0): there is never one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoGroup {}

/// Grouping for Q4_1.
pub(super) fn q4_1(b: [&BlockQ4_1; 8]) -> Q4Group {
    Q4Group::new(b.map(|b| &b.qs), b.map(|b| b.d), b.map(|b| b.m))
}

/// Row `lane` of a Q4_1 group.
pub(super) fn q4_1_block(g: &Q4Group, lane: usize) -> BlockQ4_1 {
    BlockQ4_1 {
        d: g.d[lane],
        m: g.m[lane],
        qs: g.quants(lane),
    }
}

/// Grouping for Q4_0: the minimum `-8·d` is exact in f16 (a power-of-two multiple).
pub(super) fn q4_0(b: [&BlockQ4_0; 8]) -> Q4Group {
    let d = b.map(|b| b.d);
    Q4Group::new(
        b.map(|b| &b.qs),
        d,
        d.map(|d| f16::from_f32(-8.0 * d.to_f32())),
    )
}

/// Row `lane` of a Q4_0 group.
pub(super) fn q4_0_block(g: &Q4Group, lane: usize) -> BlockQ4_0 {
    BlockQ4_0 {
        d: g.d[lane],
        qs: g.quants(lane),
    }
}

/// Grouping for Q8_0.
pub(super) fn q8_0(b: [&BlockQ8_0; 8]) -> Q8Group {
    let mut g = Q8Group {
        qs: [[0; 32]; 8],
        d: b.map(|b| b.d),
    };
    for (r, block) in b.iter().enumerate() {
        for (k, dst) in g.qs.iter_mut().enumerate() {
            dst[4 * r..4 * r + 4].copy_from_slice(&block.qs[4 * k..4 * k + 4]);
        }
    }
    g
}

/// Row `lane` of a Q8_0 group.
pub(super) fn q8_0_block(g: &Q8Group, lane: usize) -> BlockQ8_0 {
    BlockQ8_0 {
        d: g.d[lane],
        qs: std::array::from_fn(|j| g.qs[j / 4][4 * lane + j % 4]),
    }
}

/// [`WeightBlock::group_dotn`] in plain Rust, through the blocks the groups were made from:
/// the reference the SIMD kernels are tested against, and the path of a CPU without them.
pub fn dotn_scalar<B: WeightBlock, const R: usize>(g: &[B::Group], x: &Panel<R>) -> [[f32; 8]; R] {
    std::array::from_fn(|r| {
        std::array::from_fn(|lane| {
            let row: Vec<B> = g.iter().map(|g| B::ungroup(g, lane)).collect();
            B::dot_scalar(&row, x.q[r])
        })
    })
}

/// Whether matrices are stored grouped: where the grouped SIMD kernels run (elsewhere the
/// row kernels read plain blocks faster than the scalar path could read groups).
pub(super) fn enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::features::avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
