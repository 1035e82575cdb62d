from __future__ import annotations

from pathlib import Path

import pytest

# torch pulls in triton (through torch._dynamo, which timm's torchvision imports); importing
# triton after a napari window exists segfaults under Xvfb with Mesa's software OpenGL, so all
# of them are imported before any test can create a viewer.
import timm  # noqa: F401
import torch  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real competition annotations and H&E reference shipped beside the repository."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (expected ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_annotations(shared_data: Path) -> Path:
    path = shared_data / "hubmap-hpa" / "train_annotations_subset.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(autouse=True)
def _models_dir(tmp_path_factory, monkeypatch) -> Path:
    """Trained models are registered in a folder of the test's own, never the user's."""
    from training.models.versions import MODELS_ENV

    folder = tmp_path_factory.mktemp("models")
    monkeypatch.setenv(MODELS_ENV, str(folder))
    return folder
