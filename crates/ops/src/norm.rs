//! Group normalisation with an optional fused SiLU ([`group_norm`]), the normalisation of
//! `cond-unet`.
//!
//! Built from candle ops, one GroupNorm is some ten element-wise passes forward and twenty
//! backward over the activations. On the CPU [`group_norm`] is one custom op instead:
//! statistics and output in one pass per group forward, and the whole backward (SiLU, affine,
//! normalisation) in two. On CUDA (feature `cuda`) the same op runs the kernels of
//! `kernels/group_norm.cu`, one block per (image, group). [`reference_group_norm`] is the same
//! function from candle's ops, the reference it is tested against.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::simd::Level;

/// GroupNorm of `x` `(N, C, H, W)` over `groups` groups of channels, then the per-channel
/// affine map `gamma * x + beta` (`(C,)` each), then SiLU when `silu`; `eps` is added to the
/// variance. One op forward and backward where our kernels run (f32 and f64 on the CPU, and on
/// CUDA with the `cuda` feature), else [`reference_group_norm`]. Half precision (bf16
/// inference) is normalised in f32 and rounded back once: a group's mean and variance summed
/// in bf16 would keep only about 3 significant digits.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    use crate::operands::widened;
    let wide = widened(x)?.contiguous()?;
    let (gamma, beta) = (widened(gamma)?, widened(beta)?);
    let y = if crate::operands::own_kernels_for(&wide) {
        let op = FusedGroupNorm { groups, eps, silu };
        wide.apply_op3(&gamma, &beta, op)?
    } else {
        reference_group_norm(&wide, &gamma, &beta, groups, eps, silu)?
    };
    y.to_dtype(x.dtype())
}

/// GroupNorm (+ SiLU) from candle's own ops, with candle's autograd.
pub fn reference_group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let g = x.reshape((n, groups, (c / groups) * h * w))?;
    let mean = g.mean_keepdim(2)?;
    let centered = g.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(2)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = normed
        .reshape((n, c, h, w))?
        .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1, 1))?)?;
    Ok(if silu { candle_nn::ops::silu(&y)? } else { y })
}

#[derive(Clone, Copy)]
struct FusedGroupNorm {
    groups: usize,
    eps: f64,
    silu: bool,
}

/// The float types the op runs in.
trait Real:
    Copy
    + Send
    + Sync
    + Into<f64>
    + candle_core::WithDType
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::MulAssign
    + std::ops::AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn of(v: f64) -> Self;
    fn sigmoid(v: Self) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn sigmoid(v: Self) -> Self {
        1.0 / (1.0 + exp_f32(-v))
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn of(v: f64) -> Self {
        v
    }
    fn sigmoid(v: Self) -> Self {
        1.0 / (1.0 + (-v).exp())
    }
}

/// `e^x` in f32 without a libm call, so that loops around it vectorise: `2^(x log2 e)` split
/// into a rounded integer power (put into the exponent bits) and `2^f`, `|f| <= 1/2`, from a
/// degree-6 Taylor polynomial. Relative error below 1e-6 on [-10, 10] and 1e-5 on [-87, 87]
/// (there the f32 rounding of `x log2 e` dominates); inputs are clamped to that range.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let t = x.clamp(-87.0, 87.0) * std::f32::consts::LOG2_E;
    // Round to nearest by adding and removing 1.5 * 2^23 (exact for |t| < 2^22).
    let r = (t + 12_582_912.0) - 12_582_912.0;
    let f = t - r;
    const C: [f32; 6] = [
        std::f32::consts::LN_2,
        0.240_226_5,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
        0.000_154_035_3,
    ];
    let p = 1.0 + f * (C[0] + f * (C[1] + f * (C[2] + f * (C[3] + f * (C[4] + f * C[5])))));
    f32::from_bits((p.to_bits() as i32).wrapping_add((r as i32) << 23) as u32)
}

/// The sum of `f` over the pairs of two equally long slices, in eight independent lanes of `A`
/// (so that the loop vectorises and is not one long chain of dependent additions), the lanes
/// added at the end.
#[inline(always)]
fn lane_sum2<T: Copy, A: Real>(x: &[T], y: &[T], f: impl Fn(T, T) -> A) -> A {
    let mut acc = [A::ZERO; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let mut rest = A::ZERO;
    for (&a, &b) in xc.remainder().iter().zip(yc.remainder()) {
        rest += f(a, b);
    }
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += f(a[l], b[l]);
        }
    }
    acc.iter().fold(rest, |a, &v| a + v)
}

/// [`lane_sum2`] over one slice.
#[inline(always)]
fn lane_sum<T: Copy, A: Real>(x: &[T], f: impl Fn(T) -> A) -> A {
    lane_sum2(x, x, |a, _| f(a))
}

/// Mean and `1 / sqrt(var + eps)` of one group (accumulated in f64, in two passes).
#[inline(always)]
fn stats<T: Real>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = lane_sum(x, |v| -> f64 { v.into() }) / n;
    let var = lane_sum(x, |v| {
        let d = v.into() - mean;
        d * d
    }) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Defines `fn $name` that runs `$body` (which must be `#[inline(always)]`, as everything it
/// calls) compiled for AVX-512 or AVX2 + FMA where the CPU has them ([`Level`]), so that its
/// loops run 16 or 8 f32 wide. The arithmetic, and so the result, is the same in every copy.
macro_rules! simd_copy {
    (fn $name:ident => $body:ident ($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        fn $name<T: Real>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx,avx2,fma")]
            fn avx2<T: Real>($($arg: $ty),*) -> $ret {
                $body::<T>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx,avx2,fma,avx512f")]
            fn avx512<T: Real>($($arg: $ty),*) -> $ret {
                $body::<T>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            match Level::get() {
                // SAFETY: the CPU has the features each copy is compiled for.
                Level::Avx512 => return unsafe { avx512::<T>($($arg),*) },
                Level::Avx2 => return unsafe { avx2::<T>($($arg),*) },
                Level::Baseline => {}
            }
            $body::<T>($($arg),*)
        }
    };
}

simd_copy!(fn forward_group => forward_group_body(
    op: &FusedGroupNorm, o: &mut [T], xg: &[T], gamma: &[T], beta: &[T], hw: usize,
) -> ());

simd_copy!(fn backward_group => backward_group_body(
    op: &FusedGroupNorm, dxg: &mut [T], xg: &[T], dg: &[T], gamma: &[T], beta: &[T], hw: usize,
) -> Vec<(f64, f64)>);

/// One group of the forward pass: `gamma` and `beta` are the group's channels' (`cg` of them),
/// `xg` and `o` their `cg * hw` values.
#[inline(always)]
fn forward_group_body<T: Real>(
    op: &FusedGroupNorm,
    o: &mut [T],
    xg: &[T],
    gamma: &[T],
    beta: &[T],
    hw: usize,
) {
    let (mean, rstd) = stats(xg, op.eps);
    for (k, (&g, &b)) in gamma.iter().zip(beta).enumerate() {
        let ga = g.into() * rstd;
        let (scale, shift) = (T::of(ga), T::of(b.into() - mean * ga));
        let rows = o[k * hw..(k + 1) * hw]
            .iter_mut()
            .zip(&xg[k * hw..(k + 1) * hw]);
        if op.silu {
            for (ov, &xv) in rows {
                let y = xv * scale + shift;
                *ov = y * T::sigmoid(y);
            }
        } else {
            for (ov, &xv) in rows {
                *ov = xv * scale + shift;
            }
        }
    }
}

/// One group of the backward pass: writes the group's `dx` into `dxg` and returns each of its
/// channels' `(dgamma, dbeta)` sums.
#[inline(always)]
fn backward_group_body<T: Real>(
    op: &FusedGroupNorm,
    dxg: &mut [T],
    xg: &[T],
    dg: &[T],
    gamma: &[T],
    beta: &[T],
    hw: usize,
) -> Vec<(f64, f64)> {
    let (mean, rstd) = stats(xg, op.eps);
    let (mean_t, rstd_t) = (T::of(mean), T::of(rstd));
    let mut sums = vec![(0.0, 0.0); gamma.len()];
    // With dxhat = dy * gamma, dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)).
    // First pass: dxhat into dx, the sums; second pass: dx.
    let (mut s1, mut s2) = (0.0, 0.0);
    for (k, (&ga, &be)) in gamma.iter().zip(beta).enumerate() {
        let r = k * hw..(k + 1) * hw;
        let (xr, dr, outr) = (&xg[r.clone()], &dg[r.clone()], &mut dxg[r]);
        if op.silu {
            for ((o, &xj), &dj) in outr.iter_mut().zip(xr).zip(dr) {
                let y = (xj - mean_t) * rstd_t * ga + be;
                let s = T::sigmoid(y);
                *o = dj * s * (T::ONE + y * (T::ONE - s));
            }
        } else {
            outr.copy_from_slice(dr);
        }
        // outr now holds dy (after SiLU); the channel's sums, then dxhat.
        let dgk: f64 = lane_sum2(outr, xr, |d, x| d * ((x - mean_t) * rstd_t)).into();
        let dbk: f64 = lane_sum(outr, |d| d).into();
        sums[k] = (dgk, dbk);
        s1 += dbk * ga.into();
        s2 += dgk * ga.into();
        for o in outr.iter_mut() {
            *o *= ga;
        }
    }
    let m = dxg.len() as f64;
    let (s1, s2) = (T::of(s1 / m), T::of(s2 / m));
    for (o, &xj) in dxg.iter_mut().zip(xg) {
        let xhat = (xj - mean_t) * rstd_t;
        *o = rstd_t * (*o - s1 - xhat * s2);
    }
    sums
}

impl FusedGroupNorm {
    /// The channels of the `i`-th (image, group) block, `cg` channels per group.
    fn group_channels(&self, i: usize, cg: usize) -> std::ops::Range<usize> {
        let g = i % self.groups;
        g * cg..(g + 1) * cg
    }

    fn dims(&self, l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (n, c, h, w) = l.shape().dims4()?;
        if self.groups == 0 || !c.is_multiple_of(self.groups) {
            candle_core::bail!(
                "group norm: {c} channels do not split into {} groups",
                self.groups
            );
        }
        Ok((n, c, h * w))
    }

    fn forward<T: Real>(
        &self,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        l: &Layout,
    ) -> candle_core::Result<Vec<T>> {
        let (_, c, hw) = self.dims(l)?;
        let cg = c / self.groups;
        let mut out = vec![T::ZERO; x.len()];
        out.par_chunks_mut(cg * hw)
            .zip(x.par_chunks(cg * hw))
            .enumerate()
            .for_each(|(i, (o, xg))| {
                let ch = self.group_channels(i, cg);
                forward_group(self, o, xg, &gamma[ch.clone()], &beta[ch], hw);
            });
        Ok(out)
    }

    /// `(dx, dgamma, dbeta)` packed in one vector, from `x`, `gamma`, `beta` and the output
    /// gradient `dv`, for `c` channels of `hw` values per image.
    fn backward<T: Real>(
        &self,
        xv: &[T],
        gv: &[T],
        bv: &[T],
        dv: &[T],
        c: usize,
        hw: usize,
    ) -> Vec<T> {
        let cg = c / self.groups;
        let mut dx = vec![T::ZERO; xv.len()];
        // Per group: the partial sums of dgamma and dbeta for its channels, reduced in order below.
        let partial: Vec<Vec<(f64, f64)>> = dx
            .par_chunks_mut(cg * hw)
            .zip(xv.par_chunks(cg * hw).zip(dv.par_chunks(cg * hw)))
            .enumerate()
            .map(|(i, (dxg, (xg, dg)))| {
                let ch = self.group_channels(i, cg);
                backward_group(self, dxg, xg, dg, &gv[ch.clone()], &bv[ch], hw)
            })
            .collect();
        let (mut dgamma, mut dbeta) = (vec![0.0f64; c], vec![0.0f64; c]);
        for (i, sums) in partial.iter().enumerate() {
            for (ch, &(dg, db)) in self.group_channels(i, cg).zip(sums) {
                dgamma[ch] += dg;
                dbeta[ch] += db;
            }
        }
        dx.extend(dgamma.into_iter().chain(dbeta).map(T::of));
        dx
    }
}

/// `(x, dy, [gamma, beta]) -> [dx, dgamma, dbeta]`, packed: the backward pass of
/// [`FusedGroupNorm`] as an op of its own, so that it runs on the device that holds the tensors.
struct GroupNormGrad(FusedGroupNorm);

impl GroupNormGrad {
    /// `(n, c, hw)` of `x`, checking that `dy` has its shape and `[gamma, beta]` `2 c` values.
    fn dims(
        &self,
        x: &Layout,
        dy: &Layout,
        gb: &Layout,
    ) -> candle_core::Result<(usize, usize, usize)> {
        let (n, c, hw) = self.0.dims(x)?;
        if x.shape() != dy.shape() || gb.shape().elem_count() != 2 * c {
            candle_core::bail!("group norm: gradient or parameters of the wrong shape");
        }
        Ok((n, c, hw))
    }
}

impl CustomOp3 for GroupNormGrad {
    fn name(&self) -> &'static str {
        "group-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, hw) = self.dims(l1, l2, l3)?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(d), CpuStorage::F32(gb)) => {
                let gb = contiguous(gb, l3)?;
                let (x, d) = (contiguous(x, l1)?, contiguous(d, l2)?);
                CpuStorage::F32(self.0.backward(x, &gb[..c], &gb[c..], d, c, hw))
            }
            (CpuStorage::F64(x), CpuStorage::F64(d), CpuStorage::F64(gb)) => {
                let gb = contiguous(gb, l3)?;
                let (x, d) = (contiguous(x, l1)?, contiguous(d, l2)?);
                CpuStorage::F64(self.0.backward(x, &gb[..c], &gb[c..], d, c, hw))
            }
            _ => candle_core::bail!("group norm: operands must all be f32 or all f64"),
        };
        Ok((out, Shape::from(n * c * hw + 2 * c)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, hw) = self.dims(l1, l2, l3)?;
        let out = cuda::run(
            &self.0,
            cuda::Kernel::Backward,
            (n, c, hw),
            [(s1, l1), (s2, l2), (s3, l3)],
        )?;
        Ok((out, Shape::from(n * c * hw + 2 * c)))
    }
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    crate::operands::contiguous(v, l, "group norm")
}

impl CustomOp3 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => {
                CpuStorage::F32(self.forward(
                    contiguous(x, l1)?,
                    contiguous(g, l2)?,
                    contiguous(b, l3)?,
                    l1,
                )?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                CpuStorage::F64(self.forward(
                    contiguous(x, l1)?,
                    contiguous(g, l2)?,
                    contiguous(b, l3)?,
                    l1,
                )?)
            }
            _ => {
                candle_core::bail!("group norm: input, scale and shift must all be f32 or all f64")
            }
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = self.dims(l1)?;
        let out = cuda::run(
            self,
            cuda::Kernel::Forward,
            d,
            [(s1, l1), (s2, l2), (s3, l3)],
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.elem_count();
        let numel = x.elem_count();
        let gb = Tensor::cat(&[gamma, beta], 0)?;
        let packed = x.apply_op3(&grad.contiguous()?, &gb, GroupNormGrad(*self))?;
        let dx = packed.narrow(0, 0, numel)?.reshape(x.shape())?;
        let dg = packed.narrow(0, numel, c)?;
        let db = packed.narrow(0, numel + c, c)?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaStorage, DType, Error as E, Layout, WithDType};

    use super::FusedGroupNorm;
    use crate::cuda_kernels::{function, GROUP_NORM};
    use crate::operands::cuda_view;

    pub(super) enum Kernel {
        /// `(x, gamma, beta) -> out`
        Forward,
        /// `(x, dy, [gamma, beta]) -> [dx, dgamma, dbeta]`
        Backward,
    }

    pub(super) fn run(
        op: &FusedGroupNorm,
        kernel: Kernel,
        dims: (usize, usize, usize),
        srcs: [(&CudaStorage, &Layout); 3],
    ) -> candle_core::Result<CudaStorage> {
        let dtypes = srcs.map(|(s, _)| s.dtype());
        match dtypes {
            [DType::F32, DType::F32, DType::F32] => typed::<f32>(op, kernel, dims, srcs),
            [DType::F64, DType::F64, DType::F64] => typed::<f64>(op, kernel, dims, srcs),
            _ => candle_core::bail!("group norm: f32 or f64 operands, not {dtypes:?}"),
        }
    }

    fn typed<T: CudaDType + DeviceRepr + ValidAsZeroBits + WithDType>(
        op: &FusedGroupNorm,
        kernel: Kernel,
        (n, c, hw): (usize, usize, usize),
        [(s1, l1), (s2, l2), (s3, l3)]: [(&CudaStorage, &Layout); 3],
    ) -> candle_core::Result<CudaStorage> {
        let dev = s1.device().clone();
        let stream = dev.cuda_stream();
        let a = cuda_view::<T>(s1, l1, "group norm")?;
        let b = cuda_view::<T>(s2, l2, "group norm")?;
        let d = cuda_view::<T>(s3, l3, "group norm")?;
        let numel = n * c * hw;
        let (groups, cg) = (op.groups, c / op.groups);
        let (eps, silu) = (op.eps, i32::from(op.silu));
        let len = match kernel {
            Kernel::Forward => numel,
            Kernel::Backward => numel + 2 * c,
        };
        // SAFETY: the kernels write every element of out / dx; dgamma and dbeta are zeroed below.
        let mut out = unsafe { stream.alloc::<T>(len) }.map_err(E::wrap)?;
        let name = match kernel {
            Kernel::Forward => "group_norm_fwd",
            Kernel::Backward => {
                let mut sums = out.slice_mut(numel..);
                stream.memset_zeros(&mut sums).map_err(E::wrap)?;
                "group_norm_bwd"
            }
        };
        let func = function(&dev, "denoise_group_norm", GROUP_NORM, name, T::DTYPE)?;
        let mut builder = stream.launch_builder(&func);
        if let Kernel::Backward = kernel {
            builder.arg(&numel);
        }
        builder.arg(&groups);
        builder.arg(&cg);
        builder.arg(&hw);
        builder.arg(&a);
        builder.arg(&b);
        builder.arg(&d);
        builder.arg(&mut out);
        builder.arg(&eps);
        builder.arg(&silu);
        if numel > 0 {
            let cfg = LaunchConfig {
                grid_dim: ((n * groups) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments follow the kernels' parameters: ([size_t numel,] size_t
            // groups, size_t cg, size_t hw, const T* x, const T* gamma or dy, const T* beta or
            // [gamma, beta], T* out, double eps, int silu), with every buffer of the size the
            // kernel reads or writes.
            unsafe { builder.launch(cfg) }.map_err(E::wrap)?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The AVX-512, AVX2 and baseline copies of the per-group loops give the same bits,
    /// forward and backward (with and without SiLU).
    #[test]
    fn every_simd_level_gives_the_same_bits() {
        use crate::simd::Level;
        let _lock = crate::simd::TEST_LOCK.lock();
        let dev = candle_core::Device::Cpu;
        let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.5, 24, &dev).unwrap()).unwrap();
        let beta = Tensor::randn(0f32, 0.5, 24, &dev).unwrap();
        let x = Tensor::randn(0.5f32, 2.0, (3, 24, 7, 9), &dev).unwrap();
        let x = Var::from_tensor(&x).unwrap();
        let run = |level: Level, silu: bool| {
            level.run(|| {
                let y = group_norm(x.as_tensor(), gamma.as_tensor(), &beta, 6, 1e-5, silu).unwrap();
                let loss = (&y * &y).unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap();
                [
                    y,
                    g.get(&x).unwrap().clone(),
                    g.get(&gamma).unwrap().clone(),
                ]
                .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            })
        };
        for silu in [false, true] {
            let levels = Level::all();
            let first = run(levels[0], silu);
            for &level in &levels[1..] {
                let other = run(level, silu);
                for (a, b) in first.iter().zip(&other) {
                    assert!(
                        a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()),
                        "silu {silu}: differs at {level:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        // Near zero the polynomial's error shows; far out, the f32 rounding of x log2(e).
        for (range, tol) in [(1000, 1e-6), (8700, 1e-5)] {
            let mut worst = 0f64;
            for i in -range..=range {
                let x = i as f32 / 100.0;
                let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
                worst = worst.max((a - b).abs() / b);
            }
            assert!(worst < tol, "|x| <= {}: {worst}", range / 100);
        }
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-200.0) >= 0.0 && exp_f32(-200.0) < 1e-37);
    }
}
