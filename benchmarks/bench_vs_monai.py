"""Throughput of the tiled engine against MONAI's sliding_window_inference, same run.

Both get the same model (the same weights, in eval mode: each gets its own copy), the same
tile (the model's input size), the same overlap, the same batch size and the same in-memory
image at the model's pixel size (no reading, no resampling), so both run the same tile grid.
MONAI blends with its Gaussian window (mode="gaussian") under torch.inference_mode and is
given a channels-last copy of the model (the conversion any user can do); the engine runs as
the plugin and the CLI run it (tissue detection on), once per engine variant asked for.
Engine variants and MONAI alternate, ``--repeats`` rounds, the order rotating each round
(the machine is shared and noisy); each figure is the median of its runs, and the speed-up
is MONAI's median time over the engine's.

**CPU** (the default): ``swin_micro_upernet``, batch 8, fp32 unless a variant says otherwise,
3072x3072 kidney phantoms, one all tissue and one with ~40% glass::

    .venv/bin/python benchmarks/bench_vs_monai.py --repeats 3 \\
        --variants default,bf16,compile

**CUDA**: the full Swin-T + UPerNet at 768 px (``swin_tiny_upernet``), bf16 autocast for both,
batch 16, 12288x12288 images (a 2048 px phantom repeated: all tissue, and ~40% glass); MONAI's
image and output stay on the GPU (the upload is not timed); the engine's probability is
returned to the host, as a user gets it. The model alone on random batches runs in the same
process, so "% of model alone" compares like with like::

    python benchmarks/bench_vs_monai.py --device cuda --repeats 3 --variants default,host-path
    python benchmarks/bench_vs_monai.py --device cuda --repeats 3 --cudnn-benchmark \
        --variants default,compile    # the measured choices of issue 24 on a GPU

Runs from a plain checkout (the repository root is put on ``sys.path``; nothing needs
installing but wheels): torch (a CUDA build for ``--device cuda``), timm, numpy, scipy,
pandas, tifffile, zarr, scikit-image and monai (>= 1.3; this package's ``bench`` extra).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a plain checkout: no install

import numpy as np
import torch
from _common import DATA

VARIANTS: dict[str, dict] = {
    "default": {},
    "bf16": {"precision": "bf16"},
    "fp32": {"precision": "fp32"},
    "compile": {"compile": True},
    "compile-bf16": {"compile": True, "precision": "bf16"},
    "device-path": {"device_path": True},
    "host-path": {"device_path": False},
    "one-stream": {"streams": 1},
}
DEFAULTS = {  # per device: model, image side, batch size
    "cpu": ("swin_micro_upernet", 3072, 8),
    "cuda": ("swin_tiny_upernet", 12288, 16),
}


def phantom(size: int, tissue_fraction: float) -> np.ndarray:
    """A kidney phantom at 0.4 um/px, cached in benchmarks/_data; sides above 4096 px repeat
    one of 2048 px (a phantom that large takes long to make)."""
    from training.synthetic import make_phantom

    side = size if size <= 4096 else 2048
    path = DATA / f"kidney_{side}_tissue{round(tissue_fraction * 100)}.npy"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        image, _, _ = make_phantom("kidney", size=side, seed=0, tissue_fraction=tissue_fraction)
        np.save(path, image)
    image = np.load(path)
    if side < size:
        reps = -(-size // side)
        image = np.tile(image, (reps, reps, 1))[:size, :size]
    return image


def background_share(image: np.ndarray) -> float:
    """Share of pixels that are bare glass (within a few levels of the glass intensity)."""
    return float((image[::4, ::4].astype(np.int16).min(axis=-1) >= 236).mean())


def grid_tiles(size: int, tile: int, overlap: float) -> int:
    from training.inference.tiling import tile_count

    stride = max(1, round(tile * (1 - overlap)))
    return tile_count(size, tile, stride) ** 2


class Monai:
    """MONAI's sliding window over one image with a channels-last copy of the model."""

    def __init__(self, model: torch.nn.Module, meta: dict, args: argparse.Namespace) -> None:
        self.model = copy.deepcopy(model).to(args.device, memory_format=torch.channels_last)
        self.tile, self.args = int(meta["tile_size"]), args
        self.mean = torch.tensor(meta["mean"], device=args.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(meta["std"], device=args.device).view(1, 3, 1, 1) * 255

    def __call__(self, image: np.ndarray) -> tuple[float, np.ndarray | torch.Tensor]:
        from monai.inferers import sliding_window_inference

        device = torch.device(self.args.device)
        pixels = torch.from_numpy(image).to(device)  # on the GPU before the clock starts
        synchronize(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.args.bf16)
        start = time.perf_counter()
        with torch.inference_mode(), autocast:
            x = (pixels.permute(2, 0, 1)[None].float() - self.mean) / self.std
            prob = sliding_window_inference(
                x,
                roi_size=(self.tile, self.tile),
                sw_batch_size=self.args.batch_size,
                predictor=lambda t: torch.sigmoid(self.model(t).float()),
                overlap=self.args.overlap,
                mode="gaussian",
            )
        if device.type == "cpu":
            prob = prob[0, 0].numpy()  # the CPU figure always included this
        synchronize(device)  # a GPU's output stays there
        return time.perf_counter() - start, prob


def engine(member, args: argparse.Namespace, overrides: dict) -> Callable:
    from training.inference import run

    def segment(image: np.ndarray) -> tuple[float, np.ndarray, int]:
        start = time.perf_counter()
        result = run(
            image,
            member,
            "kidney",
            pixel_size_um=0.4,
            overlap=args.overlap,
            batch_size=args.batch_size,
            device=args.device,
            memory_limit_mb=8192,  # in memory, as MONAI's: a 12288 px map is 600 MB
            **overrides,
        )
        probability = np.asarray(result.probability)  # on the host, as a user gets it
        return time.perf_counter() - start, probability, result.tiles_run

    return segment


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_alone(model: torch.nn.Module, tile: int, args: argparse.Namespace) -> float:
    """Tiles/s of the model alone on random batches, channels-last, as the engine runs it."""
    device = torch.device(args.device)
    model = copy.deepcopy(model).to(device, memory_format=torch.channels_last)
    x = torch.randn(args.batch_size, 3, tile, tile, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.inference_mode(), autocast:
        for _ in range(3):
            model(x)
        synchronize(device)
        steps, start = 0, time.perf_counter()
        while steps < 5 or time.perf_counter() - start < args.model_seconds:
            model(x)
            steps += 1
        synchronize(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", help="registry name (default: per device, see above)")
    parser.add_argument("--size", type=int, help="image side in px (default: per device)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=1, help="rounds, order rotating")
    parser.add_argument("--variants", default="default", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--images", default="glass,tissue", help="glass (~40%%), tissue")
    parser.add_argument("--model-seconds", type=float, default=10.0)
    parser.add_argument("--model-alone", action="store_true", help="also on the CPU")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark on"
    )
    args = parser.parse_args()
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"--device cuda: torch {torch.__version__} finds no CUDA device (built for CUDA "
            f"{torch.version.cuda}); run on a GPU machine with a CUDA build of torch"
        )
    torch.backends.cudnn.benchmark = args.cudnn_benchmark  # for every runner alike
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    default_model, default_size, default_batch = DEFAULTS[args.device.type]
    args.model = args.model or default_model
    args.size = args.size or default_size
    args.batch_size = args.batch_size or default_batch
    args.bf16 = args.device.type == "cuda"  # MONAI and model alone: as the engine's default

    from training.models import build_model
    from training.models.checkpoint import default_meta
    from training.models.ensemble import Member

    torch.manual_seed(0)
    model = build_model(args.model).eval()
    meta = default_meta(model)
    tile = args.tile = int(meta["tile_size"])
    member = Member(copy.deepcopy(model), meta, name=args.model)
    runners: dict[str, Callable] = {
        f"engine {v}": engine(member, args, VARIANTS[v]) for v in variants
    }
    runners["MONAI (channels-last model)"] = Monai(model, meta, args)
    device_name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    print(
        f"{args.model}, tile {tile}, overlap {args.overlap}, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}, {device_name}, "
        f"{'bf16 autocast' if args.bf16 else 'fp32 unless the variant says bf16'}"
        + (", cudnn.benchmark" if args.cudnn_benchmark else "")
    )
    # one tile row with a full batch and a short one: the two shapes torch.compile meets
    stride = max(1, round(tile * (1 - args.overlap)))
    warm = phantom(args.size, 1.0)[:tile, : tile + stride * (args.batch_size + 2)]
    for name, runner in runners.items():  # warm-up: kernels, and torch.compile's compile
        start = time.perf_counter()
        runner(warm)
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    alone = None
    if args.model_alone or args.device.type == "cuda":
        alone = model_alone(model, tile, args)
        print(f"model alone, random batches of {args.batch_size}: {alone:.1f} tiles/s")
    labels = {"glass": ("~40% glass", 0.6), "tissue": ("all tissue", 1.0)}
    for key in args.images.split(","):
        label, fraction = labels[key]
        image = phantom(args.size, fraction)
        times: dict[str, list[float]] = {name: [] for name in runners}
        order = list(runners)
        tiles_run, outputs = 0, {}
        for round_ in range(args.repeats):
            for name in itertools.islice(itertools.cycle(order), round_, round_ + len(order)):
                seconds, probability, *rest = runners[name](image)
                times[name].append(seconds)
                outputs[name] = probability
                tiles_run = rest[0] if rest else tiles_run
        report(args, image, label, (times, outputs), tiles_run, alone)


def report(
    args: argparse.Namespace,
    image: np.ndarray,
    label: str,
    results: tuple[dict, dict],
    tiles_run: int,
    alone: float | None,
) -> None:
    """Median times, tiles/s, speed-ups over MONAI and (on CUDA) shares of the model alone."""
    times, outputs = results
    grid = grid_tiles(args.size, args.tile, args.overlap)
    monai_name = "MONAI (channels-last model)"
    monai = statistics.median(times[monai_name])
    print(
        f"{args.size}x{args.size} {label} (glass {background_share(image):.0%}), "
        f"{grid} grid tiles, engine runs {tiles_run}; {args.repeats} round(s), medians:"
    )
    print(f"  {monai_name}: {monai:.2f} s {fmt(times[monai_name])}, {grid / monai:.1f} tiles/s")
    reference = outputs[monai_name]
    if isinstance(reference, torch.Tensor):
        reference = reference[0, 0].float().cpu().numpy()
    for name, seconds in times.items():
        if name == monai_name:
            continue
        ours = statistics.median(seconds)
        tissue = outputs[name] > 0
        difference = float(np.abs(outputs[name] - reference)[tissue].mean())
        print(
            f"  {name}: {ours:.2f} s {fmt(seconds)}, {tiles_run / ours:.1f} tiles/s "
            f"({grid / ours:.1f} grid tiles/s); speed-up over MONAI {monai / ours:.2f}x; "
            f"mean |difference| on tissue {difference:.4f}"
            + (f"; {tiles_run / ours / alone:.0%} of the model alone" if alone else "")
        )


def fmt(seconds: list[float]) -> str:
    return "[" + ", ".join(f"{s:.2f}" for s in seconds) + "]"


if __name__ == "__main__":
    main()
