"""TiltSeries: one aligned tilt series — its geometry (:mod:`subtomo.geometry.tilt_series`)
and its images.

Images are read lazily: ``rlnMicrographName`` of each tilt (``N@stack.mrcs`` or a single image)
or, for RELION 4 sets, ``rlnTomoTiltSeriesName`` (a stack, one image per tilt in table order).
Raw tilt images show protein dark; everything that extracts from them multiplies by −1 (as
RELION's tomography programs do by default) so that subtomograms show it white.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from subtomo.errors import InputError
from subtomo.geometry.tilt_series import TiltSeriesGeometry
from subtomo.io import validate
from subtomo.io.files import resolve
from subtomo.io.mrc import read_mrc_header, read_section

__all__ = ["TiltSeries"]


@dataclass
class TiltSeries(TiltSeriesGeometry):
    """One tilt series with its images (see the module docstring); ``image_size`` (W, H px)
    is read from the first image's header when not given."""

    @property
    def image_size_px(self) -> tuple[int, int]:
        """``(W, H)`` of the tilt images: given, else from the first image's header."""
        if self.image_size is None:
            path, _ = self.image_sources()[0]
            self._image_file(path)
            (_, ny, nx), _ = read_mrc_header(path)
            self.image_size = (nx, ny)
        return self.image_size

    def _image_file(self, path: Path) -> None:
        if not path.is_file():
            raise InputError(self.source, f"tilt series {self.name}: image file "
                             f"{str(path)!r} not found", field="rlnMicrographName")

    def image_sources(self) -> list[tuple[Path, int]]:
        """``(file, 0-based index)`` of each tilt image, in table order."""
        base = Path(self.source).parent if self.source else None
        if "rlnMicrographName" in self.tilts:
            out = []
            for name in self.tilts["rlnMicrographName"].astype(str):
                index = int(name.split("@")[0]) - 1 if "@" in name else 0
                out.append((resolve(name, base), index))
            return out
        stack = self.globals.get("rlnTomoTiltSeriesName")
        if stack is None:
            raise InputError(self.source, f"tilt series {self.name}: no images (neither "
                             "rlnMicrographName per tilt nor rlnTomoTiltSeriesName)",
                             field="rlnMicrographName")
        path = resolve(str(stack), base)
        return [(path, i) for i in range(self.n_tilts)]

    def check_images(self) -> None:
        """Fail with one clear line if an image file is missing, truncated or of another image
        size than the first, or if a stack named only by ``rlnTomoTiltSeriesName`` (images taken
        in table order) does not hold exactly as many images as the table has rows."""
        counts: dict[Path, int] = {}
        rows: dict[Path, int] = {}
        w, h = self.image_size_px
        for path, index in self.image_sources():
            if path not in counts:
                self._image_file(path)
                (counts[path], ny, nx), _ = read_mrc_header(path)
                if (nx, ny) != (w, h):
                    raise InputError(self.source, f"tilt series {self.name}: {str(path)!r} "
                                     f"has images of {nx}×{ny} px, the first file {w}×{h}",
                                     field="rlnMicrographName")
            rows[path] = rows.get(path, 0) + 1
            if index >= counts[path]:
                raise InputError(self.source, f"tilt series {self.name}: {str(path)!r} has "
                                 f"{counts[path]} images but the tilt table needs image "
                                 f"{index + 1}", field="rlnMicrographName")
        if "rlnMicrographName" in self.tilts:
            return  # ``n@stack`` names each image: a table may list a subset (excluded tilts)
        for path, n in rows.items():
            if n != counts[path]:
                raise InputError(self.source, f"tilt series {self.name}: {str(path)!r} has "
                                 f"{counts[path]} images but the tilt table lists {n}",
                                 field="rlnMicrographName")

    def read_images(self, tilts: list[int] | np.ndarray | None = None) -> Tensor:
        """Tilt images ``(T', H, W)`` float32 (all tilts, or ``tilts`` in the order given).
        Call :meth:`check_images` on the whole series first."""
        sources = self.image_sources()
        chosen = range(self.n_tilts) if tilts is None else [int(t) for t in tilts]
        w, h = self.image_size_px
        out = np.empty((len(chosen), h, w), dtype=np.float32)
        for j, t in enumerate(chosen):
            path, index = sources[t]
            self._image_file(path)
            image = read_section(path, index)
            if image.shape != (h, w):
                raise InputError(self.source, f"tilt series {self.name}: {str(path)!r} "
                                 f"has images of {image.shape[1]}×{image.shape[0]} px, "
                                 f"expected {w}×{h}", field="rlnMicrographName")
            out[j] = image
            validate.finite(out[j], path, what=f"tilt series {self.name}: image {index + 1}",
                            field="rlnMicrographName")
        return torch.from_numpy(out)
