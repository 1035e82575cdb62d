"""Which member "Train on corrections" starts from: the one the domain check finds nearest.

Two copies of the bundled general CoaT member, one described on phantoms in the HPA stain and
one on phantoms in the HuBMAP stain; corrections in the HuBMAP stain must start from the second,
whatever the manifest's order and weights, unless the manifest has a specialist for their organ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import phantom_dataset

from training.domain.__main__ import main as domain_main
from training.models import load_checkpoint, save_checkpoint
from training.retrain import start_checkpoint
from training.retrain_start import member_distances, nearest_member
from training.synthetic import STAIN_VECTORS

BUNDLED = Path(__file__).resolve().parents[1] / "training" / "models" / "default"


def _phantoms(folder: Path, stain: str, organs: tuple[str, ...] = ("kidney",)) -> Path:
    vectors = {} if stain == "hpa" else {"stain_vectors": STAIN_VECTORS[stain]}
    return phantom_dataset(folder, organs, 512, 0.4, range(2), **vectors)


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> dict[str, Path]:
    """``hpa.pt`` and ``hubmap.pt`` (described on those stains) and ``bare.pt`` (undescribed)."""
    root = tmp_path_factory.mktemp("members")
    model, meta = load_checkpoint(BUNDLED / "coat_daformer.pt")
    del meta["architecture"], meta["domain"]
    bare = save_checkpoint(root / "bare.pt", model, meta, half=True)
    found = {"bare": bare}
    for stain in ("hpa", "hubmap"):
        data = _phantoms(root / f"data-{stain}", stain, ("spleen", "lung"))
        out = root / f"{stain}.pt"
        assert domain_main(["describe", str(bare), "--data", str(data), "--out", str(out)]) == 0
        found[stain] = out
    return found


def _manifest(path: Path, entries: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"members": entries}))
    return path


def test_the_member_nearest_the_corrections_is_the_start(members, tmp_path):
    corrections = _phantoms(tmp_path / "corrections", "hubmap")
    # the HPA member first and heavier: the old rule (the heaviest member) would take it
    manifest = _manifest(tmp_path / "m.yaml", [
        {"checkpoint": str(members["bare"]), "weight": 3.0, "organs": ["lung"]},
        {"checkpoint": str(members["hpa"]), "weight": 2.0, "organs": ["lung"]},
        {"checkpoint": str(members["hubmap"]), "organs": ["spleen"]},
    ])  # fmt: skip
    assert start_checkpoint(manifest, "kidney")[0] == members["bare"]
    path, note = nearest_member(manifest, [corrections], "kidney")
    assert path == members["hubmap"]
    assert "nearest the corrections" in note and "hubmap.pt" in note and "bare.pt ?" in note
    distances = {d.checkpoint.name: d for d in member_distances(
        [members["hpa"], members["hubmap"], members["bare"]], [corrections])}  # fmt: skip
    assert distances["hubmap.pt"].distance < distances["hpa.pt"].distance
    assert distances["bare.pt"].distance is None
    assert distances["bare.pt"].rank > distances["hpa.pt"].rank


def test_a_specialist_for_the_organ_still_wins(members, tmp_path):
    corrections = _phantoms(tmp_path / "corrections", "hubmap")
    manifest = _manifest(tmp_path / "m.yaml", [
        {"checkpoint": str(members["hubmap"]), "weight": 2.0},
        {"checkpoint": str(members["hpa"]), "organs": ["kidney"]},
    ])  # fmt: skip
    assert nearest_member(manifest, [corrections], "kidney") == start_checkpoint(manifest, "kidney")
    assert nearest_member(manifest, [corrections], "kidney")[0] == members["hpa"]
    # a checkpoint is itself; undescribed members only: the old rule
    assert nearest_member(members["hpa"], [corrections], "kidney") == (members["hpa"], "")
    only_bare = _manifest(tmp_path / "b.yaml", [{"checkpoint": str(members["bare"])}])
    assert nearest_member(only_bare, [corrections], "kidney")[0] == members["bare"]
