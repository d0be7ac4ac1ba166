"""Real data that works offline, and data files: ``load_dataset(name_or_path)`` gives a
:class:`Dataset` (items, labels, modality, task, classes, meta with description, source,
licence, citation and size). ``builtin_datasets()`` lists the built-in names.

Example:
    >>> from layerscope.data import load_dataset
    >>> train, test = load_dataset("mnist", limit=100, seed=0).split(test_fraction=0.2, seed=0)
    >>> len(train), len(test), tuple(test.items.shape[1:])
    (80, 20, (1, 28, 28))
"""

from .builtin import builtin_datasets, load_dataset
from .dataset import Dataset, take_limit

__all__ = ["Dataset", "builtin_datasets", "load_dataset", "take_limit"]
