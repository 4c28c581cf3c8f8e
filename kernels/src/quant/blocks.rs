//! A matrix in blocks of one format: its rows eight at a time in the format's grouped layout
//! (where it has one and the CPU runs the grouped kernels), the rows after the last eight as
//! plain blocks.
use candle_core::{Result, bail};

use super::{BlockQ8_1, Panel, QK, WeightBlock, grouped};

/// A matrix of `rows × cols` (one row per output) in blocks of one format.
pub struct Blocks<B: WeightBlock> {
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// Rows `0..grouped` (a multiple of 8), eight at a time: group-major, then block column.
    groups: Vec<B::Group>,
    grouped: usize,
    /// Rows `grouped..rows`, row-major.
    tail: Vec<B>,
}

impl<B: WeightBlock> Blocks<B> {
    pub(super) fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(QK) {
            bail!("a quantized matrix needs a multiple of {QK} columns, not {cols}");
        }
        if bytes.len() != rows * cols / QK * B::BYTES {
            bail!(
                "{} bytes are not a {rows}×{cols} matrix of this format",
                bytes.len()
            );
        }
        let blocks = bytes.chunks_exact(B::BYTES).map(B::parse).collect();
        Ok(Self::new(blocks, rows, cols))
    }

    /// The matrix of row-major `blocks` (`rows × cols / QK`), grouped where it can be.
    fn new(blocks: Vec<B>, rows: usize, cols: usize) -> Self {
        let per = cols / QK;
        let eights = if per > 0 && grouped::enabled() {
            rows / 8
        } else {
            0
        };
        let groups: Option<Vec<B::Group>> = (0..eights)
            .flat_map(|g| (0..per).map(move |i| (g, i)))
            .map(|(g, i)| B::group(std::array::from_fn(|l| &blocks[(8 * g + l) * per + i])))
            .collect();
        let (groups, grouped) = match groups {
            Some(groups) => (groups, 8 * eights),
            None => (Vec::new(), 0),
        };
        let tail = blocks[grouped * per..].to_vec();
        Self {
            rows,
            cols,
            groups,
            grouped,
            tail,
        }
    }

    /// Every block, row-major (the groups given back as the blocks they were made from).
    pub(super) fn blocks(&self) -> Vec<B> {
        let per = self.cols / QK;
        let mut out = Vec::with_capacity(self.rows * per);
        for g in self.groups.chunks_exact(per.max(1)) {
            for lane in 0..8 {
                out.extend(g.iter().map(|g| B::ungroup(g, lane)));
            }
        }
        out.extend_from_slice(&self.tail);
        out
    }

    /// Stacks matrices of one width (fused projections), grouping the rows anew.
    pub(super) fn concat(parts: &[&Self]) -> Result<Self> {
        let cols = parts.first().map_or(0, |p| p.cols);
        if parts.iter().any(|p| p.cols != cols) {
            bail!("stacked matrices must have the same width");
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        Ok(Self::new(
            parts.iter().flat_map(|p| p.blocks()).collect(),
            rows,
            cols,
        ))
    }

    /// Row `r`, which must be after the grouped rows (the row kernels' input).
    pub(super) fn row(&self, r: usize) -> &[B] {
        assert!(r >= self.grouped, "row {r} is in a group");
        let per = self.cols / QK;
        &self.tail[(r - self.grouped) * per..][..per]
    }

    /// Row `r`'s values.
    pub(super) fn row_values(&self, r: usize, out: &mut [f32]) {
        let per = self.cols / QK;
        let chunks = out.chunks_exact_mut(QK);
        if r < self.grouped {
            let groups = &self.groups[r / 8 * per..][..per];
            for (g, o) in groups.iter().zip(chunks) {
                o.copy_from_slice(&B::ungroup(g, r % 8).values());
            }
        } else {
            for (b, o) in self.row(r).iter().zip(chunks) {
                o.copy_from_slice(&b.values());
            }
        }
    }

    /// `out = x · selfᵀ` for `m` rows of quantized activations `xq`.
    pub(super) fn matmul(&self, xq: &[BlockQ8_1], m: usize, out: &mut [f32]) {
        let per = self.cols / QK;
        let n = self.rows;
        let out_ptr = out.as_mut_ptr() as usize;
        // Work items are the groups of eight weight rows, then tiles of the rows after them;
        // each item computes its rows for every input row, eight input rows per pass over a
        // weight row or group (which stays in L1; then four, then one at a time for what is
        // left), input rows taken sixteen at a time so that they too stay in L1 while the
        // item's weights pass over them (a long prompt's rows would otherwise stream from L2
        // once per weight row).
        const TILE: usize = 4;
        const CHUNK: usize = 2;
        let eights_of_rows = self.grouped / 8;
        let items = eights_of_rows + (n - self.grouped).div_ceil(TILE);
        let rows = |i: usize| &xq[i * per..][..per];
        let eights: Vec<Panel<8>> = (0..m / 8)
            .map(|g| Panel::new(std::array::from_fn(|j| rows(8 * g + j))))
            .collect();
        let done = eights.len() * 8;
        let four =
            (m - done >= 4).then(|| Panel::<4>::new(std::array::from_fn(|j| rows(done + j))));
        let first_single = done + if four.is_some() { 4 } else { 0 };
        // The grouped kernels take the last rows as panels of one.
        let ones: Vec<Panel<1>> = if self.grouped > 0 {
            (first_single..m).map(|i| Panel::new([rows(i)])).collect()
        } else {
            Vec::new()
        };
        candle_core::utils::barrier_pool().execute_chunked(items, |range| {
            let out = out_ptr as *mut f32;
            // SAFETY (every write below): (i, r) for r in this item's rows is written by this
            // item only, inside `out` (m × n).
            let put = |i: usize, r: usize, v: f32| unsafe { *out.add(i * n + r) = v };
            let put_group = |first: usize, g: usize, values: &[[f32; 8]]| {
                for (j, lanes) in values.iter().enumerate() {
                    for (l, &v) in lanes.iter().enumerate() {
                        put(first + j, 8 * g + l, v);
                    }
                }
            };
            let group_items = range.start.min(eights_of_rows)..range.end.min(eights_of_rows);
            let tile_items = range.start.max(eights_of_rows)..range.end.max(eights_of_rows);
            let group = |g: usize| &self.groups[g * per..][..per];
            for (c, chunk) in eights.chunks(CHUNK).enumerate() {
                for g in group_items.clone() {
                    for (k, panel) in chunk.iter().enumerate() {
                        put_group(8 * (c * CHUNK + k), g, &B::group_dotn(group(g), panel));
                    }
                }
            }
            for g in group_items {
                if let Some(panel) = &four {
                    put_group(done, g, &B::group_dotn(group(g), panel));
                }
                for (k, panel) in ones.iter().enumerate() {
                    put_group(first_single + k, g, &B::group_dotn(group(g), panel));
                }
            }
            for item in tile_items {
                let first = self.grouped + (item - eights_of_rows) * TILE;
                let tile = first..n.min(first + TILE);
                for (c, chunk) in eights.chunks(CHUNK).enumerate() {
                    for r in tile.clone() {
                        let w = self.row(r);
                        for (k, panel) in chunk.iter().enumerate() {
                            let first = 8 * (c * CHUNK + k);
                            for (j, v) in B::dotn(w, panel).into_iter().enumerate() {
                                put(first + j, r, v);
                            }
                        }
                    }
                }
                for r in tile {
                    let w = self.row(r);
                    if let Some(panel) = &four {
                        for (j, v) in B::dotn(w, panel).into_iter().enumerate() {
                            put(done + j, r, v);
                        }
                    }
                    for i in first_single..m {
                        put(i, r, B::dot(w, rows(i)));
                    }
                }
            }
        });
    }
}
