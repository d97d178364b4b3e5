"""Write tables too large to hold at once: rows appended chunk by chunk, then one ``.h5ad``.

:class:`ChunkedTable` appends row blocks of named 2-D arrays to a zarr group on disk
(``X``, ``obsm/<key>``, ``obs/<column>``); :meth:`ChunkedTable.write_h5ad` then streams
them into an ``.h5ad`` (written atomically, copied block by block), so peak memory is one
block whatever the number of rows. ``read_h5ad(path, backed="r")`` opens the result
without loading ``X``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_COPY_ROWS = 65_536  # rows per block when copying into the .h5ad


class ChunkedTable:
    """Row blocks appended to a zarr group at ``path`` (created empty; an old one is removed).

    Parameters
    ----------
    path
        Folder of the zarr group (temporary parts; delete it with :meth:`remove`).
    chunk_rows
        Rows per zarr chunk.
    """

    def __init__(self, path: str | Path, chunk_rows: int = 4096) -> None:
        import zarr

        self.path, self.chunk_rows = Path(path), int(chunk_rows)
        if self.path.exists():
            shutil.rmtree(self.path)
        self.group = zarr.open_group(store=str(self.path), mode="w")
        self.n_rows = 0

    def append(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Append one block: every array has the same number of rows (1-D or 2-D)."""
        sizes = {len(a) for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"blocks must have the same number of rows, got {sizes}")
        for name, block in arrays.items():
            block = np.ascontiguousarray(block)
            if name not in self.group:
                self.group.create_array(
                    name, shape=(0, *block.shape[1:]), chunks=(self.chunk_rows, *block.shape[1:]), dtype=block.dtype
                )
            self.group[name].append(block, axis=0)
        self.n_rows += sizes.pop()

    def array(self, name: str):
        """The zarr array ``name`` (lazy; slice it to read)."""
        return self.group[name]

    def write_h5ad(
        self, out: str | Path, *, var: pd.DataFrame, obs_names: Any, obs: Mapping[str, str] | None = None,
        obsm: Mapping[str, str] | None = None, uns: Mapping[str, Any] | None = None, x: str = "X",
    ) -> Path:  # fmt: skip
        """Write an ``.h5ad`` atomically: ``X`` from array ``x``, obs columns / obsm from named arrays.

        ``obs_names``: a callable ``(start, stop) -> names`` or a sequence of strings;
        ``obs``/``obsm``: output name -> array name. ``X`` and ``obsm`` are copied block by block.
        """
        import anndata as ad
        import h5py

        from stfusion.io.atomic import atomic_path

        n = self.n_rows
        names = obs_names(0, n) if callable(obs_names) else list(obs_names)
        frame = pd.DataFrame(index=pd.Index([str(v) for v in names]))
        for col, src in (obs or {}).items():
            frame[col] = self.group[src][:] if n else np.zeros(0)
        shell = ad.AnnData(obs=frame, var=var, uns=dict(uns or {}))
        out = Path(out)
        with atomic_path(out) as tmp:
            shell.write_h5ad(tmp)
            with h5py.File(tmp, "a") as f:
                _copy_dense(f, "X", self._source(x, len(var)))
                for key, src in (obsm or {}).items():
                    _copy_dense(f["obsm"], key, self._source(src))
        return out

    def _source(self, name: str, width: int | None = None):
        if name in self.group:
            return self.group[name]
        return np.zeros((0, width or 0), np.float32)

    def remove(self) -> None:
        """Delete the parts folder."""
        shutil.rmtree(self.path, ignore_errors=True)


def _copy_dense(group, key: str, source) -> None:
    """A dense dataset ``group[key]`` filled from ``source`` (zarr or numpy) block by block."""
    shape, dtype = tuple(source.shape), np.dtype(source.dtype)
    if key in group:
        del group[key]
    dset = group.create_dataset(key, shape=shape, dtype=dtype, chunks=True if shape[0] else None)
    for start in range(0, shape[0], _COPY_ROWS):
        stop = min(start + _COPY_ROWS, shape[0])
        dset[start:stop] = np.asarray(source[start:stop])
    dset.attrs["encoding-type"] = "array"
    dset.attrs["encoding-version"] = "0.2.0"
