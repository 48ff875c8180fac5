"""load_iris: the bundled UCI file, in file order, and malformed CSV."""

from __future__ import annotations

import numpy as np
import pytest

from normlab.data import DataError, load_iris
from normlab.data.iris import parse_iris_csv


def test_shapes_dtypes_and_50_per_class() -> None:
    iris = load_iris()
    assert iris.x.shape == (150, 4) and iris.x.dtype == np.float64
    assert iris.y.shape == (150,) and iris.y.dtype == np.int64
    assert np.bincount(iris.y).tolist() == [50, 50, 50]
    assert iris.feature_names == ("sepal_length", "sepal_width", "petal_length", "petal_width")
    assert iris.target_names == ("Iris-setosa", "Iris-versicolor", "Iris-virginica")


def test_rows_are_in_file_order() -> None:
    iris = load_iris()
    # first and last rows of the UCI file, and the class blocks 0-49, 50-99, 100-149
    assert iris.x[0].tolist() == [5.1, 3.5, 1.4, 0.2]
    assert iris.x[-1].tolist() == [5.9, 3.0, 5.1, 1.8]
    np.testing.assert_array_equal(iris.y, np.repeat([0, 1, 2], 50))
    # UCI's row 35 (index 34) differs from Fisher's paper (petal width 0.1, Fisher 0.2); kept as UCI has it
    assert iris.x[34].tolist() == [4.9, 3.1, 1.5, 0.1]


HEADER = "sepal_length,sepal_width,petal_length,petal_width,species\n"
ROW = "5.1,3.5,1.4,0.2,Iris-setosa\n"


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("", "line 1: expected the header"),
        ("a,b,c,d,e\n" + ROW, "line 1: expected the header"),
        (HEADER + ROW + "5.1,3.5,1.4,Iris-setosa\n", "line 3: expected 4 numbers and one of"),
        (HEADER + "5.1,3.5,1.4,0.2,Iris-unknown\n", "line 2: expected 4 numbers and one of"),
        (HEADER + "5.1,x,1.4,0.2,Iris-setosa\n", "line 2: expected 4 numbers"),
        (HEADER + ROW * 149, "expected 150 rows of data, got 149"),
    ],
    ids=["empty", "header", "short-row", "species", "not-a-number", "149-rows"],
)
def test_malformed_csv(text: str, phrase: str) -> None:
    with pytest.raises(DataError, match=phrase) as info:
        parse_iris_csv(text, "some/iris.csv")
    assert "some/iris.csv" in str(info.value)


def test_blank_lines_are_skipped() -> None:
    iris = parse_iris_csv(HEADER + ROW * 150 + "\n", "iris.csv")
    assert iris.x.shape == (150, 4)
