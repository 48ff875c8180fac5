"""The one exception type of :mod:`normlab.data`."""

from __future__ import annotations


class DataError(ValueError):
    """A data file or data set that is missing, malformed, or not what was expected.

    The message names the file (or directory) and says what was expected and what was found.
    """
