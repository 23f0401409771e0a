#!/usr/bin/env python3
"""Rebuilds the photo set of docs/data.md from Debian's wallpaper packages.

Reads manifest.tsv (beside this file): one photograph a line, with its split (train / val /
test, fixed by file before anything was trained), the Debian package that ships it, its path
inside the package, its SHA-256 and its licence. Downloads those packages with `apt-get
download` (no install, no root needed for that step once `apt-get update` has run), extracts
them with `dpkg-deb -x`, checks every listed file's hash, and writes each photo as a PNG into
OUT/train, OUT/val and OUT/test, scaled down (Lanczos) so that its longer side is at most
--max-side pixels. Nothing here is ever committed: only the manifest is.

Usage: python3 xtask/photos/collect.py --out ../data/photos [--max-side 1600] [--debs DIR]
Needs Pillow (`pip install pillow`).
"""
import argparse
import csv
import hashlib
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent


def fail(msg):
    print(f"photos: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder to write train/ val/ test/ into")
    ap.add_argument("--max-side", type=int, default=1600,
                    help="longer side of every photo after scaling down (0: keep the size)")
    ap.add_argument("--debs", help="folder of already downloaded .deb files (default: download)")
    args = ap.parse_args()
    if args.max_side < 0:
        fail(f"--max-side {args.max_side}: expected 0 (keep the size) or a positive side")
    try:
        from PIL import Image
    except ImportError:
        fail("needs Pillow: pip install pillow")

    with open(HERE / "manifest.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    packages = sorted({r["package"] for r in rows})
    out = pathlib.Path(args.out)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        debs = pathlib.Path(args.debs) if args.debs else tmp / "debs"
        if not args.debs:
            debs.mkdir()
            r = subprocess.run(["apt-get", "download", *packages], cwd=debs)
            if r.returncode != 0:
                fail(f"apt-get download {' '.join(packages)} failed (run `apt-get update` first)")
        root = tmp / "root"
        for p in packages:
            found = sorted(debs.glob(f"{p}_*.deb"))
            if not found:
                fail(f"{debs}: no {p}_*.deb")
            if subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(root)]).returncode != 0:
                fail(f"{found[-1]}: dpkg-deb could not extract it (expected a Debian package)")

        written = {"train": 0, "val": 0, "test": 0}
        for r in rows:
            src = root / r["path"].lstrip("/")
            if not src.is_file():
                fail(f"{r['package']} holds no {r['path']}")
            digest = hashlib.sha256(src.read_bytes()).hexdigest()
            if digest != r["sha256"]:
                fail(f"{r['path']} of {r['package']}: sha256 {digest}, expected {r['sha256']} "
                     "(another version of the package: update manifest.tsv)")
            im = Image.open(src).convert("RGB")
            if args.max_side and max(im.size) > args.max_side:
                s = args.max_side / max(im.size)
                im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
            # One name per photo: plasma's wallpapers are all called 2560x1600.jpg.
            parts = pathlib.PurePosixPath(r["path"]).parts
            stem = parts[-4] if parts[-3] == "contents" else pathlib.PurePosixPath(r["path"]).stem
            dst = out / r["split"] / f"{stem}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            part = dst.with_suffix(".png.part")
            im.save(part, format="PNG")
            part.replace(dst)
            written[r["split"]] += 1
    print(f"photos: {sum(written.values())} photos into {out}: "
          + ", ".join(f"{k} {v}" for k, v in written.items()))


if __name__ == "__main__":
    main()
