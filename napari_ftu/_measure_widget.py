"""The "Measurements" dock widget: a mask layer's objects as a sortable table (its ``features``,
kept up to date by :mod:`napari_ftu._measure_layer`), the slide summary above it, a size
histogram beside it; a row chosen centres the viewer on its object and highlights it; the table
exports to CSV.

The measuring is :mod:`training.measure`; this module shows tables and moves the camera.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from qtpy.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, QTimer
from qtpy.QtWidgets import QAbstractItemView, QSizePolicy, QSplitter, QTableView

from napari_ftu._ftu_layers import SESSION_KEY
from napari_ftu._geometry import camera_of
from napari_ftu._measure_layer import TISSUE_KEY, image_id, placement_of, table_of, tracker

__all__ = ["MeasurementsWidget", "TableModel", "confirm_overwrite"]

SORT_ROLE = Qt.ItemDataRole.UserRole  # the number itself: rows sort by value, not by text
FOCUS_MARGIN = 3  # the object's box fills a third of the canvas when it is centred
HISTOGRAM_DELAY_MS = 50


def confirm_overwrite(path: Path) -> bool:
    """Ask whether to replace a CSV file that exists (a Qt question; tests replace it)."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(
        None,
        "Measurements",
        f"{path} exists. Replace it?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


class TableModel(QAbstractTableModel):
    """A measurement table for a ``QTableView``: text to show, numbers to sort by."""

    def __init__(self) -> None:
        super().__init__()
        self.columns: list[str] = []
        self.values = np.empty((0, 0), object)

    def set_table(self, table: Any) -> None:
        """Show ``table`` (a DataFrame) in place of the last one."""
        self.beginResetModel()
        self.columns = [str(c) for c in table.columns]
        self.values = table.to_numpy(object)
        self.endResetModel()

    def label_at(self, row: int) -> int:
        """The label (object id) of row ``row`` of the table."""
        return int(self.values[row, self.columns.index("label")])

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.values)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        value = self.values[index.row(), index.column()]
        if role == SORT_ROLE:
            return _number(value)
        if role == Qt.ItemDataRole.DisplayRole:
            return _text(self.columns[index.column()], value)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.columns[section]
        return super().headerData(section, orientation, role)


class MeasurementsWidget(Container):
    """The objects of a mask layer: summary, sortable table, size histogram, CSV export."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.mask = ComboBox(label="mask", choices=self._mask_choices)
        self.summary = Label(value="")
        self.highlight = CheckBox(text="show only the selected object", value=True)
        self.csv_file = FileEdit(label="CSV file", mode="w", filter="*.csv")
        self.export_button = PushButton(text="Export CSV")
        self.status = Label(value="")
        below = Container(widgets=[self.highlight, self.csv_file, self.export_button, self.status])
        super().__init__(widgets=[self.mask, below])
        self.model = TableModel()
        self.proxy = QSortFilterProxyModel()
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.view = _table_view(self.proxy)
        self.figure, self.canvas = _histogram_canvas()
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.view)
        splitter.addWidget(self.canvas)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        for label in (self.summary, self.status):  # long lines wrap: the dock keeps its width
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        # the summary above the table, the whole width (a wrapped label gets the height it needs)
        self.native.layout().insertWidget(1, self.summary.native)
        self.native.layout().insertWidget(2, splitter, 1)
        self._histogram_timer = QTimer(self.native)  # goes with the widget
        self._histogram_timer.setSingleShot(True)
        self._histogram_timer.setInterval(HISTOGRAM_DELAY_MS)
        self._histogram_timer.timeout.connect(self._draw_histogram)
        self.layer: Any = None  # the mask shown
        self.selected: int | None = None  # the label of the chosen row
        self.view.selectionModel().currentRowChanged.connect(self._row_chosen)
        self.mask.changed.connect(self._mask_chosen)
        self.highlight.changed.connect(self._highlight_changed)
        self.export_button.changed.connect(lambda _=None: self.export_csv())
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self._mask_chosen()

    # ------------------------------------------------------------------ layers
    def _mask_choices(self, _: Any = None) -> list[str]:
        """Labels layers, the FTU masks first."""
        labels = [layer for layer in self.viewer.layers if layer._type_string == "labels"]
        ftu = [layer.name for layer in labels if SESSION_KEY in (layer.metadata or {})]
        return ftu + [layer.name for layer in labels if layer.name not in ftu]

    def _layers_changed(self, _: Any = None) -> None:
        self.mask.reset_choices()
        if self.layer is not None and self.layer not in self.viewer.layers:
            self._mask_chosen()

    def mask_layer(self) -> Any:
        """The chosen labels layer, or ``None``."""
        name = self.mask.value
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401

    def _mask_chosen(self, _: Any = None) -> None:
        if self.layer is not None:
            self.layer.events.features.disconnect(self._features_changed)
        self.layer, self.selected = self.mask_layer(), None
        if self.layer is not None:
            self.layer.events.features.connect(self._features_changed)
            tracker(self.viewer, self.layer)  # measured (in a worker) if it was not yet
        self._features_changed()

    @property
    def measuring(self) -> bool:
        """Whether the chosen layer is being measured in a worker."""
        return self.layer is not None and tracker(self.viewer, self.layer).busy

    # ------------------------------------------------------------------ table and summary
    def table(self) -> Any:
        """The chosen layer's measurement table (``None`` without a layer)."""
        return None if self.layer is None else table_of(self.layer)

    def _features_changed(self, _: Any = None) -> None:
        table = self.table()
        if table is None:
            self.model.set_table(_empty())
            self.summary.value = "choose a mask (labels) layer"
            self._histogram_later()
            return
        self.model.set_table(table)
        self.summary.value = self._summary_line(table)
        if self.selected is not None:  # the row of the chosen object again, if it is still there
            self._select_row(self.selected)
        self._histogram_later()

    def _summary_line(self, table: Any) -> str:
        from training.measure.summary import summarize

        tissue = (self.layer.metadata or {}).get(TISSUE_KEY)
        summary = summarize(table, image_id(self.layer), tissue)
        parts = [
            f"{summary['ftu_count']} FTUs",
            f"FTU area {summary['ftu_area_mm2']:.3f} mm²",
        ]
        if tissue is not None and math.isfinite(summary["ftus_per_mm2"]):
            parts += [
                f"tissue {summary['tissue_area_mm2']:.2f} mm²",
                f"{summary['ftus_per_mm2']:.2f} FTUs/mm²",
            ]
        else:
            parts.append("tissue area unknown")
        if summary["ftu_count"]:
            parts.append(f"median {summary['area_um2_median']:,.0f} µm²")
        if summary["edge_objects"]:
            parts.append(f"{summary['edge_objects']} cut by the edge")
        return " · ".join(parts)

    def _histogram_later(self) -> None:
        """Redraw the histogram once the loop turns: a burst of edits (or an edit and a
        choice) draws it once, and a stroke does not wait for matplotlib."""
        self._histogram_timer.start()

    def _draw_histogram(self) -> None:
        from matplotlib.ticker import MaxNLocator

        table = self.table()
        self.figure.clear()
        axes = self.figure.add_subplot(111)
        areas = np.array([]) if table is None else table["area_um2"].to_numpy(float)
        if len(areas):
            axes.hist(areas, bins=int(np.clip(len(areas) // 3, 5, 30)), color="#4c72b0")
            chosen = table[table["label"] == self.selected]["area_um2"]
            if len(chosen):
                axes.axvline(float(chosen.iloc[0]), color="#dd8452", linewidth=2)
        axes.set_xlabel("area (µm²)")
        axes.set_ylabel("objects")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no half objects
        axes.tick_params(labelsize=7)
        self.figure.tight_layout()
        self.canvas.draw_idle()

    # ------------------------------------------------------------------ selection
    def _row_chosen(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if not current.isValid():
            return
        label = self.model.label_at(self.proxy.mapToSource(current).row())
        if label != self.selected:
            self.select_label(label)

    def select_label(self, label: int) -> None:
        """Centre the viewer on object ``label``, zoomed to it, and highlight it."""
        table = self.table()
        rows = table[table["label"] == label] if table is not None else []
        if not len(rows):
            return
        row, layer = rows.iloc[0], self.layer
        self.selected = label
        placement = placement_of(layer)
        centre = placement.to_data((row["centroid_y_px"], row["centroid_x_px"]))
        d = placement.downsample
        size = max(row["bbox_height_px"], row["bbox_width_px"]) / d  # labels pixels
        corner = np.asarray(layer.data_to_world((0.0, 0.0)))[-2:]
        across = np.abs(np.asarray(layer.data_to_world((size, size)))[-2:] - corner).max()
        camera = camera_of(self.viewer)
        camera.center = tuple(np.asarray(layer.data_to_world(centre))[-2:])
        camera.zoom = float(min(self.viewer.canvas.size)) / max(across * FOCUS_MARGIN, 1e-6)
        with tracker(self.viewer, layer).display_only():
            layer.selected_label = label
            layer.show_selected_label = bool(self.highlight.value)
        self._select_row(label)
        self._histogram_later()

    def _select_row(self, label: int) -> None:
        labels = (
            self.model.values[:, self.model.columns.index("label")] if self.model.columns else []
        )
        found = np.flatnonzero(np.asarray(labels, float) == label)
        if not len(found):
            self.view.clearSelection()
            return
        index = self.proxy.mapFromSource(self.model.index(int(found[0]), 0))
        with _blocked(self.view.selectionModel()):
            self.view.selectRow(index.row())
        self.view.scrollTo(index)

    def _highlight_changed(self, _: Any = None) -> None:
        if self.layer is not None:
            with tracker(self.viewer, self.layer).display_only():
                self.layer.show_selected_label = bool(self.highlight.value and self.selected)

    # ------------------------------------------------------------------ export
    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the table to ``path`` (default: the CSV file field) atomically; an existing file
        is replaced only after a yes to :func:`confirm_overwrite`. Returns the path written."""
        from training.atomic import atomic_path

        table = self.table()
        text = str(path if path is not None else self.csv_file.value).strip()
        if table is None:
            self.status.value = "nothing written: choose a mask layer"
            return None
        if text in ("", ".") or not Path(text).expanduser().is_absolute():
            self.status.value = f"nothing written: choose a CSV file by its full path ({text!r})"
            return None
        target = Path(text).expanduser()
        if target.suffix.lower() != ".csv":
            target = target.with_name(target.name + ".csv")
        if target.exists() and not confirm_overwrite(target):
            self.status.value = f"nothing written ({target.name} exists, not replaced)"
            return None
        with atomic_path(target) as tmp:
            table.to_csv(tmp, index=False)
        self.status.value = f"wrote {len(table)} rows to {target}"
        return target


def _table_view(model: Any) -> QTableView:
    view = QTableView()
    view.setModel(model)
    view.setSortingEnabled(True)
    view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.verticalHeader().setVisible(False)
    view.setMinimumWidth(120)  # the dock keeps the width the other tabs want
    return view


def _histogram_canvas() -> tuple[Any, Any]:
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.6, 2.2), dpi=90)
    canvas = FigureCanvasQTAgg(figure)
    canvas.setMinimumSize(120, 120)
    return figure, canvas


class _blocked:
    """Signals of a Qt object blocked inside the block (a row chosen by code is not a click)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __enter__(self) -> None:
        self.was = self.obj.blockSignals(True)

    def __exit__(self, *_: Any) -> None:
        self.obj.blockSignals(self.was)


def _empty() -> Any:
    import pandas as pd

    from training.measure.objects import OBJECT_COLUMNS

    return pd.DataFrame({name: [] for name in OBJECT_COLUMNS})


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def _text(column: str, value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if column == "label" or isinstance(value, (int, np.integer)):
        return str(int(value))
    number = _number(value)
    if not math.isfinite(number):
        return ""
    return f"{number:,.1f}" if column.endswith(("_um2", "_um", "_px")) else f"{number:.3f}"
