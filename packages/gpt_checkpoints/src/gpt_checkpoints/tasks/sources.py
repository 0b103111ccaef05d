"""Datasets the task networks train on: scikit-learn's digits offline, MNIST and CIFAR-10 from disk.

Every source returns standardised float tensors and a fixed train/test split, so every run of a
task sees the same data: digits with the training set's mean and standard deviation, MNIST and
CIFAR-10 with the released G.pt's constants, so its checkpoints see the inputs they were trained
on.
MNIST and CIFAR-10 are read from torchvision's on-disk layouts by ``tasks.vision_io``
(no download here, no unpickling of arbitrary objects).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.data.digits import load_digits

SOURCES = ("digits", "digits_image", "mnist", "cifar10")


@dataclass
class SupervisedData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = 10

    def to(self, device: torch.device) -> SupervisedData:
        x_tr, y_tr, x_te, y_te = (
            t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)
        )
        return SupervisedData(x_tr, y_tr, x_te, y_te, self.num_classes)


def _standardise(x_train: np.ndarray, x_test: np.ndarray, axis) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(axis=axis, keepdims=True)
    std = x_train.std(axis=axis, keepdims=True) + 1e-8
    return (x_train - mean) / std, (x_test - mean) / std


def _digits(image: bool) -> SupervisedData:
    """scikit-learn's 1,797 real 8x8 digits; a fixed stratified 80/20 split (seed 0)."""
    from sklearn.model_selection import train_test_split

    images, labels = load_digits()  # [N, 1, 8, 8] in [-1, 1]
    x, y = images[:, 0].add(1).div(2).numpy(), labels.numpy()  # [N, 8, 8] in [0, 1]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_tr, x_te = _standardise(x_tr, x_te, axis=None)
    if image:
        x_tr, x_te = x_tr[:, None], x_te[:, None]
    else:
        x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    return SupervisedData(
        *(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te))
    )


# The released G.pt's input normalisation (official data_gen/train_mnist.py, train_cifar10.py).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # of [0, 1] pixels (torchvision Normalize)
CIFAR10_MEAN = (125.3, 123.0, 113.9)  # per channel, of [0, 255] pixels (official color_norm)
CIFAR10_STD = (63.0, 62.1, 66.7)


def _mnist(root: str) -> SupervisedData:
    from gpt_checkpoints.tasks.vision_io import read_mnist

    x_tr, y_tr, x_te, y_te = read_mnist(root)
    x_tr, x_te = (a.reshape(len(a), -1).astype(np.float32) / 255.0 for a in (x_tr, x_te))
    x_tr, x_te = ((a - MNIST_MEAN) / MNIST_STD for a in (x_tr, x_te))
    return SupervisedData(
        *(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te))
    )


def _cifar10(root: str) -> SupervisedData:
    from gpt_checkpoints.tasks.vision_io import read_cifar10

    x_tr, y_tr, x_te, y_te = read_cifar10(root)
    mean = np.array(CIFAR10_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(CIFAR10_STD, np.float32).reshape(1, 3, 1, 1)
    x_tr, x_te = ((a.transpose(0, 3, 1, 2).astype(np.float32) - mean) / std for a in (x_tr, x_te))
    return SupervisedData(
        *(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te))
    )


def load_source(name: str, root: str | None = None) -> SupervisedData:
    """Load a named source; ``root`` is the torchvision root folder for MNIST and CIFAR-10."""
    if name in ("digits", "digits_image"):
        return _digits(image=name == "digits_image")
    if name in ("mnist", "cifar10"):
        if not root:
            raise ValueError(
                f"the {name} task reads torchvision's on-disk layout: pass its root folder "
                f"(data.root=/path/to/root, the folder holding "
                f"{'MNIST/raw' if name == 'mnist' else 'cifar-10-batches-py'}); offline, use the "
                f"digits tasks instead"
            )
        return _mnist(root) if name == "mnist" else _cifar10(root)
    raise ValueError(f"unknown data source {name!r}; choose one of {', '.join(SOURCES)}")
