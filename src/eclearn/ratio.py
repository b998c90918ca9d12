"""Old home of :class:`~eclearn.Ratio`; it lives in :mod:`eclearn.statistics` now."""

from eclearn.statistics import Ratio, as_value

__all__ = ["Ratio", "as_value"]
