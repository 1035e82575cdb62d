"""The ``napari-ftu`` command: the GUI launcher, ``napari-ftu segment`` for batch work and
``napari-ftu measure`` for an existing mask."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# segment's names stay importable from here, as scripts and tests import them
from napari_ftu._segment_command import (  # noqa: F401
    BAD_INPUT,
    SLIDES_FAILED,
    TileBar,
    _restore_lost_rows,
    preflight,
    segment_command,
    segment_parser,
)

PLUGIN = "napari-ftu"


def main(argv: Sequence[str] | None = None) -> int:
    """``napari-ftu [SLIDE...]`` opens napari; ``napari-ftu segment ...``, ``napari-ftu
    measure ...`` and ``napari-ftu report OUT_DIR`` run headless."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "segment":
        return segment_command(argv[1:])
    if argv and argv[0] == "measure":
        from napari_ftu._measure_command import measure_command

        return measure_command(argv[1:])
    if argv and argv[0] == "report":
        from napari_ftu._report_command import report_command

        return report_command(argv[1:])
    return launch(argv)


def launch(argv: Sequence[str]) -> int:
    """Open napari with the plugin's widgets docked and the slides given; returns the exit
    status once the window is closed (2 if a slide could not be opened)."""
    parser = argparse.ArgumentParser(
        prog="napari-ftu",
        description="Open slides in napari with napari-ftu (batch work: napari-ftu segment -h; "
        "measurements of an existing mask: napari-ftu measure -h).",
    )
    parser.add_argument(
        "slides", nargs="*", help="slide files (TIFF, OME-TIFF, SVS, NDPI, SCN, QPTIFF, PNG, JPEG)"
    )
    args = parser.parse_args(argv)
    # torch and timm (whose torchvision pulls in triton through torch._dynamo) must be imported
    # before any OpenGL context exists: importing triton after a viewer is up crashes under
    # Mesa's software OpenGL.
    import napari
    import timm  # noqa: F401
    import torch  # noqa: F401

    viewer = napari.Viewer(title="napari-ftu")
    failed = build_viewer(viewer, args.slides)
    napari.run()
    return BAD_INPUT if failed else 0


def build_viewer(viewer: Any, paths: Sequence[str | os.PathLike]) -> list[str]:
    """Dock every widget of the plugin's manifest in ``viewer`` and open the slides; returns the
    paths that could not be opened. Problems (a missing file, an unreadable slide, a widget that
    fails to load) are napari error notifications: the viewer stays up and usable."""
    from napari.utils.notifications import show_error

    docks = []
    for index, name in enumerate(widget_names()):
        try:  # one dock with a tab per widget: five stacked docks do not fit a laptop screen
            dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=index > 0)
        except Exception as exc:  # one broken widget must not cost the others or the slides
            show_error(f"napari-ftu cannot load the widget {name!r}: {exc}")
            continue
        # six tabs titled "Segment FTUs (napari-ftu)" ... are elided to "Seg...", "R...":
        # the first word names each widget (the dock's own title bar keeps the whole name)
        dock.setWindowTitle(name.split()[0])
        docks.append(dock)
    if docks:  # show the first tab (Segment), not the last one tabified (Stain), once the
        # main window has laid out its tab bar (raising before that selects nothing)
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, docks[0].raise_)
    paths = [str(path) for path in paths]
    missing = [path for path in paths if not Path(path).exists()]
    if missing:
        show_error(f"napari-ftu: no such file: {', '.join(missing)}")
    return missing + open_slides(viewer, [path for path in paths if path not in missing])


def widget_names() -> list[str]:
    """Display names of the widgets in the plugin's manifest, in its order."""
    from npe2 import PluginManager

    manager = PluginManager.instance()
    if PLUGIN not in manager:
        manager.discover()
    return [
        widget.display_name for widget in manager.get_manifest(PLUGIN).contributions.widgets or []
    ]


def open_slides(viewer: Any, paths: Sequence[str | os.PathLike]) -> list[str]:
    """Open each slide in ``viewer`` with the plugin's reader; return the paths that failed.

    A slide that cannot be opened is reported as a napari error notification, and the others
    still open: the session goes on.
    """
    from napari.utils.notifications import show_error

    failed = []
    for path in map(str, paths):
        try:
            viewer.open(path, plugin=PLUGIN)
        except Exception as exc:  # whatever a reader raises, one slide must not end the session
            show_error(f"napari-ftu cannot open {path}: {exc}")
            failed.append(path)
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
