"""Training steps per second of a model alone: forward with deep supervision, BCE + Dice loss,
backward, clipping and AdamW on random tensors (no data loading), bf16 autocast on CUDA as in
``training.trainer``. The ceiling that the real command's samples/s is measured against.

    python benchmarks/bench_train_step.py --device cuda --model swin_tiny_upernet --tile 768
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch import nn

from training.losses import LossConfig, SegmentationLoss
from training.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="swin_tiny_upernet")
    parser.add_argument("--tile", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    device = torch.device(args.device)
    model = build_model(args.model).to(device).train()
    criterion = SegmentationLoss(LossConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch_size, 3, args.tile, args.tile, device=device)
    target = (torch.rand(args.batch_size, 1, args.tile, args.tile, device=device) > 0.7).float()
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            logits, aux = model.forward_with_aux(images)
        loss, _ = criterion(logits, target, aux)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: kernels, cuDNN autotuning, optimizer state
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    memory = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if cuda else ""
    print(
        f"{args.model} at {args.tile} px, batch {args.batch_size}, "
        f"{'bf16 autocast' if cuda else 'fp32'}, {name}: "
        f"{args.steps * args.batch_size / seconds:.1f} samples/s (model step alone{memory})"
    )


if __name__ == "__main__":
    main()
