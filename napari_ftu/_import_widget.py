"""The "Import annotations" dock widget: a QuPath GeoJSON file, or a row of a dataset folder,
laid over an image layer as an editable FTU mask with the plugin's tools (review queue,
correction helpers, export).

The mask is an *imported* session (``FTUSession.from_labels``): on the image's level-0 grid when
it fits the direct-edit limit, else on the finest whole-number downsample that does. It is kept
in memory, never written over the mask store of the slide: export it to keep it. Onto an image
that already has an FTU mask (a model's, say) the annotations come as a second, plain Labels
layer in outlines, to compare; the FTU mask stays the one reviewed and exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton

from napari_ftu._ftu_layers import SESSION_KEY, import_grid_of, mask_name, show_imported
from training.organs import ORGANS

__all__ = ["ORGANS", "SOURCES", "ImportWidget"]

SOURCES = ("QuPath GeoJSON", "dataset row")
# no organ until the slide, the GeoJSON classification, the row or the user says which: a guess
# would label exported training data wrongly without a word (as Segment FTUs)
ORGAN_CHOICES = [("choose...", None), *((organ, organ) for organ in ORGANS)]
COMPARED_KEY = "compared_with"  # a comparison layer's metadata: the FTU mask it sits beside


class ImportWidget(Container):
    """Import annotations onto an image layer as an editable FTU mask."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.source = ComboBox(label="from", choices=SOURCES)
        self.geojson_file = FileEdit(label="GeoJSON", mode="r", filter="*.geojson *.json")
        self.dataset = FileEdit(label="dataset folder", mode="d", tooltip="holds train.csv")
        self.row_id = LineEdit(label="row id")
        self.organ = ComboBox(label="organ", choices=ORGAN_CHOICES, value=None)
        self.import_button = PushButton(text="Import")
        self.status = Label(value="")
        super().__init__(
            widgets=[
                self.image, self.source, self.geojson_file, self.dataset, self.row_id,
                self.organ, self.import_button, self.status,
            ]
        )  # fmt: skip
        self.image.changed.connect(self._prefill)
        self.source.changed.connect(self._show_fields)
        self.geojson_file.changed.connect(self._organ_from_geojson)
        self.import_button.changed.connect(self.import_annotations)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self._show_fields()
        self._prefill()

    def _image_choices(self, _: Any = None) -> list[str]:
        return [
            layer.name
            for layer in self.viewer.layers
            if layer._type_string == "image" and not layer.name.endswith(" FTU probability")
        ]

    def _layers_changed(self, _: Any = None) -> None:
        self.image.reset_choices()

    def _show_fields(self, _: Any = None) -> None:
        geojson = self.source.value == SOURCES[0]
        self.geojson_file.visible = geojson
        self.dataset.visible = self.row_id.visible = not geojson

    def _prefill(self, _: Any = None) -> None:
        """Organ from the layer's metadata; for a file in a dataset folder, that folder and
        its row id."""
        layer = self._image_layer()
        if layer is None:
            return
        meta = layer.metadata or {}
        self.organ.value = meta["organ"] if meta.get("organ") in ORGANS else None
        path = meta.get("path")
        if path:
            path = Path(path)
            folder = path.parent.parent if path.parent.name == "train_images" else path.parent
            if (folder / "train.csv").is_file():
                self.dataset.value = folder
            self.row_id.value = path.name.split(".")[0]

    def _organ_from_geojson(self, _: Any = None) -> None:
        from training.data.geojson import GeoJSONError, feature_classes
        from training.data.geojson_export import organ_of_class

        path = Path(str(self.geojson_file.value))
        if not path.is_file():
            return
        try:
            classes = feature_classes(path)
        except GeoJSONError:
            return  # said when importing
        for name, _ in classes.most_common():
            organ = organ_of_class(name)
            if organ is not None:
                self.organ.value = organ
                return

    def _image_layer(self) -> Any:
        name = self.image.value
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401

    def import_annotations(self, _: Any = None) -> Any:
        """Read the chosen annotations onto the image as an editable FTU mask; returns the mask
        layer, or ``None`` after an error notification."""
        from training.data.catalog import CatalogError
        from training.data.geojson import GeoJSONError

        try:
            layer = self._import()
        except (ValueError, OSError, CatalogError, GeoJSONError) as exc:
            _show_error(f"Import annotations: {exc}")
            return None
        session = layer.metadata.get(SESSION_KEY)
        if session is not None:
            self.status.value = f"{session.counts().objects} object(s) in {layer.name!r}"
        else:
            import numpy as np

            objects = len(np.unique(layer.data)) - 1
            self.status.value = (
                f"{objects} object(s) in {layer.name!r}, a second layer to compare with "
                f"{layer.metadata[COMPARED_KEY]!r}, which stays the mask reviewed and exported"
            )
        return layer

    def _import(self) -> Any:
        image = self._image_layer()
        if image is None:
            raise ValueError("open an image first (there is no image layer)")
        grid = import_grid_of(image)
        if self.source.value == SOURCES[0]:
            labels, source = self._from_geojson(grid)
        else:
            labels, source = self._from_row(image, grid)
        if mask_name(image.name) in self.viewer.layers:  # e.g. the expert's beside the model's
            return self._show_to_compare(image, labels, grid, source)
        if self.organ.value not in ORGANS:
            raise ValueError(
                f"choose the organ of {image.name!r} (neither the slide, the annotations' "
                "classification nor a dataset row says which)"
            )
        return show_imported(self.viewer, image, labels, grid, self.organ.value, source)

    def _show_to_compare(self, image: Any, labels: Any, grid: Any, source: str) -> Any:
        """Lay ``labels`` over the image as a plain Labels layer (outlines), beside the FTU
        mask the image already has, which stays the one the review and export tools use."""
        from napari_ftu._placement import overlay

        scale, translate = overlay(image.scale, image.translate, grid.downsample)
        name = f"{image.name} imported ({Path(source.split('#')[0]).name})"
        layer = self.viewer.add_labels(
            labels,
            name=name,
            scale=scale,
            translate=translate,
            units=image.units,
            opacity=0.8,
            metadata={"source": source, "organ": self.organ.value,
                      COMPARED_KEY: mask_name(image.name)},
        )  # fmt: skip
        layer.contour = 2  # outlines: the mask under it stays visible
        return layer

    def _from_geojson(self, grid: Any) -> tuple[Any, str]:
        from training.data.geojson import rasterize_labels

        path = Path(str(self.geojson_file.value))
        if not path.is_file():
            raise ValueError(f"choose a GeoJSON file ({path} is not one)")
        labels = rasterize_labels(path, grid.shape, downsample=grid.downsample)
        return labels, str(path)

    def _from_row(self, image: Any, grid: Any) -> tuple[Any, str]:
        from napari_ftu._ftu_layers import level0_shape
        from training.data.instances import row_labels

        folder, row_id = Path(str(self.dataset.value)), str(self.row_id.value).strip()
        if not (folder / "train.csv").is_file():
            raise ValueError(f"{folder} has no train.csv")
        if not row_id:
            raise ValueError("enter the row id to import")
        labels, row = row_labels(folder, row_id, grid.downsample)
        size = (int(row["img_height"]), int(row["img_width"]))
        if size != tuple(level0_shape(image)):
            raise ValueError(
                f"row {row_id!r} is {size[1]} x {size[0]} px but {image.name!r} is "
                f"{level0_shape(image)[1]} x {level0_shape(image)[0]} px: not its image"
            )
        if row["organ"] in ORGANS:
            self.organ.value = row["organ"]
        return labels, f"{folder / 'train.csv'}#{row_id}"


def _show_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)
