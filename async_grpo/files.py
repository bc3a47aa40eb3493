"""Atomic file writes: results survive a kill (write a temporary file in the same directory,
then rename it over the target, which POSIX makes atomic). The project's one copy of this."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Iterator, Mapping, Sequence

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; on success it is renamed to `path` (on an exception
    it is removed and `path` is untouched)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_json_atomic(path: str, obj: Any) -> None:
    """JSON with numpy values converted and non-finite floats written as null."""
    write_text_atomic(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_csv_atomic(path: str, columns: Mapping[str, Sequence]) -> None:
    """One column per key, floats with 9 significant digits."""
    names = list(columns)
    n = len(next(iter(columns.values())))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(names)
    for i in range(n):
        row = []
        for k in names:
            v = columns[k][i]
            if isinstance(v, (float, np.floating)):
                row.append(f"{float(v):.9g}")
            else:
                row.append(str(v.item() if hasattr(v, "item") else v))
        w.writerow(row)
    write_text_atomic(path, buf.getvalue())


def save_npz_atomic(path: str, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
