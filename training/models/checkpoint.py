"""One self-describing checkpoint file: weights plus everything needed to use them.

Loading never executes code from the file: ``torch.load(weights_only=True)`` only rebuilds
tensors and plain containers, and the model is rebuilt from the registry by name. The file's
architecture arguments pass the registry's checks (architecture numbers only: no other model,
no file to load) and its metadata is checked field by field before the model is used.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.atomic import atomic_path
from training.data.catalog import ORGANS
from training.models.registry import build_from_config, list_models, resolve_config
from training.slides import PLAUSIBLE_UM_PER_PX

FORMAT = "napari-ftu-checkpoint"
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A tile's side in px: a batch of TTA views of larger tiles does not fit a GPU, and the
# engine's blend band is a tile high and a slide wide.
MAX_TILE_SIZE = 4096


KINDS = {  # what a checkpoint holds, as error messages name it
    "segmenter": "a segmentation model",
    "refiner": "a boundary refiner (BPR: give it as --refine or a manifest's 'refiner')",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason."""


def default_meta(model: nn.Module) -> dict[str, Any]:
    """The metadata a checkpoint gets when the caller gives none."""
    return _default_meta(getattr(model, "config", {}))


def _default_meta(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "pixel_size_um": 0.4,
        "tile_size": int(config.get("input_size", 256)),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "thresholds": dict.fromkeys(ORGANS, 0.5),
        "min_area_um2": {},
        "organs": list(ORGANS),
        "training": {},
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    meta: dict[str, Any] | None = None,
    *,
    half: bool = False,
) -> Path:
    """Write ``model`` (built by ``build_model``) and its metadata atomically to ``path``.

    ``half`` stores the floating-point weights as float16, half the file, for shipping a
    model: loading casts them back to the model's float32. A tensor that float16 cannot hold
    (a value past its range, or values so small that it loses their precision) stays float32.
    """
    config = getattr(model, "config", None)
    if not config or "name" not in config:
        raise CheckpointError(
            "the model has no registry configuration; build it with build_model()"
        )
    path = Path(path)
    full_meta = default_meta(model)
    full_meta.update(copy.deepcopy(meta or {}))
    full_meta = check_meta(full_meta, path.name)
    _check_tile_fits(model, full_meta["tile_size"], path.name)
    arch_args = {k: v for k, v in config.items() if k not in ("name",)}
    architecture = {"name": config["name"], "args": arch_args}
    return write_payload(path, model, architecture, full_meta, half=half)


def write_payload(
    path: Path,
    model: nn.Module,
    architecture: dict[str, Any],
    meta: dict[str, Any],
    *,
    half: bool = False,
    kind: str = "segmenter",
) -> Path:
    """Write one checkpoint file atomically: the format, ``kind`` (a segmentation model is
    written without one, as before kinds existed), the architecture, the checked ``meta`` and
    the weights (float16 where it holds them, with ``half``)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION}
    if kind != "segmenter":
        payload["kind"] = kind
    payload.update(
        architecture=architecture,
        meta=meta,
        state_dict={
            k: _half(v) if half else v.detach().cpu() for k, v in model.state_dict().items()
        },
    )
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _half(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float16 when it is float32 and float16 holds it: every value finite, and
    rounded by at most 1e-3 of the tensor's largest magnitude (not so for a tensor of tiny
    values, which float16 flushes toward zero); else unchanged."""
    tensor = tensor.detach().cpu()
    if tensor.dtype != torch.float32 or not tensor.numel():
        return tensor
    small = tensor.to(torch.float16)
    error = (small.float() - tensor).abs().max()
    if not torch.isfinite(small).all() or error > 1e-3 * tensor.abs().max():
        return tensor
    return small


def read_checkpoint(path: str | os.PathLike, kind: str = "segmenter") -> dict[str, Any]:
    """Read and check a checkpoint's payload (weights as tensors) without building the model;
    ``kind``: what the file must hold, a ``segmenter`` or (BPR) a ``refiner``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint (not a torch archive: damaged, truncated "
            "or another format)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path.name} was refused: it holds Python objects other than weights and plain data "
            f"(napari-ftu never runs code from a checkpoint). Detail: {str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint (damaged or another format): {exc}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path.name} is not a napari-ftu checkpoint (a bare state dict or another tool's "
            "file); save models with training.models.save_checkpoint"
        )
    found = payload.get("kind", "segmenter")  # BPR refiners (training.refine) say "refiner"
    if found != kind:
        raise CheckpointError(f"{path.name} is {KINDS.get(found, repr(found))}, not {KINDS[kind]}")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} has checkpoint format version {version!r}; this napari-ftu reads up to "
            f"{FORMAT_VERSION}: update napari-ftu"
        )
    for key in ("architecture", "meta", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path.name} is damaged: its '{key}' entry is missing")
    return payload


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a checkpoint's model and load its weights; return ``(model in eval mode, meta)``."""
    payload = read_checkpoint(path)
    name = Path(path).name
    architecture = payload["architecture"]
    config = _resolve_architecture(architecture, name)
    meta = _default_meta(config)
    meta.update(payload["meta"])
    meta = check_meta(meta, name)
    try:
        model = build_from_config(config)
    except (ValueError, TypeError, AssertionError, RuntimeError, IndexError) as exc:
        raise CheckpointError(f"{name}: architecture cannot be built here: {exc}") from None
    _check_tile_fits(model, meta["tile_size"], name)
    channels = len(meta["domain"]["features"]["mean"]) if meta.get("domain") else None
    if channels is not None and channels != model.encoder.channels[-1]:
        raise CheckpointError(
            f"{name}: meta.domain refused: its features have {channels} channels, the model's "
            f"encoder {model.encoder.channels[-1]}"
        )
    _load_state(model, payload["state_dict"], name)
    meta["architecture"] = architecture
    return model.to(device).eval(), meta


def _resolve_architecture(architecture: dict[str, Any], name: str) -> dict[str, Any]:
    """The registry configuration the file names, with its arguments checked before any build."""
    args = architecture.get("args", {})
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise CheckpointError(f"{name}: architecture.args must be a dict of named arguments")
    if "pretrained" in args:
        raise CheckpointError(
            f"{name}: architecture.args.pretrained is refused: a checkpoint cannot choose a "
            "weights file to load (its own weights are in it)"
        )
    model_name = architecture.get("name")
    field = "architecture.args" if model_name in list_models() else "architecture.name"
    try:
        return resolve_config(model_name, **args)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: {field} refused: {exc}") from None


def _load_state(model: nn.Module, state: dict[str, Any], name: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise CheckpointError(
            f"{name}: the weights do not fit the architecture: {'; '.join(parts)}"
        )
    model.load_state_dict(state)


def check_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """``meta`` with every field checked (``CheckpointError`` naming ``where`` and the field) and
    numbers made plain ``int``/``float``, which ``torch.load(weights_only=True)`` can read."""
    checked = dict(meta)

    def refuse(field: str, must: str) -> CheckpointError:
        return CheckpointError(f"{where}: meta.{field} must be {must}; got {meta.get(field)!r}")

    size = meta.get("tile_size")
    if not _is_integer(size) or not 0 < size <= MAX_TILE_SIZE or size % 32:
        raise refuse("tile_size", f"a positive multiple of 32, at most {MAX_TILE_SIZE}")
    checked["tile_size"] = int(size)

    pixel_size = meta.get("pixel_size_um")
    low, high = PLAUSIBLE_UM_PER_PX
    if not _is_number(pixel_size) or not low <= pixel_size <= high:
        must = f"a positive finite number of micrometres, {low:g} to {high:g}"
        raise refuse("pixel_size_um", must)
    checked["pixel_size_um"] = float(pixel_size)

    for field in ("mean", "std"):
        values = meta.get(field)
        if not isinstance(values, (list, tuple)) or len(values) != 3:
            raise refuse(field, "3 numbers (R, G, B)")
        if not all(_is_number(v) and (field == "mean" or v > 0) for v in values):
            raise refuse(field, "3 finite numbers" + (", each above 0" if field == "std" else ""))
        checked[field] = [float(v) for v in values]

    organs = meta.get("organs")
    if not isinstance(organs, (list, tuple)) or not organs or not all(o in ORGANS for o in organs):
        raise refuse("organs", f"a non-empty list of organs among {', '.join(ORGANS)}")
    checked["organs"] = list(organs)

    # min_area_um2 is optional (checkpoints from before it was calibrated have none): organs
    # left out drop nothing
    for field, default in (("thresholds", None), ("min_area_um2", {})):
        upper, bounds = ORGAN_NUMBER_BOUNDS[field]
        try:
            checked[field] = organ_numbers(meta.get(field, default), upper, bounds)
        except ValueError:
            must = f"a dict from organs among {', '.join(ORGANS)} to finite numbers {bounds}"
            raise refuse(field, must) from None

    training = meta.get("training", {})
    if not isinstance(training, dict):
        raise refuse("training", "a dict (a training summary)")
    if "adaptation" in training:
        try:
            checked["training"] = {**training, "adaptation": adaptation_record(training)}
        except ValueError as exc:
            raise CheckpointError(f"{where}: meta.training.adaptation {exc}") from None
    if meta.get("domain") is not None:  # optional: checkpoints from before it have none
        from training.domain.description import DescriptionError, check_description

        try:
            checked["domain"] = check_description(meta["domain"])
        except DescriptionError as exc:
            raise CheckpointError(f"{where}: meta.domain refused: {exc}") from None
    return checked


ADAPTATION_NUMBERS = {  # the record's numbers and their bounds (upper, in words)
    "adapt_weight": (math.inf, ">= 0"),
    "pseudo_weight": (math.inf, ">= 0"),
    "pseudo_low": (1.0, "in [0, 1]"),
    "pseudo_high": (1.0, "in [0, 1]"),
}


def adaptation_record(training: dict[str, Any]) -> dict[str, Any]:
    """``training["adaptation"]`` (what ``--adapt`` trained with) checked as plain data: its
    mode, weights and target folders' names and image counts; ``ValueError`` otherwise."""
    from training.adapt import ADAPT_MODES

    record = training["adaptation"]
    keys = {"mode", "targets", *ADAPTATION_NUMBERS}
    if not isinstance(record, dict) or set(record) != keys:
        raise ValueError(f"must be a dict of exactly {sorted(keys)}; got {record!r}")
    if record["mode"] not in ADAPT_MODES:
        raise ValueError(f"mode must be one of {', '.join(ADAPT_MODES)}; got {record['mode']!r}")
    checked: dict[str, Any] = {"mode": str(record["mode"])}
    for key, (upper, bounds) in ADAPTATION_NUMBERS.items():
        if not (_is_number(record[key]) and 0 <= record[key] <= upper):
            raise ValueError(f"{key} must be a finite number {bounds}; got {record[key]!r}")
        checked[key] = float(record[key])
    targets = record["targets"]
    if not isinstance(targets, list) or not targets:
        raise ValueError(f"targets must be a non-empty list; got {targets!r}")
    checked["targets"] = []
    for target in targets:
        if (
            not isinstance(target, dict)
            or set(target) != {"name", "images"}
            or not isinstance(target["name"], str)
            or not target["name"]
            or not _is_integer(target["images"])
            or target["images"] < 1
        ):
            raise ValueError(
                f"targets must each be {{'name': text, 'images': a count >= 1}}; got {target!r}"
            )
        checked["targets"].append({"name": target["name"], "images": int(target["images"])})
    return checked


def _check_tile_fits(model: nn.Module, size: int, where: str) -> None:
    """The engine feeds the model tiles of ``tile_size``: the model must take them."""
    try:
        model.encoder.check_input_size(size, size)
    except ValueError as exc:
        raise CheckpointError(
            f"{where}: meta.tile_size {size} does not fit the model: {exc}"
        ) from None


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# the per-organ post-processing of checkpoints and manifests: (upper bound, how it reads)
ORGAN_NUMBER_BOUNDS = {"thresholds": (1.0, "in [0, 1]"), "min_area_um2": (math.inf, ">= 0 (um²)")}


def organ_numbers(values: Any, upper: float, bounds: str) -> dict[str, float]:
    """``values`` checked as a dict from organs to finite numbers in [0, ``upper``] (``bounds``
    says so in words); ``ValueError`` with the reason otherwise."""
    if not isinstance(values, dict):
        raise ValueError(f"must be a dict from organs to numbers {bounds}")
    unknown = sorted(set(values) - set(ORGANS))
    if unknown:
        raise ValueError(f"names unknown organ(s) {unknown}")
    for organ, value in values.items():
        if not (_is_number(value) and 0 <= value <= upper):
            raise ValueError(f"for {organ} must be a number {bounds}; got {value!r}")
    return {organ: float(value) for organ, value in values.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
