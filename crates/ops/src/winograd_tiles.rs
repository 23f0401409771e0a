//! The tile transforms of the Winograd F(2x2, 3x3) convolution (`crate::winograd`): the 1-D
//! steps (`Bᵀ d`, `G g`, `Aᵀ m` and their adjoints), the kernels' transform and its gradient,
//! and the input, output and gradient transforms of whole planes, each run on 4, 8 or 16 tiles
//! at once and compiled for AVX2 and AVX-512 where the CPU has them.

// The transforms index small fixed arrays by lane and by tile row and column.
#![allow(clippy::needless_range_loop)]

use crate::cpu_conv::{ConvShape, Float};
use crate::simd::Level;

/// Tiles along each axis: outputs are covered by 2x2 blocks, the last one cut at an odd edge.
pub(crate) fn tiles(s: &ConvShape) -> (usize, usize) {
    (s.h.div_ceil(2), s.w.div_ceil(2))
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

/// Most tiles handled together in the transforms: one AVX-512 register of f32. The transforms
/// run `N` = 16 lanes on planes at least 16 tiles wide (32x32) where the CPU has AVX-512 (f32
/// only), 4 where a plane is 4 tiles wide (8x8), and 8 otherwise, so that lanes are seldom
/// partial and fill a register.
const L: usize = 16;

/// Distance between the 16 matrices of a transformed layout holding `len` values each: a little
/// more than `len`, so that the 16 streams a transform reads or writes at once do not all fall
/// in the same cache sets when `len` is a power of two.
pub(crate) fn point_stride(len: usize) -> usize {
    len + 32
}

/// `n <= N` values from `src[at..]`, zero-filled.
#[inline(always)]
fn load<T: Float, const N: usize>(src: &[T], at: usize, n: usize) -> [T; N] {
    let mut a = [T::ZERO; N];
    if n == N {
        a.copy_from_slice(&src[at..at + N]);
    } else {
        for (d, s) in a.iter_mut().zip(&src[at..at + n]) {
            *d = *s;
        }
    }
    a
}

/// Lanes `k0 .. k0 + n` of the 16 matrices of a transformed layout (`stride` apart) at offset
/// `at`: one tile per lane, its 16 values row-major.
#[inline(always)]
fn load_tiles<T: Float, const N: usize>(
    src: &[T],
    stride: usize,
    at: usize,
    n: usize,
) -> [[T; N]; 16] {
    let mut x = [[T::ZERO; N]; 16];
    for i in 0..16 {
        x[i] = load(src, i * stride + at, n);
    }
    x
}

/// The first `n <= N` lanes into `dst[at..]`.
#[inline(always)]
fn store<T: Float, const N: usize>(dst: &mut [T], at: usize, n: usize, v: &[T; N]) {
    if n == N {
        dst[at..at + N].copy_from_slice(v);
    } else {
        dst[at..at + n].copy_from_slice(&v[..n]);
    }
}

/// A 1-D transform of `M` inputs to `K` outputs applied lane by lane.
#[inline(always)]
fn lanes<T: Float, const M: usize, const K: usize, const N: usize>(
    f: impl Fn([T; M]) -> [T; K],
    x: [[T; N]; M],
) -> [[T; N]; K] {
    let mut out = [[T::ZERO; N]; K];
    for l in 0..N {
        let mut a = [T::ZERO; M];
        for i in 0..M {
            a[i] = x[i][l];
        }
        let v = f(a);
        for j in 0..K {
            out[j][l] = v[j];
        }
    }
    out
}

/// `f` along the rows of 4x4 tiles (16 lanes arrays, row-major), then along their columns:
/// `out[i][j]` for `i, j < K`, the separable 2-D transform `F d Fᵀ` of each tile.
#[inline(always)]
fn tile_2d<T: Float, const K: usize, const N: usize>(
    f: impl Fn([T; 4]) -> [T; K] + Copy,
    x: &[[T; N]; 16],
) -> [[[T; N]; K]; K] {
    let mut r = [[[T::ZERO; N]; K]; 4];
    for i in 0..4 {
        r[i] = lanes(f, [x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]]);
    }
    let mut out = [[[T::ZERO; N]; K]; K];
    for j in 0..K {
        let col = lanes(f, [r[0][j], r[1][j], r[2][j], r[3][j]]);
        for i in 0..K {
            out[i][j] = col[i];
        }
    }
    out
}

/// Defines `fn $name` that runs `$body` with 16, 8 or 4 lanes (see [`L`]), compiled for
/// AVX-512 or AVX2 where the CPU has them ([`Level`]) so that the lanes are one register wide.
/// `$body` and everything it calls are `#[inline(always)]`, so that they are compiled into each
/// copy. The lanes are tiles, each computed alone, so the lane count changes no result.
macro_rules! simd_fn {
    ($(#[$doc:meta])* fn $name:ident => $body:ident ($s:ident: $sty:ty, $($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        pub(crate) fn $name<T: Float>($s: $sty, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx,avx2,fma")]
            fn avx2<T: Float, const N: usize>($s: $sty, $($arg: $ty),*) {
                $body::<T, N>($s, $($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx,avx2,fma,avx512f")]
            fn avx512<T: Float, const N: usize>($s: $sty, $($arg: $ty),*) {
                $body::<T, N>($s, $($arg),*)
            }
            fn run<T: Float, const N: usize>(level: Level, $s: $sty, $($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                match level {
                    // SAFETY: the CPU has the features each copy is compiled for.
                    Level::Avx512 => return unsafe { avx512::<T, N>($s, $($arg),*) },
                    Level::Avx2 => return unsafe { avx2::<T, N>($s, $($arg),*) },
                    Level::Baseline => {}
                }
                let _ = level;
                $body::<T, N>($s, $($arg),*)
            }
            let level = Level::get();
            let tw = tiles($s).1;
            if tw <= 4 {
                run::<T, 4>(level, $s, $($arg),*)
            } else if tw >= L && level == Level::Avx512 && std::mem::size_of::<T>() == 4 {
                run::<T, L>(level, $s, $($arg),*)
            } else {
                run::<T, 8>(level, $s, $($arg),*)
            }
        }
    };
}

/// `U = G g Gᵀ` for every kernel of `w` (`(c_out, c_in, 3, 3)`): the transformed kernels that
/// [`crate::winograd::forward_with`] and [`crate::winograd::backward_with`] take, so that a
/// caller can compute them once for both.
pub fn transform_kernels<T: Float>(s: &ConvShape, w: &[T]) -> Vec<T> {
    let (ci, co) = (s.c_in, s.c_out);
    let us = point_stride(co * ci);
    let mut u = vec![T::ZERO; 16 * us];
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
                    u[(r * 4 + c) * us + o * ci + i] = v;
                }
            }
        }
    }
    u
}

/// `Gᵀ dU G` back to kernel gradients `(c_out, c_in, 3, 3)`.
pub(crate) fn kernel_grads<T: Float>(s: &ConvShape, du: &[T]) -> Vec<T> {
    let (ci, co) = (s.c_in, s.c_out);
    let us = point_stride(co * ci);
    let mut dw = vec![T::ZERO; co * ci * 9];
    for o in 0..co {
        for i in 0..ci {
            let mut t = [[T::ZERO; 4]; 4];
            for (p, v) in t.iter_mut().flatten().enumerate() {
                *v = du[p * us + o * ci + i];
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

/// A plane with a zero row and column before it and zeros after it up to whole 4x4 tiles and
/// whole lanes of them: `(2 th + 2) x (2 tw' + 2)`, `tw'` being `tw` rounded up to [`L`].
pub(crate) fn padded(s: &ConvShape) -> (usize, usize) {
    let (th, tw) = tiles(s);
    (2 * th + 2, 2 * tw.next_multiple_of(L) + 2)
}

/// The rows of the padded plane (see [`padded`]) that tile rows `r0 .. r1` read, `2 r0 ..
/// 2 r1 + 2`, into `pad`: its row `i` is the image's row `2 r0 + i - 1`, or zeros.
#[inline(always)]
fn pad_rows<T: Float>(s: &ConvShape, src: &[T], (r0, r1): (usize, usize), pad: &mut [T]) {
    let (_, pw) = padded(s);
    let rows = 2 * (r1 - r0) + 2;
    pad[..rows * pw].fill(T::ZERO);
    for i in 0..rows {
        let Some(y) = (2 * r0 + i).checked_sub(1).filter(|&y| y < s.h) else {
            continue;
        };
        pad[i * pw + 1..i * pw + 1 + s.w].copy_from_slice(&src[y * s.w..(y + 1) * s.w]);
    }
}

/// The 4 columns of tiles `k0 .. k0 + N` in a padded row: tile `k` reads columns `2k .. 2k + 4`.
#[inline(always)]
fn tile_cols<T: Float, const N: usize>(row: &[T], k0: usize) -> [[T; N]; 4] {
    let r = &row[2 * k0..2 * k0 + 2 * N + 2];
    let mut out = [[T::ZERO; N]; 4];
    for l in 0..N {
        for (j, o) in out.iter_mut().enumerate() {
            o[l] = r[2 * l + j];
        }
    }
    out
}

simd_fn! {
    /// `V = Bᵀ d B` for the tiles in tile rows `rows` (`r0 .. r1`) of `gn` images, laid out
    /// `[16][c_in][t]` with `t = gn (r1 - r0) tw`.
    fn transform_input => transform_input_body(s: &ConvShape, x: &[T], gn: usize, rows: (usize, usize), v: &mut [T], pad: &mut [T])
}

#[inline(always)]
fn transform_input_body<T: Float, const N: usize>(
    s: &ConvShape,
    x: &[T],
    gn: usize,
    (r0, r1): (usize, usize),
    v: &mut [T],
    pad: &mut [T],
) {
    let (_, tw) = tiles(s);
    let (_, pw) = padded(s);
    let nr = r1 - r0;
    let (p, t) = (s.h * s.w, gn * nr * tw);
    let stride = point_stride(s.c_in * t);
    for img in 0..gn {
        for c in 0..s.c_in {
            pad_rows(
                s,
                &x[(img * s.c_in + c) * p..(img * s.c_in + c + 1) * p],
                (r0, r1),
                pad,
            );
            for r in 0..nr {
                let base = c * t + (img * nr + r) * tw;
                for k0 in (0..tw).step_by(N) {
                    let n = N.min(tw - k0);
                    for (i, row) in input_tiles::<T, N>(pad, pw, r, k0).iter().enumerate() {
                        for (j, val) in row.iter().enumerate() {
                            store(v, (i * 4 + j) * stride + base + k0, n, val);
                        }
                    }
                }
            }
        }
    }
}

/// `V = Bᵀ d B` of tiles `k0 .. k0 + N` of tile row `r` of a padded plane (rows `pw` wide).
#[inline(always)]
fn input_tiles<T: Float, const N: usize>(
    pad: &[T],
    pw: usize,
    r: usize,
    k0: usize,
) -> [[[T; N]; 4]; 4] {
    // (No `array::from_fn` in these bodies: its closures are not compiled for AVX2.)
    let mut d = [[T::ZERO; N]; 16];
    for i in 0..4 {
        let cols = tile_cols(&pad[(2 * r + i) * pw..(2 * r + i + 1) * pw], k0);
        d[4 * i..4 * i + 4].copy_from_slice(&cols);
    }
    tile_2d(bt, &d)
}

simd_fn! {
    /// [`transform_input`] of `gn` whole images into the transposed layout: each of the 16
    /// matrices `t x c_in`, a tile's channels side by side, as the weight gradient's gemm reads
    /// them without packing. `pads` holds the padded planes of one image's channels.
    fn transform_input_t => transform_input_t_body(s: &ConvShape, x: &[T], gn: usize, v: &mut [T], pads: &mut [T])
}

#[inline(always)]
fn transform_input_t_body<T: Float, const N: usize>(
    s: &ConvShape,
    x: &[T],
    gn: usize,
    v: &mut [T],
    pads: &mut [T],
) {
    let (th, tw) = tiles(s);
    let (ph, pw) = padded(s);
    let (ci, p, plane) = (s.c_in, s.h * s.w, ph * pw);
    let t = gn * th * tw;
    let stride = point_stride(ci * t);
    for img in 0..gn {
        for c in 0..ci {
            let src = &x[(img * ci + c) * p..(img * ci + c + 1) * p];
            pad_rows(s, src, (0, th), &mut pads[c * plane..(c + 1) * plane]);
        }
        for r in 0..th {
            for k0 in (0..tw).step_by(N) {
                let n = N.min(tw - k0);
                let tile0 = (img * th + r) * tw + k0;
                // Channels innermost: the 16 x n values each channel writes sit next to the
                // previous channel's, in the same cache lines.
                for c in 0..ci {
                    let pad = &pads[c * plane..(c + 1) * plane];
                    for (i, row) in input_tiles::<T, N>(pad, pw, r, k0).iter().enumerate() {
                        for (j, val) in row.iter().enumerate() {
                            let at = (i * 4 + j) * stride + tile0 * ci + c;
                            for l in 0..n {
                                v[at + l * ci] = val[l];
                            }
                        }
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// `Y = relu?(Aᵀ M A + bias)` from the products of tile rows `rows` (`r0 .. r1`) of `gn`
    /// images into `out`: the image rows `2 r0 ..` that those tiles cover, each plane of the
    /// `gn` images `(min(2 r1, h) - 2 r0) x w`.
    fn transform_output => transform_output_body(s: &ConvShape, m: &[T], bias: &[T], relu: bool, rows: (usize, usize), out: &mut [T])
}

#[inline(always)]
fn transform_output_body<T: Float, const N: usize>(
    s: &ConvShape,
    m: &[T],
    bias: &[T],
    relu: bool,
    (r0, r1): (usize, usize),
    out: &mut [T],
) {
    let (_, tw) = tiles(s);
    let nr = r1 - r0;
    let p = ((2 * r1).min(s.h) - 2 * r0) * s.w;
    let gn = out.len() / (s.c_out * p);
    let t = gn * nr * tw;
    let tp = point_stride(s.c_out * t);
    for img in 0..gn {
        for o in 0..s.c_out {
            let dst = &mut out[(img * s.c_out + o) * p..(img * s.c_out + o + 1) * p];
            let bo = bias[o];
            for ty in r0..r1 {
                let base = o * t + (img * nr + ty - r0) * tw;
                for k0 in (0..tw).step_by(N) {
                    let n = N.min(tw - k0);
                    let tile = tile_2d(at, &load_tiles::<T, N>(m, tp, base + k0, n));
                    let x0 = 2 * k0;
                    let len = (2 * n).min(s.w - x0);
                    for row in 0..2 {
                        let y = 2 * ty + row;
                        if y >= s.h {
                            break;
                        }
                        let mut il = [T::ZERO; 2 * L];
                        for l in 0..N {
                            for c in 0..2 {
                                let v = tile[row][c][l] + bo;
                                // NaN maps to zero, as in the im2col path.
                                let positive = v > T::ZERO;
                                il[2 * l + c] = if relu && !positive { T::ZERO } else { v };
                            }
                        }
                        let at_ = (y - 2 * r0) * s.w + x0;
                        if len == 2 * N {
                            dst[at_..at_ + 2 * N].copy_from_slice(&il[..2 * N]);
                        } else {
                            dst[at_..at_ + len].copy_from_slice(&il[..len]);
                        }
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// `dM = A dY Aᵀ` for every output tile of `gn` images, laid out like `M`, with `dY` zeroed
    /// where `relu_out` (the forward's output, if it went through a ReLU) is not positive; adds
    /// the bias gradient (the sum of `dY`) into `db`.
    fn transform_output_grad => transform_output_grad_body(
        s: &ConvShape,
        dy: &[T],
        relu_out: Option<&[T]>,
        gn: usize,
        m: &mut [T],
        db: &mut [T],
    )
}

#[inline(always)]
fn transform_output_grad_body<T: Float, const N: usize>(
    s: &ConvShape,
    dy: &[T],
    relu_out: Option<&[T]>,
    gn: usize,
    m: &mut [T],
    db: &mut [T],
) {
    let (th, tw) = tiles(s);
    let p = s.h * s.w;
    let co = s.c_out;
    let t = gn * th * tw;
    let tp = point_stride(co * t);
    for img in 0..gn {
        for o in 0..co {
            let plane = (img * co + o) * p..(img * co + o + 1) * p;
            let src = &dy[plane.clone()];
            let out = relu_out.map(|r| &r[plane]);
            let mut sum = [[T::ZERO; 16]; 2];
            for ty in 0..th {
                let base = o * t + (img * th + ty) * tw;
                for k0 in (0..tw).step_by(N) {
                    let n = N.min(tw - k0);
                    let x0 = 2 * k0;
                    let len = (2 * n).min(s.w - x0);
                    // [row][even/odd column] of the tiles' 2x2 gradients, zero past the edges.
                    let mut g = [[[T::ZERO; N]; 2]; 2];
                    for (r, gr) in g.iter_mut().enumerate() {
                        let y = 2 * ty + r;
                        if y >= s.h {
                            break;
                        }
                        let mut il = [T::ZERO; 2 * L];
                        let run = y * s.w + x0..y * s.w + x0 + len;
                        if len == 2 * N {
                            il[..2 * N].copy_from_slice(&src[run.start..run.start + 2 * N]);
                        } else {
                            il[..len].copy_from_slice(&src[run.clone()]);
                        }
                        if let Some(out) = out {
                            // PyTorch's rule: the gradient passes where the output is positive.
                            for (g, o) in il.iter_mut().zip(&out[run]) {
                                let positive = *o > T::ZERO;
                                if !positive {
                                    *g = T::ZERO;
                                }
                            }
                        }
                        // 16 sums per tile row whatever the lane count, each adding the same
                        // values in the same order, so that the bias gradient does not
                        // depend on it.
                        for half in il[..2 * N].chunks(16) {
                            for (acc, g) in sum[r].iter_mut().zip(half) {
                                *acc += *g;
                            }
                        }
                        for l in 0..N {
                            gr[0][l] = il[2 * l];
                            gr[1][l] = il[2 * l + 1];
                        }
                    }
                    let ce = lanes(a, [g[0][0], g[1][0]]);
                    let cd = lanes(a, [g[0][1], g[1][1]]);
                    for i in 0..4 {
                        for (j, val) in lanes(a, [ce[i], cd[i]]).iter().enumerate() {
                            store(m, (i * 4 + j) * tp + base + k0, n, val);
                        }
                    }
                }
            }
            for g in sum.into_iter().flatten() {
                db[o] += g;
            }
        }
    }
}

simd_fn! {
    /// `dX = Σ B dV Bᵀ` over the overlapping tiles of `gn` images, into `dx`.
    fn transform_input_grad => transform_input_grad_body(s: &ConvShape, dv: &[T], dx: &mut [T], pad: &mut [T])
}

#[inline(always)]
fn transform_input_grad_body<T: Float, const N: usize>(
    s: &ConvShape,
    dv: &[T],
    dx: &mut [T],
    pad: &mut [T],
) {
    let (th, tw) = tiles(s);
    let (ph, pw) = padded(s);
    let (ci, p) = (s.c_in, s.h * s.w);
    let gn = dx.len() / (ci * p);
    let t = gn * th * tw;
    let vp = point_stride(ci * t);
    for img in 0..gn {
        for c in 0..ci {
            pad[..ph * pw].fill(T::ZERO);
            for ty in 0..th {
                let base = c * t + (img * th + ty) * tw;
                // The last lane's right half, added after the next lanes' left halves.
                let mut carry = [[T::ZERO; 2]; 4];
                for k0 in (0..tw).step_by(N) {
                    let n = N.min(tw - k0);
                    // Lanes past `n` load as zeros and add nothing.
                    let dd = tile_2d(b, &load_tiles::<T, N>(dv, vp, base + k0, n));
                    for i in 0..4 {
                        let at_ = (2 * ty + i) * pw + 2 * k0;
                        let row = &mut pad[at_..at_ + 2 * N + 2];
                        // Tile k covers columns 2k .. 2k + 4: two passes, so that no pass
                        // writes a column twice. A column shared by tiles k - 1 and k gets
                        // tile k's part first, then tile k - 1's, at every lane count (so the
                        // sums, and the bits, do not depend on it): the last lane's right half
                        // waits for the next group of lanes.
                        for l in 0..N {
                            row[2 * l] += dd[i][0][l];
                            row[2 * l + 1] += dd[i][1][l];
                        }
                        row[0] += carry[i][0];
                        row[1] += carry[i][1];
                        for l in 0..N - 1 {
                            row[2 * l + 2] += dd[i][2][l];
                            row[2 * l + 3] += dd[i][3][l];
                        }
                        carry[i] = [dd[i][2][N - 1], dd[i][3][N - 1]];
                    }
                }
                // The plane's last tile, if the last group of lanes was full.
                let end = 2 * tw.next_multiple_of(N);
                for (i, [c0, c1]) in carry.into_iter().enumerate() {
                    pad[(2 * ty + i) * pw + end] += c0;
                    pad[(2 * ty + i) * pw + end + 1] += c1;
                }
            }
            let dst = &mut dx[(img * ci + c) * p..(img * ci + c + 1) * p];
            for y in 0..s.h {
                dst[y * s.w..(y + 1) * s.w]
                    .copy_from_slice(&pad[(y + 1) * pw + 1..(y + 1) * pw + 1 + s.w]);
            }
        }
    }
}
