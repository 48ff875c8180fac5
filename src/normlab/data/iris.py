"""Fisher's Iris data, bundled (UCI version, 150 rows in file order)."""

from __future__ import annotations

import csv
import io
from importlib import resources
from typing import NamedTuple

import numpy as np

from normlab.data.errors import DataError

FEATURE_NAMES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
TARGET_NAMES = ("Iris-setosa", "Iris-versicolor", "Iris-virginica")
_BUNDLED = "normlab/data/files/iris.csv"


class IrisData(NamedTuple):
    """``x`` float64 (150, 4) in centimetres, ``y`` int64 (150,) indexing ``target_names``."""

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]


def load_iris() -> IrisData:
    """The bundled Iris data: rows in the file's order (50 setosa = 0, 50 versicolor = 1, 50 virginica = 2)."""
    text = (resources.files("normlab.data") / "files" / "iris.csv").read_text(encoding="utf-8")
    return parse_iris_csv(text, _BUNDLED)


def parse_iris_csv(text: str, name: str) -> IrisData:
    """Parse Iris CSV text (header ``sepal_length,sepal_width,petal_length,petal_width,species``)."""
    rows = list(csv.reader(io.StringIO(text)))
    header = (*FEATURE_NAMES, "species")
    if not rows or tuple(rows[0]) != header:
        got = rows[0] if rows else "an empty file"
        raise DataError(f"{name}: line 1: expected the header {','.join(header)}, got {got}")
    x, y = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # blank lines (some copies of the UCI file end with one)
        if len(row) != len(header) or row[-1] not in TARGET_NAMES:
            raise DataError(
                f"{name}: line {lineno}: expected 4 numbers and one of {', '.join(TARGET_NAMES)}, got {row}"
            )
        try:
            x.append([float(v) for v in row[:-1]])
        except ValueError as e:
            raise DataError(f"{name}: line {lineno}: expected 4 numbers, got {row[:-1]}") from e
        y.append(TARGET_NAMES.index(row[-1]))
    if len(x) != 150:
        raise DataError(f"{name}: expected 150 rows of data, got {len(x)}")
    return IrisData(
        np.array(x, dtype=np.float64), np.array(y, dtype=np.int64), FEATURE_NAMES, TARGET_NAMES
    )
