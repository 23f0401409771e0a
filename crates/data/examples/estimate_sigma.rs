//! Measures the noise-level estimators on real images: `cargo run --release -p denoise-data
//! --example estimate_sigma -- <dataset folder> [images]`. Prints, per sigma, the mean estimate
//! and the mean and worst relative error of both estimators over the test split.

use denoise_data::estimate::{estimate_sigma, estimate_sigma_mad};
use denoise_data::noise::{add_gaussian, rng_for};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .ok_or("usage: estimate_sigma <dataset folder> [images]")?;
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let set = denoise_data::load_test(std::path::Path::new(dir), &Default::default())?;
    let n = n.min(set.n);
    println!(
        "| sigma | images | PCA mean | PCA mean error | PCA worst | MAD mean | MAD mean error |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for sigma in [5.0f64, 10.0, 15.0, 25.0, 35.0, 50.0] {
        let (mut sp, mut ep, mut wp, mut sm, mut em) = (0.0, 0.0, 0f64, 0.0, 0.0);
        for i in 0..n {
            let mut rng = rng_for(&[3, i as u64, sigma as u64]);
            let noisy = add_gaussian(&set.image_f32(i), (sigma / 255.0) as f32, &mut rng);
            let p = estimate_sigma(&noisy, (set.c, set.h, set.w)) * 255.0;
            let m = estimate_sigma_mad(&noisy, (set.c, set.h, set.w)) * 255.0;
            sp += p;
            sm += m;
            ep += (p - sigma).abs() / sigma;
            wp = wp.max((p - sigma).abs() / sigma);
            em += (m - sigma).abs() / sigma;
        }
        let k = n as f64;
        println!(
            "| {sigma} | {n} | {:.2} | {:.1} % | {:.1} % | {:.2} | {:.1} % |",
            sp / k,
            100.0 * ep / k,
            100.0 * wp,
            sm / k,
            100.0 * em / k
        );
    }
    Ok(())
}
