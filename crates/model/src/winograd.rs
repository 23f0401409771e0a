//! 3x3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(2x2, 3x3), forward
//! and backward, on the CPU.
//!
//! Each 2x2 block of outputs is computed from the 4x4 input tile around it: the tile and the
//! kernel are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`), multiplied element by element and summed
//! over input channels, and transformed back (`Y = Aᵀ M A`). Summing over channels at each of the
//! 16 tile positions is a matrix product, so a layer becomes 16 gemms of
//! `(c_out x c_in) x (c_in x tiles)`: 16 multiplications per 4 outputs instead of 36, 2.25x
//! fewer than im2col + gemm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016).
//!
//! The backward pass is the same algebra run in reverse: with `dM = A dY Aᵀ`, the input's
//! gradient is `B (Uᵀ dM) Bᵀ` added back into the overlapping tiles, and the kernel's is
//! `Gᵀ (Σ_tiles dM Vᵀ) G`; so it too is 16 + 16 gemms with 2.25x fewer multiplications.
//!
//! Images are processed in groups of about [`TILES_PER_GROUP`] tiles so that the transformed
//! tiles stay in cache between the transforms and the gemms. Groups run in parallel when there
//! are at least as many as threads; otherwise the 16 gemms of a group run in parallel.

use rayon::prelude::*;

use crate::cpu_conv::{gemm, threads, ConvShape, Float};

/// Tiles per group; each group's transformed input is `16 x c_in x tiles` values.
const TILES_PER_GROUP: usize = 512;

/// Whether a convolution of this shape goes through Winograd: 3x3 kernels with enough input
/// channels for the gemms to pay (the 3-channel first layer stays on im2col).
pub fn applies(s: &ConvShape) -> bool {
    s.k == 3 && s.c_in >= 8 && s.c_out >= 8
}

type Tile<T> = [[T; 4]; 4];

/// Tiles along each axis: outputs are covered by 2x2 blocks, the last one cut at an odd edge.
fn tiles(s: &ConvShape) -> (usize, usize) {
    (s.h.div_ceil(2), s.w.div_ceil(2))
}

fn group(s: &ConvShape) -> usize {
    let (th, tw) = tiles(s);
    (TILES_PER_GROUP / (th * tw)).clamp(1, s.n.max(1))
}

/// `Bᵀ d` on rows (or `d B` on columns): the input transform's 1-D step.
#[inline(always)]
fn bt<T: Float>(d: [T; 4]) -> [T; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// `B v`: the adjoint of [`bt`].
#[inline(always)]
fn b<T: Float>(v: [T; 4]) -> [T; 4] {
    [v[0], v[1] - v[2] + v[3], v[1] + v[2] - v[0], T::ZERO - v[3]]
}

/// `G g` for a kernel row or column of 3.
#[inline(always)]
fn g<T: Float>(k: [T; 3]) -> [T; 4] {
    let h = T::HALF;
    [
        k[0],
        h * (k[0] + k[1] + k[2]),
        h * (k[0] - k[1] + k[2]),
        k[2],
    ]
}

/// `Gᵀ u`: the adjoint of [`g`].
#[inline(always)]
fn gt<T: Float>(u: [T; 4]) -> [T; 3] {
    let h = T::HALF;
    [
        u[0] + h * (u[1] + u[2]),
        h * (u[1] - u[2]),
        h * (u[1] + u[2]) + u[3],
    ]
}

/// `Aᵀ m`: the output transform's 1-D step.
#[inline(always)]
fn at<T: Float>(m: [T; 4]) -> [T; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

/// `A y`: the adjoint of [`at`].
#[inline(always)]
fn a<T: Float>(y: [T; 2]) -> [T; 4] {
    [y[0], y[0] + y[1], y[0] - y[1], T::ZERO - y[1]]
}

/// `U = G g Gᵀ` for every kernel, laid out `[16][c_out][c_in]`.
fn transform_kernels<T: Float>(s: &ConvShape, w: &[T]) -> Vec<T> {
    let (ci, co) = (s.c_in, s.c_out);
    let mut u = vec![T::ZERO; 16 * co * ci];
    for o in 0..co {
        for i in 0..ci {
            let k = &w[(o * ci + i) * 9..(o * ci + i + 1) * 9];
            // Columns first: G applied to each kernel column gives 4 rows of 3.
            let mut rows = [[T::ZERO; 3]; 4];
            for x in 0..3 {
                let c = g([k[x], k[3 + x], k[6 + x]]);
                for (r, v) in rows.iter_mut().zip(c) {
                    r[x] = v;
                }
            }
            for (r, row) in rows.iter().enumerate() {
                for (c, v) in g(*row).into_iter().enumerate() {
                    u[((r * 4 + c) * co + o) * ci + i] = v;
                }
            }
        }
    }
    u
}

/// `Gᵀ dU G` back to kernel gradients `(c_out, c_in, 3, 3)`.
fn kernel_grads<T: Float>(s: &ConvShape, du: &[T]) -> Vec<T> {
    let (ci, co) = (s.c_in, s.c_out);
    let mut dw = vec![T::ZERO; co * ci * 9];
    for o in 0..co {
        for i in 0..ci {
            let mut t = [[T::ZERO; 4]; 4];
            for (p, v) in t.iter_mut().flatten().enumerate() {
                *v = du[(p * co + o) * ci + i];
            }
            let mut rows = [[T::ZERO; 4]; 3];
            for c in 0..4 {
                let col = gt([t[0][c], t[1][c], t[2][c], t[3][c]]);
                for (r, v) in rows.iter_mut().zip(col) {
                    r[c] = v;
                }
            }
            let k = &mut dw[(o * ci + i) * 9..(o * ci + i + 1) * 9];
            for (r, row) in rows.iter().enumerate() {
                k[r * 3..r * 3 + 3].copy_from_slice(&gt(*row));
            }
        }
    }
    dw
}

/// Copies one `h x w` plane into `pad` with one zero row and column before it and enough after
/// it to fill whole 4x4 tiles: `(2 th + 2) x (2 tw + 2)`.
fn pad_plane<T: Float>(s: &ConvShape, src: &[T], pad: &mut [T]) {
    let (th, tw) = tiles(s);
    let pw = 2 * tw + 2;
    pad[..(2 * th + 2) * pw].fill(T::ZERO);
    for y in 0..s.h {
        pad[(y + 1) * pw + 1..(y + 1) * pw + 1 + s.w].copy_from_slice(&src[y * s.w..(y + 1) * s.w]);
    }
}

/// `V = Bᵀ d B` for every tile of `gn` images, laid out `[16][c_in][t]` with `t = gn th tw`.
fn transform_input<T: Float>(s: &ConvShape, x: &[T], gn: usize, v: &mut [T], pad: &mut [T]) {
    let (th, tw) = tiles(s);
    let (p, t, pw) = (s.h * s.w, gn * th * tw, 2 * tw + 2);
    for img in 0..gn {
        for c in 0..s.c_in {
            let plane = &x[(img * s.c_in + c) * p..(img * s.c_in + c + 1) * p];
            pad_plane(s, plane, pad);
            for ty in 0..th {
                let r = |i: usize| &pad[(2 * ty + i) * pw..(2 * ty + i + 1) * pw];
                let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                let base = c * t + (img * th + ty) * tw;
                for tx in 0..tw {
                    let mut d: Tile<T> = [[T::ZERO; 4]; 4];
                    for j in 0..4 {
                        let col = bt([
                            r0[2 * tx + j],
                            r1[2 * tx + j],
                            r2[2 * tx + j],
                            r3[2 * tx + j],
                        ]);
                        for (row, val) in d.iter_mut().zip(col) {
                            row[j] = val;
                        }
                    }
                    for (i, row) in d.iter().enumerate() {
                        for (j, val) in bt(*row).into_iter().enumerate() {
                            v[(i * 4 + j) * s.c_in * t + base + tx] = val;
                        }
                    }
                }
            }
        }
    }
}

/// `M[p] = U[p] V[p]` for the 16 tile positions: `(c_out x c_in) x (c_in x t)`.
fn multiply<T: Float>(s: &ConvShape, u: &[T], v: &[T], m: &mut [T], t: usize, par: bool) {
    let (ci, co) = (s.c_in, s.c_out);
    let one = |(pt, mp): (usize, &mut [T])| {
        let up = &u[pt * co * ci..(pt + 1) * co * ci];
        let vp = &v[pt * ci * t..(pt + 1) * ci * t];
        gemm(co, t, ci, mp, false, up, ci, 1, vp, t, 1, false);
    };
    if par {
        m.par_chunks_mut(co * t).enumerate().for_each(one);
    } else {
        m.chunks_mut(co * t).enumerate().for_each(one);
    }
}

/// Forward pass for one group: `out` holds the group's `gn` output images.
#[allow(clippy::too_many_arguments)]
fn forward_group<T: Float>(
    s: &ConvShape,
    x: &[T],
    u: &[T],
    bias: &[T],
    relu: bool,
    out: &mut [T],
    scratch: &mut Scratch<T>,
    par: bool,
) {
    let (th, tw) = tiles(s);
    let gn = out.len() / (s.c_out * s.h * s.w);
    let t = gn * th * tw;
    scratch.ensure(
        16 * s.c_in * t,
        16 * s.c_out * t,
        (2 * th + 2) * (2 * tw + 2),
    );
    let Scratch { v, m, pad } = scratch;
    transform_input(s, x, gn, v, pad);
    multiply(s, u, v, m, t, par);
    let p = s.h * s.w;
    let tp = s.c_out * t;
    for img in 0..gn {
        for o in 0..s.c_out {
            let dst = &mut out[(img * s.c_out + o) * p..(img * s.c_out + o + 1) * p];
            let bo = bias[o];
            for ty in 0..th {
                for tx in 0..tw {
                    let idx = o * t + (img * th + ty) * tw + tx;
                    let mut rows = [[T::ZERO; 2]; 4];
                    for (i, row) in rows.iter_mut().enumerate() {
                        *row = at([
                            m[(i * 4) * tp + idx],
                            m[(i * 4 + 1) * tp + idx],
                            m[(i * 4 + 2) * tp + idx],
                            m[(i * 4 + 3) * tp + idx],
                        ]);
                    }
                    for c in 0..2 {
                        let x = 2 * tx + c;
                        if x >= s.w {
                            continue;
                        }
                        let col = at([rows[0][c], rows[1][c], rows[2][c], rows[3][c]]);
                        for (r, val) in col.into_iter().enumerate() {
                            let y = 2 * ty + r;
                            if y < s.h {
                                let val = val + bo;
                                dst[y * s.w + x] =
                                    if relu && val <= T::ZERO { T::ZERO } else { val };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Reused buffers: transformed input, products, one padded plane.
struct Scratch<T> {
    v: Vec<T>,
    m: Vec<T>,
    pad: Vec<T>,
}

impl<T: Float> Scratch<T> {
    fn new() -> Self {
        Self {
            v: Vec::new(),
            m: Vec::new(),
            pad: Vec::new(),
        }
    }

    fn ensure(&mut self, v: usize, m: usize, pad: usize) {
        for (buf, len) in [(&mut self.v, v), (&mut self.m, m), (&mut self.pad, pad)] {
            buf.resize(len, T::ZERO);
        }
    }
}

/// `relu?(conv3x3(x, w) + b)` by Winograd F(2x2, 3x3); same contract as [`crate::cpu_conv::forward`].
pub fn forward<T: Float>(s: &ConvShape, x: &[T], w: &[T], bias: &[T], relu: bool) -> Vec<T> {
    debug_assert!(s.k == 3);
    let p = s.h * s.w;
    let gsz = group(s);
    let u = transform_kernels(s, w);
    let mut out = vec![T::ZERO; s.n * s.c_out * p];
    let groups = s.n.div_ceil(gsz);
    let chunk = gsz * s.c_out * p;
    let run = |scratch: &mut Scratch<T>, (gi, o): (usize, &mut [T]), par: bool| {
        let xg = &x[gi * gsz * s.c_in * p..];
        forward_group(s, xg, &u, bias, relu, o, scratch, par);
    };
    if groups >= threads() {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(Scratch::new, |sc, item| run(sc, item, false));
    } else {
        let mut sc = Scratch::new();
        for item in out.chunks_mut(chunk).enumerate() {
            run(&mut sc, item, true);
        }
    }
    out
}

/// Backward pass for one group: adds the input gradient into `dx` (the group's images) and
/// returns the group's `dU` (`[16][c_out][c_in]`).
fn backward_group<T: Float>(
    s: &ConvShape,
    x: &[T],
    u: &[T],
    dy: &[T],
    dx: &mut [T],
    scratch: &mut Scratch<T>,
    par: bool,
) -> Vec<T> {
    let (th, tw) = tiles(s);
    let (ci, co) = (s.c_in, s.c_out);
    let p = s.h * s.w;
    let gn = dx.len() / (ci * p);
    let t = gn * th * tw;
    scratch.ensure(16 * ci * t, 16 * co * t, (2 * th + 2) * (2 * tw + 2));
    let Scratch { v, m, pad } = scratch;
    // dM = A dY Aᵀ per output tile, laid out like M.
    let tp = co * t;
    for img in 0..gn {
        for o in 0..co {
            let src = &dy[(img * co + o) * p..(img * co + o + 1) * p];
            for ty in 0..th {
                for tx in 0..tw {
                    let at_ = |r: usize, c: usize| {
                        let (y, x) = (2 * ty + r, 2 * tx + c);
                        if y < s.h && x < s.w {
                            src[y * s.w + x]
                        } else {
                            T::ZERO
                        }
                    };
                    let c0 = a([at_(0, 0), at_(1, 0)]);
                    let c1 = a([at_(0, 1), at_(1, 1)]);
                    let idx = o * t + (img * th + ty) * tw + tx;
                    for i in 0..4 {
                        for (j, val) in a([c0[i], c1[i]]).into_iter().enumerate() {
                            m[(i * 4 + j) * tp + idx] = val;
                        }
                    }
                }
            }
        }
    }
    transform_input(s, x, gn, v, pad);
    // dU[p] = dM[p] V[p]ᵀ: (c_out x t) x (t x c_in)
    let mut du = vec![T::ZERO; 16 * co * ci];
    let m_ref: &[T] = m;
    let v_ref: &[T] = v;
    let weight_grad = |(pt, dup): (usize, &mut [T])| {
        let mp = &m_ref[pt * co * t..(pt + 1) * co * t];
        let vp = &v_ref[pt * ci * t..(pt + 1) * ci * t];
        gemm(co, ci, t, dup, false, mp, t, 1, vp, 1, t, false);
    };
    if par {
        du.par_chunks_mut(co * ci).enumerate().for_each(weight_grad);
    } else {
        du.chunks_mut(co * ci).enumerate().for_each(weight_grad);
    }
    // dV[p] = U[p]ᵀ dM[p]: (c_in x c_out) x (c_out x t), into the V buffer.
    let input_grad = |(pt, dvp): (usize, &mut [T])| {
        let up = &u[pt * co * ci..(pt + 1) * co * ci];
        let mp = &m_ref[pt * co * t..(pt + 1) * co * t];
        gemm(ci, t, co, dvp, false, up, 1, ci, mp, t, 1, false);
    };
    if par {
        v.par_chunks_mut(ci * t).enumerate().for_each(input_grad);
    } else {
        v.chunks_mut(ci * t).enumerate().for_each(input_grad);
    }
    // dX += B dV Bᵀ, tile by tile into a padded plane, then cropped.
    let pw = 2 * tw + 2;
    let vp = ci * t;
    for img in 0..gn {
        for c in 0..ci {
            pad[..(2 * th + 2) * pw].fill(T::ZERO);
            for ty in 0..th {
                for tx in 0..tw {
                    let idx = c * t + (img * th + ty) * tw + tx;
                    let mut rows: Tile<T> = [[T::ZERO; 4]; 4];
                    for (i, row) in rows.iter_mut().enumerate() {
                        *row = b([
                            v[(i * 4) * vp + idx],
                            v[(i * 4 + 1) * vp + idx],
                            v[(i * 4 + 2) * vp + idx],
                            v[(i * 4 + 3) * vp + idx],
                        ]);
                    }
                    for j in 0..4 {
                        let col = b([rows[0][j], rows[1][j], rows[2][j], rows[3][j]]);
                        for (i, val) in col.into_iter().enumerate() {
                            pad[(2 * ty + i) * pw + 2 * tx + j] += val;
                        }
                    }
                }
            }
            let dst = &mut dx[(img * ci + c) * p..(img * ci + c + 1) * p];
            for y in 0..s.h {
                let src = &pad[(y + 1) * pw + 1..(y + 1) * pw + 1 + s.w];
                for (d, v) in dst[y * s.w..(y + 1) * s.w].iter_mut().zip(src) {
                    *d += *v;
                }
            }
        }
    }
    du
}

/// Gradients `(dx, dw, db)` from the output gradient `dy` (already masked by the ReLU); same
/// contract as [`crate::cpu_conv::backward`].
pub fn backward<T: Float>(s: &ConvShape, x: &[T], w: &[T], dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
    debug_assert!(s.k == 3);
    let (ci, co) = (s.c_in, s.c_out);
    let p = s.h * s.w;
    let gsz = group(s);
    let u = transform_kernels(s, w);
    let mut dx = vec![T::ZERO; s.n * ci * p];
    let groups = s.n.div_ceil(gsz);
    let run = |scratch: &mut Scratch<T>, (gi, d): (usize, &mut [T]), par: bool| {
        let n0 = gi * gsz;
        let xg = &x[n0 * ci * p..];
        let dyg = &dy[n0 * co * p..];
        backward_group(s, xg, &u, dyg, d, scratch, par)
    };
    // One dU per group, summed in group order so that results do not depend on scheduling.
    let parts: Vec<Vec<T>> = if groups >= threads() {
        dx.par_chunks_mut(gsz * ci * p)
            .enumerate()
            .map_init(Scratch::new, |sc, item| run(sc, item, false))
            .collect()
    } else {
        let mut sc = Scratch::new();
        dx.chunks_mut(gsz * ci * p)
            .enumerate()
            .map(|item| run(&mut sc, item, true))
            .collect()
    };
    let mut du = vec![T::ZERO; 16 * co * ci];
    for part in parts {
        for (a, b) in du.iter_mut().zip(part) {
            *a += b;
        }
    }
    let mut db = vec![T::ZERO; co];
    for img in 0..s.n {
        for (o, acc) in db.iter_mut().enumerate() {
            for v in &dy[(img * co + o) * p..(img * co + o + 1) * p] {
                *acc += *v;
            }
        }
    }
    (dx, kernel_grads(s, &du), db)
}
