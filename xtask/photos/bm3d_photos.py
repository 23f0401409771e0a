#!/usr/bin/env python3
"""BM3D (colour, known sigma) on noisy copies of a folder of photos, the baseline of issue 20.

For each photo of --data and each sigma of --sigmas, adds Gaussian noise of that sigma (0-255
scale; numpy's generator seeded by --seed, the photo's index and the sigma, so every run and
every tool sees the same noise), clips and rounds it to 8 bits, and writes it to
NOISY/sigma<S>/<name>.png, so that `denoise generate --image NOISY/sigma<S>/` can be scored on
exactly the same inputs with --score. Then runs `bm3d.bm3d_rgb` (the `bm3d` PyPI package, its
default profile, sigma given) and prints PSNR / SSIM (scikit-image's, on 0-255 images) and
seconds per megapixel, as a table and as JSON (--json).

With --unclipped the noise is left as it is, not clipped or rounded (the standard protocol of
published results, and that of `denoise eval`): BM3D gets the float image, nothing is written
and --score is refused (an 8-bit file cannot hold such an image).

  python3 xtask/photos/bm3d_photos.py --data ../data/photos/test --sigmas 25,50 \
      --noisy ../data/photos-noisy --json bm3d.json
  python3 xtask/photos/bm3d_photos.py --data ../data/photos/test --sigmas 25,50 \
      --noisy ../data/photos-noisy --score cleaned      # cleaned/sigma<S>/<name>.png, no BM3D

Needs: pip install bm3d scikit-image pillow
"""
import argparse
import json
import pathlib
import sys
import time


def fail(msg):
    print(f"bm3d_photos: {msg}", file=sys.stderr)
    sys.exit(1)


def sigmas_of(text):
    try:
        out = [float(s) for s in text.split(",")]
    except ValueError:
        fail(f"--sigmas {text!r}: expected numbers separated by commas, such as 25,50")
    if not out or any(not (0 < s <= 255) for s in out):
        fail(f"--sigmas {text!r}: expected levels above 0 and at most 255")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder of clean photos (PNG, JPEG, ...)")
    ap.add_argument("--sigmas", default="25,50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noisy", help="folder for the noisy inputs (needed unless --unclipped)")
    ap.add_argument("--unclipped", action="store_true",
                    help="leave the noisy values unclipped and unrounded, as `denoise eval` does")
    ap.add_argument("--limit", type=int, default=0, help="only the first N photos (0: all)")
    ap.add_argument("--score", help="score this folder's sigma<S>/<name>.png instead of running BM3D")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.unclipped and args.score:
        fail("--score reads 8-bit files, whose noisy inputs are clipped: leave out --unclipped")
    if not args.unclipped and not args.noisy:
        fail("--noisy: expected a folder for the noisy inputs (or --unclipped)")
    if args.limit < 0:
        fail(f"--limit {args.limit}: expected 0 (all photos) or a positive count")
    try:
        import numpy as np
        from PIL import Image
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
        if not args.score:
            import bm3d
    except ImportError as e:
        fail(f"needs {e.name}: pip install bm3d scikit-image pillow")

    sigmas = sigmas_of(args.sigmas)
    data = pathlib.Path(args.data)
    if not data.is_dir():
        fail(f"--data {data}: not a folder")
    files = sorted(p for p in data.iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"))
    if args.limit:
        files = files[: args.limit]
    if not files:
        fail(f"--data {data}: no images")
    rows = []
    for i, f in enumerate(files):
        clean = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64)
        mp = clean.shape[0] * clean.shape[1] / 1e6
        for s in sigmas:
            rng = np.random.default_rng([args.seed, i, int(round(s * 100))])
            noisy = clean + rng.normal(0.0, s, clean.shape)
            if not args.unclipped:
                noisy = np.clip(np.round(noisy), 0, 255)
                out = pathlib.Path(args.noisy) / f"sigma{s:g}" / f"{f.stem}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(noisy.astype(np.uint8)).save(out)
            if args.score:
                path = pathlib.Path(args.score) / f"sigma{s:g}" / f"{f.stem}.png"
                if not path.is_file():
                    fail(f"--score: no {path}")
                den = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
                if den.shape != clean.shape:
                    fail(f"--score: {path} is {den.shape[1]}x{den.shape[0]}, expected "
                         f"{clean.shape[1]}x{clean.shape[0]} as {f}")
                secs = None
            else:
                t = time.perf_counter()
                den = bm3d.bm3d_rgb(noisy / 255.0, s / 255.0) * 255.0
                secs = time.perf_counter() - t
                den = np.clip(np.round(den), 0, 255)
            row = {
                "photo": f.name, "sigma": s, "megapixels": round(mp, 3),
                "psnr_noisy": peak_signal_noise_ratio(clean, noisy, data_range=255),
                "psnr": peak_signal_noise_ratio(clean, den, data_range=255),
                "ssim": structural_similarity(clean, den, data_range=255, channel_axis=2),
                "seconds_per_megapixel": None if secs is None else secs / mp,
            }
            rows.append(row)
            spm = "" if secs is None else f"  {secs / mp:7.1f} s/MP"
            print(f"sigma {s:4g}  {f.name:40s} noisy {row['psnr_noisy']:6.2f}  "
                  f"PSNR {row['psnr']:6.2f}  SSIM {row['ssim']:.4f}{spm}", flush=True)
    for s in sigmas:
        r = [x for x in rows if x["sigma"] == s]
        print(f"mean sigma {s:g}: PSNR {np.mean([x['psnr'] for x in r]):.2f} dB, "
              f"SSIM {np.mean([x['ssim'] for x in r]):.4f} over {len(r)} photos")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"tool": args.score or "bm3d (bm3d_rgb, known sigma)", "seed": args.seed,
             "noisy": "unclipped" if args.unclipped else "clipped and rounded to 8 bits",
             "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
