"""Boundary Patch Refinement: the boundary F-score, the refiner's checkpoint, boundary patches,
the refinement of a blocky map of a disc, the engine's refinement step, the manifest key."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import member
from scipy import ndimage
from torch import nn

from training.inference import RunOptions, run, segment
from training.models import CheckpointError, build_model, load_checkpoint, save_checkpoint
from training.models.ensemble import load_ensemble
from training.refine import (
    RefineOptions,
    Refiner,
    boundary_f_score,
    build_refiner,
    load_refiner,
    refine_map,
    save_refiner,
)
from training.refine.fit import RefinerFit
from training.refine.patches import boundary_centres
from training.refine.samples import boundary_patches, simulated_coarse
from training.slides import Slide
from training.validation import dice

SLIDE_UM, WORKING_UM = 0.5, 1.0  # the refiner sees the slide's pixels, twice the map's


def disc(size: int = 256, radius: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A dark round object on a light background with noise, and its mask (0/1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size / 2 + rng.integers(-20, 20, size=2)
    truth = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    image = np.where(truth[..., None], [90, 40, 120], [235, 220, 230])
    image = image + rng.normal(0, 8, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), truth.astype(np.uint8)


def blocky(truth: np.ndarray, factor: int = 8) -> np.ndarray:
    """The truth downsampled ``factor`` x (nearest) and back: a 1/8 decoder's outline."""
    small = truth[::factor, ::factor]
    big = np.repeat(np.repeat(small, factor, 0), factor, 1)
    return big[: truth.shape[0], : truth.shape[1]].astype(np.float32)


@pytest.fixture(scope="module")
def refiner() -> Refiner:
    """A micro refiner trained for a few seconds on simulated coarse masks of discs."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    meta = {"pixel_size_um": SLIDE_UM, "patch_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    trained = Refiner(build_refiner(base=8, levels=3), meta, RefineOptions(per_object=24))

    def batches():
        for seed in range(10**6):
            image, truth = disc(seed=seed % 5)
            yield boundary_patches(image, simulated_coarse(truth, rng), truth, 32, 16, rng)

    start = time.process_time()
    RefinerFit(trained, lr=5e-3).run(batches(), 60, lambda: time.process_time() - start > 20)
    return trained


def held_out() -> tuple[Slide, np.ndarray, np.ndarray]:
    """A disc not trained on: the slide (0.5 um/px), its truth and its blocky map at 1 um/px."""
    image, truth = disc(seed=11)
    working = truth[::2, ::2]
    return Slide.from_array(image, SLIDE_UM), working, blocky(working)


def test_boundary_f_score_of_a_hand_made_case():
    truth = np.zeros((10, 10), np.uint8)
    truth[2:8, 2:8] = 1
    shifted = np.roll(truth, 1, axis=1)  # 20 boundary px each, 10 of them shared
    assert boundary_f_score(truth, truth) == 1.0
    assert boundary_f_score(shifted, truth, tolerance_px=0) == pytest.approx(0.5)
    assert boundary_f_score(shifted, truth, tolerance_px=1) == 1.0
    assert boundary_f_score(np.zeros_like(truth), truth) == 0.0
    assert boundary_f_score(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        boundary_f_score(truth, truth[1:])


def test_boundary_centres_spread_along_each_outline_and_skip_nothing_else():
    labels = np.zeros((100, 100), np.int32)
    labels[10:50, 10:50] = 1
    labels[70:90, 60:95] = 2
    centres = boundary_centres(labels, per_object=4, spacing=10)
    assert len(centres) == 8
    assert set(labels[tuple(centres.T)]) == {1, 2}
    first = centres[:4]
    gaps = np.abs(first[:, None] - first[None]).max(-1)[~np.eye(4, dtype=bool)]
    assert gaps.min() >= 20  # spread over the square's outline, not bunched at one corner
    assert boundary_centres(np.zeros((20, 20), np.int32), 4, 10).shape == (0, 2)


def test_refiner_moves_a_blocky_boundary_towards_the_truth(refiner):
    slide, truth, coarse = held_out()
    probability = coarse.copy()
    events = list(refine_map(probability, slide, refiner, WORKING_UM, (0.5, 0.0)))
    assert events[0] == (0, events[-1][1]) and events[-1][0] == events[-1][1] > 0
    before, after = coarse >= 0.5, probability >= 0.5
    assert dice(after, truth) > dice(before, truth) + 0.01
    assert boundary_f_score(after, truth) > boundary_f_score(before, truth) + 0.05
    # only the boundary band changes: deep inside and far outside, bit for bit the same
    band_px = refiner.options.band * refiner.patch_px * SLIDE_UM / WORKING_UM
    inside = ndimage.distance_transform_edt(before)
    outside = ndimage.distance_transform_edt(~before)
    far = np.where(before, inside, outside) - 1 >= band_px
    assert far.sum() > 0.5 * far.size
    assert np.array_equal(probability[far], coarse[far])
    assert (probability != coarse).any()


def test_no_object_or_only_small_ones_is_a_no_op(refiner):
    slide, _, _ = held_out()
    empty = np.full((128, 128), 0.2, np.float32)
    assert list(refine_map(empty, slide, refiner, WORKING_UM, (0.5, 0.0))) == [(0, 0)]
    assert np.array_equal(empty, np.full((128, 128), 0.2, np.float32))
    small = empty.copy()
    small[60:66, 60:66] = 0.9  # 36 px: under the minimum area of 50 px
    assert list(refine_map(small, slide, refiner, WORKING_UM, (0.5, 50.0))) == [(0, 0)]
    assert small[60:66, 60:66].min() == np.float32(0.9)


def test_refiner_checkpoint_round_trip_half_and_refusals(tmp_path, refiner):
    meta = {**refiner.meta, "training": {"data": ["discs"], "steps": 60}}
    path = save_refiner(tmp_path / "bpr.pt", refiner.model, meta)
    model, loaded = load_refiner(path)
    assert loaded["patch_size"] == 32 and loaded["pixel_size_um"] == SLIDE_UM
    assert loaded["training"]["data"] == ["discs"]
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), refiner.model.eval()(x))
    half = save_refiner(tmp_path / "half.pt", refiner.model, meta, half=True)
    assert half.stat().st_size < 0.7 * path.stat().st_size
    with torch.no_grad():
        torch.testing.assert_close(load_refiner(half)[0](x), model(x), atol=0.05, rtol=0.05)

    segmenter = save_checkpoint(tmp_path / "seg.pt", build_model("swin_micro_upernet"))
    with pytest.raises(CheckpointError, match=r"seg\.pt is a segmentation model, not a boundary"):
        load_refiner(segmenter)
    with pytest.raises(CheckpointError, match=r"bpr\.pt is a boundary refiner .*, not a segment"):
        load_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    for args, why in (
        ({"base": 8, "levels": 3, "module": "os.system"}, "not allowed"),
        ({"base": 4096, "levels": 3}, "base must be an integer 4..128"),
        ({"base": "8", "levels": 3}, "base must be an integer"),
    ):
        torch.save({**payload, "architecture": {"name": "bpr_unet", "args": args}}, path)
        with pytest.raises(CheckpointError, match=f"bpr.pt: architecture.args refused: .*{why}"):
            load_refiner(path)
    torch.save({**payload, "meta": {**payload["meta"], "patch_size": 30}}, path)
    with pytest.raises(CheckpointError, match=r"meta\.patch_size must be"):
        load_refiner(path)


class Blocky(nn.Module):
    """A stand-in for a 1/8-resolution decoder: dark pixels are FTU, averaged over 8x8 blocks
    and enlarged back (nearest)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = (x.mean(1, keepdim=True) < 160).float()
        return (F.interpolate(F.avg_pool2d(dark, 8), scale_factor=8) - 0.5) * 20


def engine_options(tmp_path=None) -> RunOptions:
    options = RunOptions(pixel_size_um=SLIDE_UM, detect_tissue=False)
    if tmp_path is not None:  # the map on disk (zarr)
        options = options.with_overrides(memory_limit_mb=0.01, workdir=tmp_path / "run")
    return options


def test_engine_progress_counts_the_patches_on_disk_too(tmp_path, refiner):
    image, truth = disc(seed=11)
    blocky_member = member(Blocky(), pixel_size=WORKING_UM, tile=64)
    plain = run(image, blocky_member, "kidney", engine_options())
    events = []
    result = run(
        image,
        blocky_member,
        "kidney",
        engine_options(tmp_path),
        refiner=refiner,
        on_progress=events.append,
    )
    tiles = plain.tiles_run
    refining = [e for e in events if e.message.startswith("refining boundaries")]
    patches = result.meta["refined_patches"]
    assert (
        patches > 0 and refining[-1].message == f"refining boundaries: {patches}/{patches} patches"
    )
    assert [e.total for e in refining] == [tiles + patches] * len(refining)
    assert refining[-1].done == tiles + patches and refining[0].done == tiles
    assert result.path == tmp_path / "run" / "probability.zarr"
    refined = np.asarray(result.probability)
    assert not np.array_equal(refined, plain.probability)
    truth = truth[::2, ::2]
    assert boundary_f_score(refined >= 0.5, truth) > boundary_f_score(
        plain.probability >= 0.5, truth
    )


def test_cancelling_during_refinement_leaves_nothing(tmp_path, refiner):
    image, _ = disc(seed=11)
    blocky_member = member(Blocky(), pixel_size=WORKING_UM, tile=64)
    options = RefineOptions(per_object=24, batch_size=2)
    small_batches = Refiner(refiner.model, refiner.meta, options)
    generator = segment(
        image, blocky_member, "kidney", engine_options(tmp_path), refiner=small_batches
    )
    refining = []
    for event in generator:  # stop after the first refined batch, before the last
        if event.message.startswith("refining boundaries"):
            refining.append(event)
            if len(refining) == 2:
                break
    assert len(refining) == 2 and refining[1].done < refining[1].total
    assert any((tmp_path / "run").iterdir())
    generator.close()
    assert list((tmp_path / "run").iterdir()) == []


def test_a_manifest_names_a_refiner_used_by_default(tmp_path, refiner):
    image, _ = disc(seed=11)
    save_refiner(tmp_path / "bpr.pt", refiner.model, refiner.meta)
    save_checkpoint(
        tmp_path / "seg.pt",
        build_model("swin_micro_upernet", input_size=64),
        {"pixel_size_um": WORKING_UM, "tile_size": 64},
    )
    manifest = tmp_path / "ensemble.yaml"
    manifest.write_text(
        "members:\n  - checkpoint: seg.pt\nrefiner: bpr.pt\nrefine: {per_object: 5, patch_px: 16}\n"
    )
    ensemble = load_ensemble(manifest)
    assert ensemble.refiner is not None
    assert ensemble.refiner.options == RefineOptions(per_object=5, patch_px=16)
    assert ensemble.refiner.patch_px == 16
    ensemble.members[0].model = Blocky()  # the member's pixels as the test needs them
    ensemble.members[0].meta.update(mean=[0, 0, 0], std=[1 / 255] * 3)
    used = run(image, ensemble, "kidney", engine_options())
    assert 0 < used.meta["refined_patches"] <= 5 and used.meta["refiner"].endswith("bpr.pt")
    skipped = run(image, ensemble, "kidney", engine_options(), refiner=False)
    assert skipped.meta["refined_patches"] == 0 and skipped.meta["refiner"] is None
    manifest.write_text("members:\n  - checkpoint: seg.pt\nrefine: {per_object: 0}\n")
    with pytest.raises(ValueError, match=r"ensemble\.yaml: 'refine' per_object must be at least 1"):
        load_ensemble(manifest)
    manifest.write_text("members:\n  - checkpoint: seg.pt\nrefiner: seg.pt\n")
    with pytest.raises(CheckpointError, match=r"seg\.pt is a segmentation model, not a boundary"):
        load_ensemble(manifest)


def test_train_refiner_command(tmp_path, capsys):
    from helpers import phantom_dataset

    from training.train_refiner import main

    data = phantom_dataset(tmp_path / "train", organs=("kidney",), seeds=range(2))
    val = phantom_dataset(tmp_path / "val", organs=("kidney",), seeds=range(5, 6))
    out = tmp_path / "run"
    argv = ["--data", str(data), "--val-data", str(val), "--out", str(out), "--patch", "32"]
    argv += ["--base", "8", "--steps", "4", "--val-every", "2", "--batch-size", "4"]
    assert main(argv) == 0
    _, meta = load_refiner(out / "best.pt")
    assert meta["pixel_size_um"] == 2.0 and meta["patch_size"] == 32
    assert meta["training"]["coarse"] == "simulated" and meta["training"]["val_ids"] == ["kidney5"]
    assert {"val_bf", "val_dice", "coarse_val_bf"} <= set(meta["training"])
    assert load_refiner(out / "last.pt")[1]["training"]["steps"] == 4
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert main(argv) == 2
    assert "best.pt exists: give a new --out" in capsys.readouterr().err


def test_train_refiner_on_a_models_own_maps(tmp_path):
    from helpers import phantom_dataset, tiny_checkpoint

    from training.train_refiner import main

    data = phantom_dataset(tmp_path / "train", organs=("kidney",), seeds=range(1))
    coarse = tiny_checkpoint(tmp_path / "coarse.pt")
    out = tmp_path / "run"
    argv = ["--data", str(data), "--val-data", str(data), "--out", str(out), "--patch", "32"]
    argv += ["--base", "8", "--steps", "2", "--val-every", "2", "--coarse-model", str(coarse)]
    assert main(argv) == 0
    assert load_refiner(out / "best.pt")[1]["training"]["coarse"] == "coarse.pt"
    refiner_given = ["--coarse-model", str(out / "best.pt"), "--out", str(tmp_path / "run2")]
    assert main([*argv[:4], *argv[6:-2], *refiner_given]) == 2


@pytest.fixture
def bundle(tmp_path, refiner):
    """A tiny segmentation checkpoint, a refiner checkpoint and a manifest naming both."""
    from helpers import tiny_checkpoint

    seg = tiny_checkpoint(tmp_path / "seg.pt")
    bpr = save_refiner(tmp_path / "bpr.pt", refiner.model, {**refiner.meta, "pixel_size_um": 1.0})
    manifest = tmp_path / "ensemble.yaml"
    manifest.write_text("members:\n  - checkpoint: seg.pt\nrefiner: bpr.pt\n")
    return seg, bpr, manifest


def test_segment_command_refine_flags(tmp_path, bundle, caplog, capsys):
    from napari_ftu.cli import main
    from training.slides import write_pyramid

    seg, bpr, manifest = bundle
    slide = write_pyramid(tmp_path / "disc.tiff", disc(seed=3)[0], 1.0)
    common = [str(slide), "--organ", "kidney", "--quiet", "--no-tissue-detection"]

    def segment(model, out, *extra):
        return main(["segment", *common, "--model", str(model), *extra, "--out", str(out)])

    caplog.set_level("INFO")
    assert segment(seg, tmp_path / "a", "--refine", str(bpr)) == 0
    assert "disc.tiff: boundaries refined by bpr.pt (" in caplog.text
    caplog.clear()
    assert segment(manifest, tmp_path / "b", "--no-refine") == 0
    assert "boundaries refined" not in caplog.text
    assert segment(manifest, tmp_path / "c") == 0
    assert "disc.tiff: boundaries refined by bpr.pt (" in caplog.text
    capsys.readouterr()
    assert segment(seg, tmp_path / "d", "--refine", str(seg)) == 2
    assert "seg.pt is a segmentation model, not a boundary refiner" in capsys.readouterr().err


def test_evaluate_refine_reports_the_boundary_f_score(tmp_path, bundle, capsys):
    import json

    from helpers import phantom_dataset

    from training.evaluate import main

    seg, bpr, manifest = bundle
    data = phantom_dataset(tmp_path / "data", organs=("kidney",), seeds=range(1), pixel_size_um=1.0)
    out = tmp_path / "scores.json"
    assert (
        main(["--data", str(data), "--model", str(seg), "--refine", str(bpr), "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "boundary F-score (2 px)" in printed and "(boundary refiner: bpr.pt)" in printed
    scores = json.loads(out.read_text())
    assert scores["refiner"].endswith("bpr.pt") and 0 <= scores["boundary_f"] <= 1
    assert set(scores["boundary_f_by_organ"]) == {"kidney"}
    assert main(["--data", str(data), "--model", str(manifest), "--no-refine"]) == 0
    assert "(boundary refiner: none)" in capsys.readouterr().out
    assert main(["--data", str(data), "--model", str(seg), "--refine", str(seg)]) == 2
    assert "seg.pt is a segmentation model, not a boundary refiner" in capsys.readouterr().err


def test_train_refiner_holds_out_a_split_of_the_data(tmp_path):
    from helpers import phantom_dataset

    from training.train_refiner import main

    data = phantom_dataset(tmp_path / "train", organs=("kidney",), seeds=range(3))
    out = tmp_path / "run"
    argv = ["--data", str(data), "--out", str(out), "--patch", "32", "--base", "8"]
    assert main([*argv, "--steps", "1", "--val-every", "1", "--val-fraction", "0.34"]) == 0
    held = load_refiner(out / "best.pt")[1]["training"]["val_ids"]
    assert len(held) == 1 and held[0] in {"kidney0", "kidney1", "kidney2"}


def test_the_cli_bar_grows_with_the_refinements_patches():
    from napari_ftu.cli import TileBar
    from training.inference import Progress

    bar = TileBar("disc.tiff")
    bar(Progress(0, 10, "10 tiles to run"))
    bar(Progress(10, 10, "model: 10/10 tiles"))
    bar(Progress(12, 16, "refining boundaries: 2/6 patches"))
    assert (bar.bar.n, bar.bar.total) == (12, 16)
    bar.close()


def test_a_refiner_far_from_the_slides_pixel_size_is_refused_before_the_tiles(refiner):
    image, _ = disc(seed=11)
    far = Refiner(refiner.model, {**refiner.meta, "pixel_size_um": 0.004})
    events = []
    with pytest.raises(ValueError, match=r"0\.004 um/px differ 125-fold"):
        run(
            image,
            member(Blocky(), pixel_size=WORKING_UM, tile=64),
            "kidney",
            engine_options(),
            refiner=far,
            on_progress=events.append,
        )
    assert events == []


@pytest.mark.parametrize("scale", [0.5, 0.65, 1.0])
def test_a_patch_reads_the_map_on_its_grid_and_puts_it_back_in_place(scale):
    from training.refine.patches import PatchBox

    yy, xx = np.mgrid[:120, :100].astype(np.float32)
    smooth = (yy * 0.004 + xx * 0.003).astype(np.float32)  # linear: bilinear reads it exactly
    box = PatchBox.around(np.array([60, 50]), 32, scale)
    y0, x0, back = box.to_working(box.coarse(smooth))
    assert back.shape[0] >= int(32 * scale) - 1
    # within 0.15 px of the slope (area means of piecewise-constant pixels at other ratios)
    np.testing.assert_allclose(
        back, smooth[y0 : y0 + back.shape[0], x0 : x0 + back.shape[1]], atol=0.15 * 0.004
    )
    assert abs(y0 + back.shape[0] / 2 - 60.5) <= 1 and abs(x0 + back.shape[1] / 2 - 50.5) <= 1


def test_a_crop_of_the_map_is_refined_from_the_slide_itself(refiner):
    """A region run's map is a crop at the working scale: its patches are read from the slide
    (at the refiner's finer pixel size), so the crop refines as the whole map does there."""
    slide, _, coarse = held_out()
    whole = coarse.copy()
    list(refine_map(whole, slide, refiner, WORKING_UM, (0.5, 0.0)))
    top, left = 6, 3
    crop = coarse[top:124, left:125].copy()
    from_slide = refiner.reading(slide, (top, left))
    list(
        refine_map(
            crop,
            Slide.from_array(np.zeros((1, 1, 3), np.uint8), 1.0),
            from_slide,
            WORKING_UM,
            (0.5, 0.0),
        )
    )
    np.testing.assert_allclose(crop, whole[top:124, left:125], atol=1e-5)
    assert not np.array_equal(crop, coarse[top:124, left:125])
