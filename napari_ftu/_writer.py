"""npe2 writer: a Labels layer saved as QuPath GeoJSON (File > Save Selected Layers...).

An FTU mask layer (one with a session) is written like "Export corrections" writes it: on its
image's level-0 pixels, the whole mask, or for a slide too large to export whole the regions a
pathologist reviewed. Any other Labels layer is written in its own pixel coordinates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_ftu._ftu_layers import LEVEL0_KEY, SESSION_KEY


def session_pieces(session: Any, image_id: str, level0: tuple[int, int] | None = None) -> list:
    """What an export of a session holds (:class:`training.data.export.Piece`): the whole mask
    (a copy: edits go on while it is written) or, above the direct-edit limit, one piece per
    reviewed region. ``level0``: the image's level-0 ``(H, W)``; without it, the grid times its
    downsample. ``ExportError`` for a large mask with no reviewed region."""
    from training.data.export import ExportError, region_pieces, whole_image

    grid = session.grid
    if level0 is None:
        level0 = tuple(round(side * grid.downsample) for side in grid.shape)
    if grid.direct_edit:
        return [whole_image(image_id, np.array(session.labels), level0)]
    if not session.reviewed_regions:
        raise ExportError(
            f"the FTU mask of {session.name!r} ({grid.shape[1]} x {grid.shape[0]} px) is too "
            "large to export whole, and no region of it was reviewed: use Review region, then "
            "Apply region edits, for each region to export"
        )
    return region_pieces(
        image_id, session.reviewed_regions, session.read_labels, grid.downsample, level0
    )


def write_labels_geojson(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer as a QuPath GeoJSON FeatureCollection (atomic); the paths written."""
    from training.data.export import pieces_geojson, safe_id, write_geojson
    from training.data.geojson_export import labels_to_geojson
    from training.measure.qupath import measurements_of

    metadata = meta.get("metadata") or {}
    measurements = measurements_of(meta.get("features"))  # the Measurements widget's table
    session = metadata.get(SESSION_KEY)
    if session is not None:
        level0 = metadata.get(LEVEL0_KEY)
        pieces = session_pieces(session, safe_id(session.name), level0)
        collection = pieces_geojson(pieces, session.organ, measurements)
    else:
        labels = data[0] if isinstance(data, list) else data  # a multiscale layer's finest
        collection = labels_to_geojson(
            np.asarray(labels), 1.0, metadata.get("organ", ""), measurements=measurements
        )
    return [str(write_geojson(path, collection))]
