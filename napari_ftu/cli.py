"""The ``napari-ftu`` command: opens napari with the plugin, and the slides given."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Launch napari with napari-ftu; slides given on the command line are opened."""
    parser = argparse.ArgumentParser(
        prog="napari-ftu", description="Open slides in napari with the napari-ftu plugin."
    )
    parser.add_argument("slides", nargs="*", help="slide files (TIFF, OME-TIFF, SVS, PNG, JPEG)")
    args = parser.parse_args(argv)

    # torch (and the triton it pulls in) must be imported before any OpenGL context exists:
    # importing it after a viewer is up crashes under Mesa's software OpenGL.
    import napari
    import torch  # noqa: F401

    viewer = napari.Viewer(title="napari-ftu")
    for path in args.slides:
        viewer.open(path, plugin="napari-ftu")
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
