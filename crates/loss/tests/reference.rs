//! SSIM and PSNR against scikit-image 0.26.0 on formula-defined images.
//! The numbers are copied from `shared/reference/ssim_psnr_reference.json`.

use candle_core::{DType, Device, Tensor, Var};
use denoise_loss::{psnr, MixLoss, Ssim};

struct Case {
    name: &'static str,
    chw: (usize, usize, usize),
    a: fn(f64, f64, f64) -> f64,
    b: fn(f64, f64, f64) -> f64,
    ssim: f64,
    per_channel: [f64; 3],
    psnr: Option<f64>,
    sums: (u64, u64),
}

fn grad(c: f64, y: f64, x: f64) -> f64 {
    ((x * 8.0 + y * 3.0 + c * 40.0) as i64 % 256) as f64
}
fn checker(c: f64, y: f64, x: f64) -> f64 {
    ((((x as i64) / 4 + (y as i64) / 4 + c as i64) % 2) * 200 + 20) as f64
}
fn rings(c: f64, y: f64, x: f64) -> f64 {
    128.0 + 100.0 * (((x - 32.0).powi(2) + (y - 24.0).powi(2)).sqrt() / 3.0 + c).sin()
}

const CASES: &[Case] = &[
    Case {
        name: "gradient_vs_itself",
        chw: (3, 32, 32),
        a: grad,
        b: grad,
        ssim: 1.0,
        per_channel: [1.0, 1.0, 1.0],
        psnr: None,
        sums: (391680, 391680),
    },
    Case {
        name: "gradient_vs_offset",
        chw: (3, 32, 32),
        a: grad,
        b: |c, y, x| grad(c, y, x) + 12.0,
        ssim: 0.99154631,
        per_channel: [0.99538169, 0.9914534, 0.98780384],
        psnr: Some(26.693583),
        sums: (391680, 427608),
    },
    Case {
        name: "checker_vs_blocky_noise",
        chw: (3, 32, 32),
        a: checker,
        b: |c, y, x| {
            let (ci, yi, xi) = (c as i64, y as i64, x as i64);
            checker(c, y, x) + ((xi * 37 + yi * 91 + ci * 53) % 61) as f64 - 30.0
        },
        ssim: 0.98497488,
        per_channel: [0.9848648, 0.98502668, 0.98503316],
        psnr: Some(23.520123),
        sums: (368640, 370200),
    },
    Case {
        name: "rings_vs_hash_noise_64x48",
        chw: (3, 48, 64),
        a: rings,
        b: |c, y, x| {
            let (ci, yi, xi) = (c as i64, y as i64, x as i64);
            rings(c, y, x) + ((xi * xi * 7 + yi * 13 + ci * 101) % 81) as f64 - 40.0
        },
        ssim: 0.75618992,
        per_channel: [0.75648153, 0.76160613, 0.7504821],
        psnr: Some(20.857419),
        sums: (1143635, 1143481),
    },
    Case {
        name: "dark_vs_bright_16x16",
        chw: (3, 16, 16),
        a: |c, y, x| x + y + c,
        b: |c, y, x| 255.0 - x - y - c,
        ssim: 0.09805997,
        per_channel: [0.09160153, 0.09804582, 0.10453255],
        psnr: Some(1.149653),
        sums: (12288, 183552),
    },
];

/// Builds the u8 image of a formula (clip to [0, 255], truncate), returns it in [0, 1] and its sum.
fn image(
    f: fn(f64, f64, f64) -> f64,
    (c, h, w): (usize, usize, usize),
    dtype: DType,
) -> (Tensor, u64) {
    let mut v = Vec::with_capacity(c * h * w);
    let mut sum = 0u64;
    for ci in 0..c {
        for y in 0..h {
            for x in 0..w {
                let p = f(ci as f64, y as f64, x as f64).clamp(0.0, 255.0).trunc() as u8;
                sum += p as u64;
                v.push(p as f64 / 255.0);
            }
        }
    }
    let t = Tensor::from_vec(v, (c, h, w), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    (t, sum)
}

fn check_cases(dtype: DType, tol: f64) {
    for case in CASES {
        let (a, sa) = image(case.a, case.chw, dtype);
        let (b, sb) = image(case.b, case.chw, dtype);
        assert_eq!((sa, sb), case.sums, "{}: pixel checksums", case.name);
        let ssim = Ssim::default();
        let got = ssim
            .mean(&a, &b)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (got - case.ssim).abs() < tol,
            "{}: ssim {got} vs {}",
            case.name,
            case.ssim
        );
        let pc = ssim
            .per_channel(&a, &b)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for (g, want) in pc[0].iter().zip(case.per_channel) {
            assert!(
                (g - want).abs() < tol,
                "{}: channel ssim {g} vs {want}",
                case.name
            );
        }
        let db = psnr(&a, &b, 1.0).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        match case.psnr {
            None => assert!(
                db.is_infinite(),
                "{}: psnr of identical images {db}",
                case.name
            ),
            Some(want) => assert!(
                (db - want).abs() < 1e-3,
                "{}: psnr {db} vs {want}",
                case.name
            ),
        }
    }
}

#[test]
fn ssim_and_psnr_match_scikit_image_f32() {
    check_cases(DType::F32, 1e-4);
}

#[test]
fn ssim_and_psnr_match_scikit_image_f64() {
    check_cases(DType::F64, 1e-6);
}

#[test]
fn batched_ssim_is_the_mean_of_single_images() {
    let (a1, _) = image(CASES[2].a, CASES[2].chw, DType::F32);
    let (b1, _) = image(CASES[2].b, CASES[2].chw, DType::F32);
    let (a2, _) = image(CASES[1].a, CASES[1].chw, DType::F32);
    let (b2, _) = image(CASES[1].b, CASES[1].chw, DType::F32);
    let a = Tensor::stack(&[&a1, &a2], 0).unwrap();
    let b = Tensor::stack(&[&b1, &b2], 0).unwrap();
    let per = Ssim::default()
        .per_image(&a, &b)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!((per[0] as f64 - CASES[2].ssim).abs() < 1e-4);
    assert!((per[1] as f64 - CASES[1].ssim).abs() < 1e-4);
    let mean = Ssim::default()
        .mean(&a, &b)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((mean - (per[0] + per[1]) / 2.0).abs() < 1e-6);
}

/// The gradient of the mixed loss with respect to the prediction, against central finite
/// differences in f64.
#[test]
fn mix_loss_gradient_matches_finite_differences() {
    let dev = Device::Cpu;
    let (target, _) = image(CASES[3].a, (2, 14, 13), DType::F64);
    let (start, _) = image(CASES[3].b, (2, 14, 13), DType::F64);
    // Off the kinks of |x| (some pixels of the two images are equal).
    let start = (start + 0.0013).unwrap();
    let var = Var::from_tensor(&start).unwrap();
    let loss = MixLoss::default();
    let l = loss.forward(var.as_tensor(), &target).unwrap();
    let grads = l.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let base = start.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let eps = 1e-6;
    for idx in [0usize, 17, 60, 101, 182, 250, 363] {
        let mut plus = base.clone();
        plus[idx] += eps;
        let mut minus = base.clone();
        minus[idx] -= eps;
        let f = |v: Vec<f64>| {
            let t = Tensor::from_vec(v, start.shape(), &dev).unwrap();
            loss.forward(&t, &target)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = (f(plus) - f(minus)) / (2.0 * eps);
        assert!(
            (fd - g[idx]).abs() < 1e-6 * (1.0 + fd.abs()),
            "grad[{idx}] {} vs fd {fd}",
            g[idx]
        );
    }
}
