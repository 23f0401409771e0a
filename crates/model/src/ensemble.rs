//! Geometric self-ensemble: denoise an image in several of its eight flips and rotations and
//! average the results turned back.
//!
//! The networks are not exactly equivariant to flips and transposes, so their errors in the
//! different orientations are partly independent and averaging them lowers the error (the
//! "x8" mode of published CNN denoisers). It costs one pass through the network per
//! orientation. Orientation `k` (0..8) flips the width if bit 0 is set, the height if bit 1 is,
//! then transposes height and width if bit 2 is; 1, 2, 4 or 8 orientations take the first
//! ones of that order (none, plus the mirror, plus the vertical flips, plus the transposes).

use candle_core::Tensor;

use crate::{Model, ModelError, Result};

/// The orientation counts [`denoise`] takes.
pub const SIZES: [usize; 4] = [1, 2, 4, 8];

/// Checks that `n` is one of [`SIZES`].
pub fn check(n: usize) -> Result<()> {
    if SIZES.contains(&n) {
        Ok(())
    } else {
        Err(ModelError::BadConfig(format!(
            "self-ensemble of {n} orientations: expected 1, 2, 4 or 8"
        )))
    }
}

/// The dimensions that orientation `k` flips: the width (3) for bit 0, the height (2) for bit 1.
fn flipped_dims(k: usize) -> Vec<usize> {
    [(1, 3), (2, 2)]
        .into_iter()
        .filter(|&(bit, _)| k & bit != 0)
        .map(|(_, dim)| dim)
        .collect()
}

/// `x` `(n, c, h, w)` in orientation `k`.
pub fn orient(x: &Tensor, k: usize) -> Result<Tensor> {
    let flips = flipped_dims(k);
    let y = if flips.is_empty() {
        x.clone()
    } else {
        x.flip(&flips)?
    };
    Ok(if k & 4 != 0 {
        y.transpose(2, 3)?.contiguous()?
    } else {
        y
    })
}

/// Undoes [`orient`]`(_, k)`.
pub fn unorient(y: &Tensor, k: usize) -> Result<Tensor> {
    let y = if k & 4 != 0 {
        y.transpose(2, 3)?.contiguous()?
    } else {
        y.clone()
    };
    let flips = flipped_dims(k);
    Ok(if flips.is_empty() { y } else { y.flip(&flips)? })
}

/// [`Model::denoise_any_size`] averaged over the first `orientations` orientations (1, 2, 4 or
/// 8; 1 is the plain pass). Clipped to `[0, 1]`, as each pass is.
pub fn denoise(
    model: &Model,
    noisy: &Tensor,
    sigmas: &[f64],
    orientations: usize,
) -> Result<Tensor> {
    check(orientations)?;
    let mut sum = model.denoise_any_size(noisy, sigmas)?;
    for k in 1..orientations {
        let y = model.denoise_any_size(&orient(noisy, k)?, sigmas)?;
        sum = (sum + unorient(&y, k)?)?;
    }
    if orientations == 1 {
        return Ok(sum);
    }
    Ok((sum / orientations as f64)?.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn every_orientation_is_undone_and_all_eight_differ() {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 5.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4, 5))
            .unwrap();
        let mut seen: Vec<Vec<f32>> = Vec::new();
        for k in 0..8 {
            let o = orient(&x, k).unwrap();
            let want = if k & 4 != 0 {
                [2, 3, 5, 4]
            } else {
                [2, 3, 4, 5]
            };
            assert_eq!(o.dims(), want, "orientation {k}");
            let back = unorient(&o, k).unwrap();
            let d = (back - &x).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "orientation {k}");
            let flat = o.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(!seen.contains(&flat), "orientation {k} repeats one");
            seen.push(flat);
        }
        // Orientation 1 mirrors the width: the first row starts where it ended.
        let m = orient(&x, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(&m[..5], &[4.0, 3.0, 2.0, 1.0, 0.0]);
        assert!(check(3).is_err() && check(8).is_ok());
    }
}
