"""Errors and warnings of the dataset layer.

Every ``DatasetError`` message names the file or value at fault, says what is wrong
and what to do about it: users bring their own folders, and a bare ``KeyError`` from
deep inside a reader tells them nothing. ``DatasetError`` subclasses ``ValueError`` so
the CLI prints it as a one-line error instead of a traceback.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset folder, manifest or image file cannot be used as it is."""


class DatasetWarning(UserWarning):
    """Something in a dataset looks wrong but can still be used."""


class IntensityConventionWarning(DatasetWarning):
    """The declared intensity convention ("hu" / "windowed-uint8") does not fit the values."""
