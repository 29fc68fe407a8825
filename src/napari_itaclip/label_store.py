"""`NAME_labels.zarr`: the class ids of an image or stack as a zarr array, written plane by
plane, atomically and resumably, so that a big stack's labels are never whole in one
process's memory. numpy only at import; zarr loads when a store is opened.

The array is (*stack, H, W) (a 2D image: (H, W)) of class ids, as in the label TIFF, dtype
`labels.label_id_dtype` of a background class list (class ids are then label ids: uint8 up
to 256 classes), chunked one plane at a time (tiles of at most TILE x TILE). Its attribute
`napari-itaclip` holds what `io.label_metadata` records (class names, the class id being
the position, and the background flag) and the run's parameters.

How it is written (`LabelStore`):

- the array is built in a hidden folder next to its final name, `.partial-NAME_labels.zarr/`,
  holding the array (`labels.zarr`) and, for every plane written, an empty marker file made
  after the plane's data (`planes/`); a plane without its marker (a writer killed mid-plane)
  is written again, a plane with one is never recomputed;
- when every plane has its marker, the array is renamed to `NAME_labels.zarr` (one rename, so
  a store under the final name is always complete) and the partial folder is removed;
- the partial folder's name holds no process id: a later run, or any worker of a cluster,
  resumes it. One made for other classes, parameters or another image size is started anew.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import LABEL_METADATA_KEY, label_metadata
from .labels import label_id_dtype

SUFFIX = "_labels.zarr"
PARTIAL_PREFIX = ".partial-"
# Largest chunk side: a plane up to TILE x TILE is one chunk (4 MiB of uint8); larger planes
# are tiled, so that a viewer reads only what it shows.
TILE = 2048
_ARRAY = "labels.zarr"
_MARKERS = "planes"
_REPLACED = "replaced"  # an older store moved aside by an overwrite, removed with the folder
_NEEDS_ZARR = "the zarr format needs the zarr package: pip install 'napari-itaclip[distributed]'"


def partial_folder(path: Path) -> Path:
    """The hidden folder in which the store `path` is built."""
    path = Path(path)
    return path.with_name(PARTIAL_PREFIX + path.name)


def remove_leftover_partial(path: Path) -> None:
    """Delete the partial folder of `path` if that store is finished: a writer killed between
    the final rename and removing the folder left it."""
    if Path(path).exists():
        shutil.rmtree(partial_folder(path), ignore_errors=True)


def check_zarr_installed() -> None:
    """ValueError unless zarr can be imported (checked without importing it)."""
    if importlib.util.find_spec("zarr") is None:
        raise ValueError(_NEEDS_ZARR)


def _zarr():
    try:
        import zarr
    except ImportError:
        raise ValueError(_NEEDS_ZARR) from None
    return zarr


@dataclass(frozen=True)
class LabelStore:
    """The store `path` (the final `NAME_labels.zarr`) of an image with these stack and plane
    shapes; picklable, so that a cluster's tasks each write their own planes into it.

        store = LabelStore(path, (Z,), (H, W)).open(class_names, background, parameters)
        for index in store.missing():
            store.write(index, class_ids_of_plane(index))
        store.finish()
    """

    path: Path
    stack_shape: tuple[int, ...]
    plane_shape: tuple[int, int]

    @property
    def partial(self) -> Path:
        return partial_folder(self.path)

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.stack_shape, *self.plane_shape)

    def open(
        self, class_names, background: bool, parameters: dict, *, restart: bool = False
    ) -> LabelStore:
        """Make the partial store ready for writing: keep the one there when it was made for
        this shape, these classes and `parameters` (JSON), else start a new one (restart:
        always). Returns the store."""
        zarr = _zarr()
        dtype = label_id_dtype(len(class_names), background=True)
        metadata = {**label_metadata(class_names, background), "parameters": parameters}
        attributes = {LABEL_METADATA_KEY: json.loads(json.dumps(metadata))}
        if not restart and self._resumable(zarr, dtype, attributes):
            return self
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        array = zarr.open_array(
            self.partial / _ARRAY,
            mode="w",
            shape=self.shape,
            chunks=(1,) * len(self.stack_shape) + tuple(min(n, TILE) for n in self.plane_shape),
            dtype=dtype,
            fill_value=0,
        )
        array.attrs.update(attributes)
        (self.partial / _MARKERS).mkdir()  # last: a store without it is started anew
        return self

    def _resumable(self, zarr, dtype, attributes: dict) -> bool:
        if not (self.partial / _MARKERS).is_dir():
            return False
        try:
            array = zarr.open_array(self.partial / _ARRAY, mode="r")
            return (
                tuple(array.shape) == self.shape
                and array.dtype == dtype
                and array.attrs.asdict() == attributes
            )
        except Exception:  # a damaged or foreign store is started anew
            return False

    def indices(self) -> list[tuple[int, ...]]:
        """Every plane's stack index, in order."""
        return [tuple(int(i) for i in index) for index in np.ndindex(self.stack_shape)]

    def _marker(self, index: tuple[int, ...]) -> Path:
        return self.partial / _MARKERS / ("plane" + ".".join(str(i) for i in index))

    def missing(self) -> list[tuple[int, ...]]:
        """The planes not written yet, in order."""
        written = set(os.listdir(self.partial / _MARKERS))
        return [index for index in self.indices() if self._marker(index).name not in written]

    def write(self, index: tuple[int, ...], class_ids: np.ndarray) -> None:
        """Store the plane at stack `index`, then mark it written."""
        array = _zarr().open_array(self.partial / _ARRAY, mode="r+")
        array[index] = np.asarray(class_ids).astype(array.dtype, copy=False)
        self._marker(index).touch()

    def finish(self) -> None:
        """Move the array to its final name (replacing an older store) once every plane is
        written; ValueError if some are not."""
        missing = self.missing()
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(self.indices())} planes of {self.path.name} are not "
                "written"
            )
        if self.path.exists():  # --overwrite: the final name never holds a partial store
            os.replace(self.path, self.partial / _REPLACED)
        os.replace(self.partial / _ARRAY, self.path)
        shutil.rmtree(self.partial)

    def read(self, index: tuple[int, ...]) -> np.ndarray:
        """One plane of the finished store."""
        return np.asarray(_zarr().open_array(self.path, mode="r")[index])
