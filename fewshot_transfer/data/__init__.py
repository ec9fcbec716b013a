"""Data layer: CT phantoms, dataset folders, caching, patient splits and episode samplers."""

from fewshot_transfer.data.slices import LUNG_WINDOW, SliceSet, hu_to_unit, unit_to_hu

__all__ = ["LUNG_WINDOW", "SliceSet", "hu_to_unit", "unit_to_hu"]
