"""denoise's two networks in PyTorch, for side-by-side speed comparisons.

- seed-unet: DC blocks, max pooling, transposed convs, dropout 0.2/0.1, predicts the noise.
- cond-unet: residual blocks (GroupNorm, SiLU, the noise embedding added per channel, dropout
  0.1), average pooling, nearest upsampling, EDM's preconditioning.

Both use denoise's parameter names and shapes, so that `--twin-check` can load a checkpoint of
either into its twin and compare the outputs with `denoise generate`'s.

The same step as `denoise bench`: loss 0.84 (1 - SSIM) + 0.16 L1 (SSIM with an 11x11 Gaussian
window, valid region), Adam (lr 1e-3, weight decay 1e-4), synthetic batches at noise level 0.1.
Prints one JSON object.

    python3 unet_bench.py --arch seed-unet --device cpu --threads 2 --batch 64 --infer-batch 256
    python3 unet_bench.py --twin-check --denoise target/release/denoise \
        --checkpoint models/cond-unet-cifar10.safetensors
"""
import argparse
import json
import math
import os
import statistics
import struct
import subprocess
import tempfile
import time
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F


class DC(nn.Module):
    """Two 3x3 convolutions with ReLU, named as denoise's `conv1` / `conv2`."""

    def __init__(self, a, b):
        super().__init__()
        self.conv1 = nn.Conv2d(a, b, 3, padding=1)
        self.conv2 = nn.Conv2d(b, b, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x), inplace=True)), inplace=True)


class SeedUNet(nn.Module):
    """denoise's `seed-unet` (crates/model/src/seed_unet.rs): predicts the noise, returns x - it."""

    def __init__(self, c=3, b=64, mid_dropout=0.2, dec_dropout=0.1):
        super().__init__()
        self.enc1, self.enc2, self.enc3 = DC(c, b), DC(b, 2 * b), DC(2 * b, 4 * b)
        self.mid = DC(4 * b, 8 * b)
        self.up3, self.dec3 = nn.ConvTranspose2d(8 * b, 4 * b, 2, 2), DC(8 * b, 4 * b)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * b, 2 * b, 2, 2), DC(4 * b, 2 * b)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * b, b, 2, 2), DC(2 * b, b)
        self.out = nn.Conv2d(b, c, 1)
        self.d_mid, self.d_dec = nn.Dropout(mid_dropout), nn.Dropout(dec_dropout)

    def forward(self, x, sigma=None):  # blind: the noise level is not an input
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        m = self.d_mid(self.mid(F.max_pool2d(e3, 2)))
        d3 = self.d_dec(self.dec3(torch.cat([self.up3(m), e3], 1)))
        d2 = self.d_dec(self.dec2(torch.cat([self.up2(d3), e2], 1)))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return x - self.out(d1)


def group_count(c):
    """denoise's `norm::default_groups`: 32 where that leaves at least 4 channels per group,
    else the largest divisor of c not above c / 4."""
    cap = max(1, min(32, c // 4))
    return next(g for g in range(cap, 0, -1) if c % g == 0)


class GroupNormSiLU(nn.GroupNorm):
    def __init__(self, c, silu=True):
        super().__init__(group_count(c), c, eps=1e-5)
        self.silu = silu

    def forward(self, x):
        y = super().forward(x)
        return F.silu(y) if self.silu else y


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb_dim, dropout):
        super().__init__()
        self.norm1 = GroupNormSiLU(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = GroupNormSiLU(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x, emb):
        h = self.conv1(self.norm1(x)) + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(self.norm2(h)))
        return (h + (self.skip(x) if self.skip is not None else x)) * math.sqrt(0.5)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = GroupNormSiLU(c, silu=False)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)
        out = self.proj((v @ attn.transpose(1, 2)).reshape(n, c, h, w))
        return (x + out) * math.sqrt(0.5)


class CondUNet(nn.Module):
    """denoise's `cond-unet` (crates/model/src/cond_unet.rs), `D(x; sigma)` on the [0, 1] scale."""

    def __init__(self, c=3, b=64, mults=(1, 2, 2), blocks=1, attention=False, dropout=0.1,
                 emb_dim=256, sigma_data=0.5):
        super().__init__()
        half = emb_dim // 2
        self.register_buffer("freqs", torch.tensor(
            [100.0 ** (i / (max(half, 2) - 1)) for i in range(half)], dtype=torch.float32))
        self.sigma_data = sigma_data
        self.map = nn.ModuleList([nn.Linear(2 * half, emb_dim), nn.Linear(emb_dim, emb_dim)])
        self.stem = nn.Conv2d(c, b, 3, padding=1)
        ch, skips = b, []
        self.enc = nn.ModuleList()
        for m in mults:
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(ch, b * m, emb_dim, dropout))
                ch = b * m
                skips.append(ch)
            self.enc.append(level)
        self.mid = nn.ModuleDict({"0": ResBlock(ch, ch, emb_dim, dropout),
                                  "1": ResBlock(ch, ch, emb_dim, dropout)})
        if attention:
            self.mid["attn"] = Attention(ch)
        # Named by level, as denoise's `dec.{level}.{block}`, but run from the lowest level up.
        self.dec = nn.ModuleDict()
        for lvl in reversed(range(len(mults))):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(ch + skips.pop(), b * mults[lvl], emb_dim, dropout))
                ch = b * mults[lvl]
            self.dec[str(lvl)] = level
        self.out_norm = GroupNormSiLU(ch)
        self.out = nn.Conv2d(ch, c, 3, padding=1)
        self.levels = len(mults)

    def raw(self, x, c_noise):
        arg = c_noise[:, None] * self.freqs[None, :]
        emb = F.silu(self.map[1](F.silu(self.map[0](torch.cat([arg.cos(), arg.sin()], 1)))))
        h, skips = self.stem(x), []
        for lvl, level in enumerate(self.enc):
            for block in level:
                h = block(h, emb)
                skips.append(h)
            if lvl + 1 < self.levels:
                h = F.avg_pool2d(h, 2)
        h = self.mid["0"](h, emb)
        if "attn" in self.mid:
            h = self.mid["attn"](h)
        h = self.mid["1"](h, emb)
        for i, lvl in enumerate(reversed(range(self.levels))):
            for block in self.dec[str(lvl)]:
                h = block(torch.cat([h, skips.pop()], 1), emb)
            if i + 1 < self.levels:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.out(self.out_norm(h))

    def forward(self, noisy, sigma):
        sd = self.sigma_data
        s = (2 * sigma).clamp(min=2e-3)
        s2 = s * s + sd * sd
        col = lambda t: t[:, None, None, None]
        x = 2 * noisy - 1
        f = self.raw(x * col(s2.rsqrt()), s.log() / 4)
        d = x * col(sd * sd / s2) + f.float() * col(s * sd / s2.sqrt())
        return (d + 1) / 2


def build(arch, config=None):
    """The twin of `arch`, shaped by a checkpoint's `denoise.model` config (default: denoise's
    default shape)."""
    if config is None:
        return SeedUNet() if arch == "seed-unet" else CondUNet()
    if arch == "cond-unet":
        return CondUNet(c=config["channels"], b=config["base"], mults=config["mults"],
                        blocks=config["blocks"], attention=config["attention"],
                        dropout=config["dropout"], emb_dim=config["emb_dim"],
                        sigma_data=config["sigma_data"])
    if arch == "seed-unet":
        return SeedUNet(c=config["channels"], b=config["base"],
                        mid_dropout=config["mid_dropout"], dec_dropout=config["dec_dropout"])
    raise SystemExit(f"unknown architecture {arch}")


def gaussian_window(size=11, sigma=1.5, device="cpu"):
    r = (size - 1) / 2
    g = torch.exp(-((torch.arange(size, dtype=torch.float32) - r) ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(device)


def ssim(a, b, win):
    c = a.shape[1]
    k = win.numel()
    wx = win.view(1, 1, 1, k).repeat(c, 1, 1, 1)
    wy = win.view(1, 1, k, 1).repeat(c, 1, 1, 1)
    f = lambda t: F.conv2d(F.conv2d(t, wx, groups=c), wy, groups=c)
    mu_a, mu_b = f(a), f(b)
    va = f(a * a) - mu_a ** 2
    vb = f(b * b) - mu_b ** 2
    cov = f(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return s.mean()


def stats(v):
    return {"min": min(v), "median": statistics.median(v), "max": max(v)}


def read_checkpoint(path):
    """A denoise checkpoint (safetensors): its `denoise.model` config and its tensors, in f32."""
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F64": torch.float64}
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = memoryview(raw)[8 + n:]
    tensors = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        v = torch.frombuffer(bytearray(data[a:b]), dtype=dtypes[t["dtype"]])
        tensors[name] = v.reshape(t["shape"]).float()
    return json.loads(meta["denoise.model"]), tensors


def write_png(path, rgb):
    """rgb: (h, w, 3) integers in 0..65535, written as a 16-bit RGB PNG."""
    h, w, _ = rgb.shape
    rows = b"".join(b"\0" + struct.pack(f">{3 * w}H", *rgb[y].flatten().tolist()) for y in range(h))
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                                + struct.pack(">I", zlib.crc32(kind + body)))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def read_png(path):
    """A 16-bit RGB PNG, not interlaced (what denoise writes for such an input): (h, w, 3)."""
    with open(path, "rb") as f:
        raw = f.read()
    pos, idat = 8, b""
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        kind, body = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, color, interlace) != (16, 2, 0):
                raise SystemExit(f"{path}: expected a 16-bit RGB PNG, got depth {depth}, color type {color}")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    data, stride, bpp = zlib.decompress(idat), 6 * w, 6
    out, prev = [], bytearray(stride)
    for y in range(h):
        kind, line = data[y * (stride + 1)], bytearray(data[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out.append(bytes(line))
        prev = line
    rows = b"".join(out)
    return torch.tensor(struct.unpack(f">{3 * w * h}H", rows), dtype=torch.int64).reshape(h, w, 3)


def twin_check(a):
    """Loads a checkpoint into its PyTorch twin, denoises a noisy test image with it and with
    `denoise generate`, and compares the two results in 16-bit levels (65535 = 1)."""
    try:
        config, tensors = read_checkpoint(a.checkpoint)
    except (OSError, ValueError, KeyError, struct.error) as e:
        raise SystemExit(f"{a.checkpoint}: not a denoise checkpoint ({e!r})")
    arch = config.pop("arch", "cond-unet")
    model = build(arch, config)
    # The weights denoise loads: the moving average (`ema.*`) where the checkpoint has it.
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    ours = {k: v for k, v in model.state_dict().items() if k != "freqs"}
    if set(state) != set(ours) or any(state[k].shape != ours[k].shape for k in ours):
        raise SystemExit(f"the twin's parameters differ from {a.checkpoint}'s: "
                         f"{sorted(set(state) ^ set(ours))[:5]}")
    model.load_state_dict(state, strict=False)
    model.eval()
    h, w = 48, 64  # not square, and two images' worth of CIFAR-10 pixels
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                          indexing="ij")
    clean = torch.stack([0.5 + 0.4 * torch.sin(x / 5) * torch.cos(y / 7),
                         0.5 + 0.3 * torch.cos((x + y) / 9),
                         (x / w + y / h) / 2], -1)
    g = torch.Generator().manual_seed(0)
    noisy = (clean + a.sigma / 255 * torch.randn(clean.shape, generator=g, dtype=torch.float64))
    noisy = (noisy.clamp(0, 1) * 65535).round().long()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "noisy.png"), os.path.join(tmp, "ours.png")
        write_png(src, noisy)
        done = subprocess.run([a.denoise, "generate", "--device", "cpu", "--model", a.checkpoint,
                               "--image", src, "--sigma", str(a.sigma), "--out", dst],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"denoise generate failed:\n{done.stderr}")
        theirs = read_png(dst)
    inp = noisy.permute(2, 0, 1)[None].float() / 65535
    with torch.no_grad():
        twin = model(inp, torch.full((1,), a.sigma / 255))[0].permute(1, 2, 0)
    twin = (twin.clamp(0, 1) * 65535).round().long()
    diff = (twin - theirs).abs()
    result = {"checkpoint": a.checkpoint, "arch": arch, "weights": prefix.rstrip("."), "image": [h, w], "sigma": a.sigma,
              "levels": 65535, "max_level_diff": int(diff.max()), "pixels_differing": float((diff > 0).float().mean()),
              "params": sum(p.numel() for p in model.parameters())}
    print(json.dumps(result))
    # f32 rounding differences stay below 1e-5 (under one level); a different network does not.
    if result["max_level_diff"] > 2:
        raise SystemExit(f"the PyTorch twin and denoise differ by up to {result['max_level_diff']} of 65535 levels")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=["seed-unet", "cond-unet"], default="seed-unet")
    p.add_argument("--twin-check", action="store_true",
                   help="load --checkpoint (either network) into its twin and compare the twin's "
                        "output with `denoise generate`'s")
    p.add_argument("--denoise", default="target/release/denoise", help="the denoise binary (--twin-check)")
    p.add_argument("--checkpoint", default="models/cond-unet-cifar10.safetensors")
    p.add_argument("--sigma", type=float, default=25.0, help="--twin-check's noise level, 0..255")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--infer-batch", type=int, default=256)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions on CUDA")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark: time cuDNN's algorithms per shape (as denoise does)")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                   help="training and inference under autocast to this dtype (weights, "
                        "optimizer and loss stay f32, as in denoise's mixed precision)")
    a = p.parse_args()
    if a.twin_check:
        return twin_check(a)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    torch.manual_seed(0)
    model = build(a.arch).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    win = gaussian_window(device=dev)
    clean = torch.rand(a.batch, 3, a.size, a.size, device=dev)
    noisy = clean + 0.1 * torch.randn_like(clean)
    infer = torch.rand(a.infer_batch, 3, a.size, a.size, device=dev)
    sigma = torch.full((a.batch,), 0.1, device=dev)
    infer_sigma = torch.full((a.infer_batch,), 0.1, device=dev)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    half = {"bf16": torch.bfloat16}.get(a.dtype)
    autocast = lambda: torch.autocast(dev.type, dtype=half or torch.float32, enabled=half is not None)

    def train_step(lap=lambda i: None):
        """One step; lap(i) after phase i (forward, loss, backward, optimizer)."""
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(noisy, sigma)
        out = out.float()
        lap(0)
        loss = 0.84 * (1 - ssim(out, clean, win)) + 0.16 * F.l1_loss(out, clean)
        lap(1)
        loss.backward()
        lap(2)
        opt.step()
        lap(3)
        return loss

    def infer_step():
        model.eval()
        with torch.no_grad(), autocast():
            return model(infer, infer_sigma)

    for _ in range(2):
        train_step(); infer_step()
    sync()
    tr, inf = [], []
    for _ in range(a.repeats):
        t = time.perf_counter()
        for _ in range(a.steps):
            train_step()
        sync()
        tr.append(a.steps * a.batch / (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(a.steps):
            infer_step()
        sync()
        inf.append(a.steps * a.infer_batch / (time.perf_counter() - t))
    # A training step phase by phase, in a round of its own, synchronised after each phase (as
    # denoise bench's train_phases_ms).
    ms = [0.0] * 4
    for _ in range(a.steps):
        t = [time.perf_counter()]

        def lap(i):
            sync()
            now = time.perf_counter()
            ms[i] += (now - t[0]) * 1e3
            t[0] = now

        train_step(lap)
    phases = {k: v / a.steps for k, v in zip(["forward_ms", "loss_ms", "backward_ms", "optimizer_ms"], ms)}
    print(json.dumps({
        "framework": "pytorch", "arch": a.arch, "version": torch.__version__, "device": str(dev),
        "threads": torch.get_num_threads(), "params": sum(p.numel() for p in model.parameters()),
        "train_batch": a.batch, "infer_batch": a.infer_batch, "tf32": a.tf32, "cudnn_benchmark": a.cudnn_benchmark,
        "dtype": a.dtype,
        "train_img_per_s": stats(tr), "infer_img_per_s": stats(inf),
        "train_phases_ms": phases,
    }))


if __name__ == "__main__":
    main()
