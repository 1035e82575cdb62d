"""DICOM WSI test files written by wsidicom's own writer from a slide's pyramid levels.

wsidicomizer (the usual converter) pins an older wsidicom and needs libturbojpeg, so the tests
give wsidicom a minimal source instead: each level of a :class:`training.slides.Slide` as
uncompressed (lossless) tiles, with the slide's pixel size as PixelSpacing. ``WsiDicom.save``
then writes the files as any DICOM WSI writer built on wsidicom does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from wsidicom import WsiDicom
from wsidicom.codec import Encoder
from wsidicom.geometry import Point, Size, SizeMm
from wsidicom.instance import ImageData, WsiInstance
from wsidicom.metadata import (
    Equipment,
    Image,
    ImageType,
    Label,
    Patient,
    Pyramid,
    Series,
    SlideSample,
    Study,
    WsiMetadata,
)
from wsidicom.metadata import Slide as SlideMetadata
from wsidicom.metadata.schema.dicom.wsi import WsiMetadataDicomSchema
from wsidicom.source import Source

from training.slides import Slide


class LevelData(ImageData):
    """One pyramid level as uncompressed RGB tiles (white past the image's edge)."""

    def __init__(self, level: np.ndarray, pixel_size_um: float, tile: int) -> None:
        self._level, self._um, self._tile = level, pixel_size_um, tile
        super().__init__(Encoder.create(ExplicitVRLittleEndian, 8, "RGB"))

    transfer_syntax = property(lambda self: ExplicitVRLittleEndian)
    image_size = property(lambda self: Size(self._level.shape[1], self._level.shape[0]))
    tile_size = property(lambda self: Size(self._tile, self._tile))
    pixel_spacing = property(lambda self: SizeMm(self._um / 1000, self._um / 1000))
    imaged_size = property(
        lambda self: SizeMm(
            self._level.shape[1] * self._um / 1000, self._level.shape[0] * self._um / 1000
        )
    )
    samples_per_pixel = property(lambda self: 3)
    photometric_interpretation = property(lambda self: "RGB")
    bits = property(lambda self: 8)
    image_coordinate_system = property(lambda self: None)
    thread_safe = property(lambda self: True)
    lossy_compression = property(lambda self: None)
    transcoder = property(lambda self: None)

    def get_decoded_tile(
        self, tile_point: Point, z: float, path: str, cache: bool = True
    ) -> np.ndarray:
        t = self._tile
        top, left = tile_point.y * t, tile_point.x * t
        out = np.full((t, t, 3), 255, np.uint8)
        block = self._level[top : top + t, left : left + t]
        out[: block.shape[0], : block.shape[1]] = block
        return out

    def get_encoded_tile(self, tile: Point, z: float, path: str) -> bytes:
        return self.encoder.encode(self.get_decoded_tile(tile, z, path))


class LevelsSource(Source):
    """A wsidicom source of a slide's levels (one VOLUME instance each, one pyramid)."""

    def __init__(self, slide: Slide, tile: int) -> None:
        super().__init__()
        metadata = WsiMetadata(
            study=Study(uid=generate_uid()),
            series=Series(uid=generate_uid()),
            patient=Patient(),
            equipment=Equipment(),
            slide=SlideMetadata(
                identifier="slide", samples=[SlideSample(identifier="sample", uid=generate_uid())]
            ),
            pyramid=Pyramid(image=Image(), optical_paths=[], uid=generate_uid()),
            label=Label(),
            frame_of_reference_uid=generate_uid(),
            dimension_organization_uids=[generate_uid()],
        )
        self._instances = []
        for level, downsample in zip(slide.levels, slide.level_downsamples, strict=True):
            data = LevelData(np.asarray(level), slide.pixel_size_um * downsample, tile)
            # each instance gets a dataset of its own (creating one sets its SOP instance uid)
            dataset = WsiMetadataDicomSchema().dump(metadata, ImageType.VOLUME, True)
            self._instances.append(WsiInstance.create_instance(data, dataset, ImageType.VOLUME, 0))

    base_dataset = property(lambda self: self._instances[0].dataset)
    level_instances = property(lambda self: self._instances)
    label_instances = property(lambda self: [])
    overview_instances = property(lambda self: [])
    thumbnail_instances = property(lambda self: [])
    annotation_instances = property(lambda self: [])

    def close(self) -> None:
        pass


def write_dicom(folder: Path, slide: Slide, tile: int = 64) -> list[Path]:
    """Write ``slide`` (every level, losslessly) as a DICOM WSI into ``folder``; its files."""
    folder.mkdir(parents=True, exist_ok=True)
    with WsiDicom(LevelsSource(slide, tile)) as wsi:
        return [Path(str(p)) for p in wsi.save(folder)]
