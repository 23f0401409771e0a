//! Which vector instructions the CPU kernels are compiled for, chosen once at run time.
//!
//! The hot loops of the CPU ops (the Winograd transforms, the fused GroupNorm) are written as
//! plain Rust over small arrays and compiled more than once: for the baseline target (SSE2, 4
//! f32 wide), for AVX2 + FMA (8 wide) and for AVX-512 (16 wide), each copy entered through
//! [`Level::get`]. `DENOISE_SIMD=avx2` (or `sse2`) in the environment caps the level, to compare
//! the copies on one machine. The kernels pick their lane counts from it, and give the same bits
//! at every level (`every_simd_level_gives_the_same_bits` in `winograd` and `norm`).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The widest instruction set the kernels use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// The baseline target: SSE2 on x86-64, or another architecture.
    Baseline,
    /// AVX2 and FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F on top of AVX2 and FMA.
    Avx512,
}

/// A cap below the CPU's level, for tests that compare the copies (`Level as u8`).
static CAP: AtomicU8 = AtomicU8::new(Level::Avx512 as u8);

impl Level {
    /// This CPU's level, capped by `DENOISE_SIMD` if set (both detected once).
    pub(crate) fn get() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        let level = *LEVEL.get_or_init(|| {
            let cap = match std::env::var("DENOISE_SIMD").as_deref() {
                Ok("sse2") | Ok("baseline") => Level::Baseline,
                Ok("avx2") => Level::Avx2,
                _ => Level::Avx512,
            };
            detect().min(cap)
        });
        match CAP.load(Ordering::Relaxed) {
            0 => Level::Baseline,
            1 => level.min(Level::Avx2),
            _ => level,
        }
    }

    /// The levels this CPU has, lowest first.
    #[cfg(test)]
    pub(crate) fn all() -> Vec<Level> {
        [Level::Baseline, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|l| *l <= detect())
            .collect()
    }

    /// Runs `f` with the kernels capped at `self` (tests only; callers hold [`TEST_LOCK`]).
    #[cfg(test)]
    pub(crate) fn run<R>(self, f: impl FnOnce() -> R) -> R {
        CAP.store(self as u8, Ordering::Relaxed);
        let r = f();
        CAP.store(Level::Avx512 as u8, Ordering::Relaxed);
        r
    }
}

/// Serialises the tests that cap the level.
#[cfg(test)]
pub(crate) static TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma")) {
        Level::Baseline
    } else if has!("avx512f") {
        Level::Avx512
    } else {
        Level::Avx2
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Baseline
}
