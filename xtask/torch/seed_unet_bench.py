"""The seed-unet training step and inference in PyTorch, for side-by-side speed comparisons.

Same network (DC blocks, max pooling, transposed convs, dropout 0.2/0.1, predicts the noise),
same loss (0.84 (1 - SSIM) + 0.16 L1, SSIM with an 11x11 Gaussian window, valid region), same
optimizer (Adam, lr 1e-3, weight decay 1e-4), synthetic batches. Prints one JSON object.

    python3 seed_unet_bench.py --device cpu --threads 2 --batch 64 --infer-batch 256
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def dc(a, b):
    return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(b, b, 3, padding=1), nn.ReLU(inplace=True))


class SeedUNet(nn.Module):
    def __init__(self, c=3, b=64):
        super().__init__()
        self.enc1, self.enc2, self.enc3 = dc(c, b), dc(b, 2 * b), dc(2 * b, 4 * b)
        self.mid = dc(4 * b, 8 * b)
        self.up3, self.dec3 = nn.ConvTranspose2d(8 * b, 4 * b, 2, 2), dc(8 * b, 4 * b)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * b, 2 * b, 2, 2), dc(4 * b, 2 * b)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * b, b, 2, 2), dc(2 * b, b)
        self.out = nn.Conv2d(b, c, 1)
        self.d_mid, self.d_dec = nn.Dropout(0.2), nn.Dropout(0.1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        m = self.d_mid(self.mid(F.max_pool2d(e3, 2)))
        d3 = self.d_dec(self.dec3(torch.cat([self.up3(m), e3], 1)))
        d2 = self.d_dec(self.dec2(torch.cat([self.up2(d3), e2], 1)))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return x - self.out(d1)


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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--infer-batch", type=int, default=256)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions on CUDA")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                   help="training and inference under autocast to this dtype (weights, "
                        "optimizer and loss stay f32, as in denoise's mixed precision)")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.manual_seed(0)
    model = SeedUNet().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    win = gaussian_window(device=dev)
    clean = torch.rand(a.batch, 3, a.size, a.size, device=dev)
    noisy = clean + 0.1 * torch.randn_like(clean)
    infer = torch.rand(a.infer_batch, 3, a.size, a.size, device=dev)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    half = {"bf16": torch.bfloat16}.get(a.dtype)
    autocast = lambda: torch.autocast(dev.type, dtype=half or torch.float32, enabled=half is not None)

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(noisy)
        out = out.float()
        loss = 0.84 * (1 - ssim(out, clean, win)) + 0.16 * F.l1_loss(out, clean)
        loss.backward()
        opt.step()
        return loss

    def infer_step():
        model.eval()
        with torch.no_grad(), autocast():
            return model(infer)

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
    print(json.dumps({
        "framework": "pytorch", "version": torch.__version__, "device": str(dev),
        "threads": torch.get_num_threads(), "params": sum(p.numel() for p in model.parameters()),
        "train_batch": a.batch, "infer_batch": a.infer_batch, "tf32": a.tf32,
        "dtype": a.dtype,
        "train_img_per_s": stats(tr), "infer_img_per_s": stats(inf),
    }))


if __name__ == "__main__":
    main()
