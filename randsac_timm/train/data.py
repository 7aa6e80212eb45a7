"""Datasets, transforms and reproducible loaders for RandSAC pretraining and evaluation.

Fashion-MNIST is read straight from its idx files (Debian's ``dataset-fashion-mnist`` puts them in
``/usr/share/datasets/fashion-mnist``); CIFAR goes through torchvision, folders of images through
``ImageFolder``, and names with a timm prefix (``torch/cifar10``, ``hfds/...``) through
``timm.data.create_dataset``.

Reproducible order: ``build_loader`` gives every loader a sampler with ``set_epoch(epoch)`` (the
permutation of epoch ``e`` depends only on ``seed + e``) and ``start_index`` (skip the first indices of
that permutation). ``set_loader_epoch(loader, epoch, skip_batches)`` sets both, so a run resumed in the
middle of epoch ``e`` sees exactly the batches it had not yet seen.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import random
from functools import partial
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler, Subset
from torchvision import transforms

_logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_STATS",
    "DEFAULT_FASHION_MNIST_DIRS",
    "DistributedEpochSampler",
    "EpochSeededSampler",
    "FashionMNIST",
    "LabelledSubset",
    "PadTo",
    "SeededAugmentation",
    "build_dataset",
    "build_eval_transform",
    "build_loader",
    "build_pretrain_transform",
    "canonical_dataset_name",
    "check_crop_scale",
    "dataset_in_chans",
    "dataset_num_classes",
    "dataset_pad_to",
    "dataset_stats",
    "denormalize",
    "seed_worker",
    "set_loader_epoch",
]

# Searched when no ``data_dir`` is given (tests monkeypatch this to hide the installed copy).
DEFAULT_FASHION_MNIST_DIRS: Tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)

_FMNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dims
_IDX_LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dim

DATASET_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)),
}

_NUM_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
_ALIASES = {
    "fashion_mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "cifar10": "cifar10",
    "cifar_10": "cifar10",
    "cifar100": "cifar100",
    "cifar_100": "cifar100",
    "imagefolder": "imagefolder",
    "image_folder": "imagefolder",
    "folder": "imagefolder",
}
ACCEPTED_NAMES = "fashion_mnist (fashion-mnist, fmnist), cifar10, cifar100, imagefolder, or a timm dataset name "
ACCEPTED_NAMES += "with a prefix such as torch/cifar10, hfds/<hub-id>, tfds/<name>, wds/<name>"


def canonical_dataset_name(name: str) -> str:
    """Map a dataset name or alias to its canonical key; timm names (containing ``/``) pass unchanged.

    Raises ValueError listing the accepted names for an empty or unknown name.
    """
    if not name:
        raise ValueError(f"no dataset name given; accepted: {ACCEPTED_NAMES}")
    if "/" in name:
        return name
    key = name.strip().lower().replace("-", "_")
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {name!r}; accepted: {ACCEPTED_NAMES}")
    return _ALIASES[key]


def dataset_stats(name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) for normalisation; imagefolder and timm-prefixed names use timm's ImageNet stats."""
    return DATASET_STATS.get(canonical_dataset_name(name), DATASET_STATS["imagefolder"])


def dataset_in_chans(name: str) -> int:
    """Number of image channels the dataset yields: 1 for Fashion-MNIST (kept grayscale), else 3."""
    return 1 if canonical_dataset_name(name) == "fashion_mnist" else 3


def dataset_num_classes(name: str, dataset: Optional[Dataset] = None) -> int:
    """Number of classes: fixed for the named datasets, else read from ``dataset`` (``classes`` or a
    timm reader's ``class_to_idx``). Raises ValueError if it cannot be determined."""
    key = canonical_dataset_name(name)
    if key in _NUM_CLASSES:
        return _NUM_CLASSES[key]
    if dataset is not None:
        classes = getattr(dataset, "classes", None)
        if classes is None and isinstance(dataset, Subset):
            classes = getattr(dataset.dataset, "classes", None)
        if classes is None:
            reader = getattr(dataset, "reader", None)
            class_to_idx = getattr(reader, "class_to_idx", None)
            if class_to_idx:
                return len(class_to_idx)
        if classes is not None:
            return len(classes)
    raise ValueError(f"cannot tell the number of classes of dataset {name!r}; pass it explicitly")


def dataset_pad_to(name: str, img_size: int) -> Optional[int]:
    """Padding rule: Fashion-MNIST at ``img_size == 32`` is zero-padded 28 -> 32 (2 pixels each side);
    everything else returns None (the transforms then resize). Fashion-MNIST at its native ``img_size == 28``
    (a 7x7 grid of 4x4 patches, no padding tokens) is neither padded nor resized: the eval transform's
    ``Resize(28)`` returns a 28x28 image unchanged and the pretraining crop is cut from the 28x28 image."""
    if canonical_dataset_name(name) == "fashion_mnist" and img_size == 32:
        return 32
    return None


# ----------------------------------------------------------------------------------------------------
# Fashion-MNIST from idx files


def _find_idx_file(folder: str, stem: str) -> Optional[str]:
    for candidate in (os.path.join(folder, stem + ".gz"), os.path.join(folder, stem)):
        if os.path.isfile(candidate):
            return candidate
    return None


def _read_idx(path: str, magic: int) -> np.ndarray:
    """Read an uint8 idx file (gzipped or plain); check magic number, dims and exact size."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e}); reinstall it") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx file ({len(raw)} bytes, header needs {header})")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: bad idx magic number {found} (expected {magic}); not a Fashion-MNIST file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise ValueError(f"{path}: idx file has {len(raw)} bytes, expected {expected} for shape {shape}; truncated?")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


class FashionMNIST(Dataset):
    """Fashion-MNIST read from its idx files; items are ``(PIL image mode 'L', int label)``.

    Searched: ``root`` and ``root/FashionMNIST/raw`` (torchvision layout) when ``root`` is given, else
    ``DEFAULT_FASHION_MNIST_DIRS``. An explicit ``root`` never falls back to the installed copy, so a mistyped
    ``--data-dir`` stops the run instead of silently training on other files. ``train`` picks the official 60k train / 10k test split.
    ``data``: (N, 28, 28) uint8 tensor, ``targets``: (N,) int64 tensor.
    """

    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

    def __init__(
        self,
        root: Optional[str] = None,
        train: bool = True,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        download: bool = False,
    ) -> None:
        self.root = root
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        searched = self.search_dirs(root)
        images_stem, labels_stem = _FMNIST_FILES[train]
        for folder in searched:
            images_path = _find_idx_file(folder, images_stem)
            labels_path = _find_idx_file(folder, labels_stem)
            if images_path and labels_path:
                images = _read_idx(images_path, _IDX_IMAGES_MAGIC)
                labels = _read_idx(labels_path, _IDX_LABELS_MAGIC)
                if len(images) != len(labels):
                    raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
                if labels.size and labels.max() >= len(self.classes):
                    raise ValueError(f"{labels_path}: label {labels.max()} out of range 0..{len(self.classes) - 1}")
                self.data = torch.from_numpy(images)
                self.targets = torch.from_numpy(labels.astype(np.int64))
                self.folder = folder
                return
        if download:
            self._download(root)
            return
        installed = [d for d in DEFAULT_FASHION_MNIST_DIRS if _find_idx_file(d, images_stem)]
        fix = (
            f"pass --data-dir DIR holding them, or drop --data-dir to use the installed copy in {installed[0]}"
            if root and installed
            else "install them with `apt-get install -y dataset-fashion-mnist` (files land in "
            "/usr/share/datasets/fashion-mnist) or pass --data-dir DIR holding the idx files"
        )
        raise FileNotFoundError(
            f"Fashion-MNIST {'train' if train else 't10k'} idx files ({images_stem}[.gz], {labels_stem}[.gz]) not "
            f"found in any of: {', '.join(searched) or '(nothing to search)'}; {fix}."
        )

    @staticmethod
    def search_dirs(root: Optional[str]) -> List[str]:
        return [root, os.path.join(root, "FashionMNIST", "raw")] if root else list(DEFAULT_FASHION_MNIST_DIRS)

    def _download(self, root: Optional[str]) -> None:
        from torchvision.datasets import FashionMNIST as TVFashionMNIST

        tv = TVFashionMNIST(root or "data", train=self.train, download=True)  # needs network
        self.data = tv.data.to(torch.uint8)
        self.targets = tv.targets.to(torch.int64)
        self.folder = tv.raw_folder

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index].numpy())  # 2-D uint8 -> mode 'L'
        target = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


# ----------------------------------------------------------------------------------------------------
# Dataset factory


class LabelledSubset(Subset):
    """``Subset`` that keeps the parent's ``classes`` and exposes the subset's ``targets`` if known."""

    @property
    def classes(self):
        return getattr(self.dataset, "classes", None)

    @property
    def targets(self) -> Optional[torch.Tensor]:
        targets = getattr(self.dataset, "targets", None)
        if targets is None:
            return None
        return torch.as_tensor(targets)[torch.as_tensor(self.indices, dtype=torch.long)]


def _subset(dataset: Dataset, max_samples: Optional[int], seed: int) -> Dataset:
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    if max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return LabelledSubset(dataset, perm[:max_samples].sort().values.tolist())


def _torchvision_cifar(key: str, split: str, data_dir: Optional[str], transform, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, folder = (CIFAR10, "cifar-10-batches-py") if key == "cifar10" else (CIFAR100, "cifar-100-python")
    fix = (
        f"put the extracted python-version archive ({folder}/) under --data-dir DIR, "
        "or pass --download on a machine with network access"
    )
    if not data_dir:
        raise FileNotFoundError(f"{key} needs --data-dir DIR: {fix}")
    try:
        return cls(data_dir, train=split == "train", transform=transform, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
        raise FileNotFoundError(f"{key} not found or corrupt in {os.path.join(data_dir, folder)}: {fix}") from e
    except OSError as e:  # download failed (offline)
        raise FileNotFoundError(f"{key} download to {data_dir} failed ({e}): {fix}") from e


def _image_folder(split: str, data_dir: Optional[str], transform) -> Dataset:
    from torchvision.datasets import ImageFolder

    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"imagefolder needs --data-dir DIR holding train/ and val/ (or class folders); got {data_dir!r}"
        )
    split_dir = os.path.join(data_dir, split)
    has_splits = any(os.path.isdir(os.path.join(data_dir, s)) for s in ("train", "val"))
    if os.path.isdir(split_dir):
        root = split_dir
    elif has_splits:
        raise FileNotFoundError(f"imagefolder: {split_dir} is missing (found a train/ or val/ folder in {data_dir})")
    else:
        root = data_dir
        if split != "train":
            _logger.warning(
                "imagefolder: %s has no train/val folders; using the whole folder for split %r", data_dir, split
            )
    return ImageFolder(root, transform=transform)


def build_dataset(
    name: str,
    split: str,
    data_dir: Optional[str] = None,
    transform: Optional[Callable] = None,
    download: bool = False,
    max_samples: Optional[int] = None,
    seed: int = 0,
) -> Dataset:
    """Build a map-style dataset yielding ``(image transformed by transform, int label)``.

    name: ``fashion_mnist`` (aliases ``fashion-mnist``, ``fmnist``), ``cifar10``, ``cifar100``,
        ``imagefolder`` (``data_dir/{train,val}`` or ``data_dir`` itself with class subfolders), or any
        timm-prefixed name for ``timm.data.create_dataset`` (``torch/cifar10``, ``hfds/...``).
    split: ``'train'`` or ``'val'`` (the official test split for Fashion-MNIST / CIFAR; timm gets
        ``'validation'``). timm-prefixed names also take any other split string verbatim.
    max_samples: if smaller than the dataset, return a ``LabelledSubset`` (a ``torch.utils.data.Subset``)
        of ``max_samples`` indices drawn uniformly at random (not stratified) with ``seed``, kept in
        ascending order; the same (max_samples, seed) always gives the same subset.
    Missing data raises FileNotFoundError naming the fix; an unknown name raises ValueError.
    """
    key = canonical_dataset_name(name)
    if "/" not in key and split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if key == "fashion_mnist":
        dataset: Dataset = FashionMNIST(data_dir, train=split == "train", transform=transform, download=download)
    elif key in ("cifar10", "cifar100"):
        dataset = _torchvision_cifar(key, split, data_dir, transform, download)
    elif key == "imagefolder":
        dataset = _image_folder(split, data_dir, transform)
    else:
        from timm.data import create_dataset

        timm_split = {"train": "train", "val": "validation"}.get(split, split)
        try:
            dataset = create_dataset(
                key, root=data_dir, split=timm_split, is_training=split == "train", download=download
            )
        except RuntimeError as e:  # torchvision datasets behind torch/: "Dataset not found or corrupted."
            if "not found" not in str(e).lower():
                raise
            raise FileNotFoundError(
                f"timm dataset {key!r} not found under --data-dir {data_dir!r} ({e}); "
                "put it there or pass --download on a machine with network access"
            ) from e
        dataset.transform = transform
        if isinstance(dataset, IterableDataset):
            if max_samples is not None:
                raise ValueError(f"max_samples is not supported for the iterable dataset {name!r}")
            return dataset
    return _subset(dataset, max_samples, seed)


# ----------------------------------------------------------------------------------------------------
# Transforms


class PadTo:
    """Zero-pad a PIL image symmetrically to ``size x size`` (e.g. 28 -> 32: 2 pixels each side)."""

    def __init__(self, size: int, fill: int = 0) -> None:
        self.size = size
        self.fill = fill

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w > self.size or h > self.size:
            raise ValueError(f"PadTo({self.size}) got a larger image {w}x{h}")
        left, top = (self.size - w) // 2, (self.size - h) // 2
        right, bottom = self.size - w - left, self.size - h - top
        return transforms.functional.pad(img, [left, top, right, bottom], fill=self.fill)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, fill={self.fill})"


def build_pretrain_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    pad_to: Optional[int] = None,
    scale: Tuple[float, float] = (0.2, 1.0),
    ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> transforms.Compose:
    """Paper augmentation: [zero pad to ``pad_to``] -> RandomResizedCrop(bicubic) -> flip -> tensor ->
    normalise. No colour jitter; grayscale stays 1 channel. Output: (C, img_size, img_size) float.

    ``scale``: range of the crop's area as a fraction of the (padded) image, the paper's (0.2, 1) by default;
    ``--crop-scale`` sets it for pretraining. Raises ValueError unless ``0 < lo <= hi <= 1``.
    """
    check_crop_scale(scale)
    ops: List[Callable] = [PadTo(pad_to)] if pad_to else []
    ops += [
        transforms.RandomResizedCrop(
            img_size, scale=scale, ratio=ratio, interpolation=transforms.InterpolationMode.BICUBIC
        ),
        transforms.RandomHorizontalFlip(hflip),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ]
    return transforms.Compose(ops)


def check_crop_scale(scale: Sequence[float]) -> Tuple[float, float]:
    """``scale`` as a (lo, hi) tuple of floats; ValueError naming the value unless ``0 < lo <= hi <= 1``."""
    values = tuple(scale)
    # torchvision only warns on lo > hi and crops nothing sensible for lo <= 0 or hi > 1
    if len(values) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) or not (
        0 < values[0] <= values[1] <= 1
    ):
        raise ValueError(
            f"crop scale (--crop-scale) {values!r} is not accepted: expected two numbers LO HI with 0 < LO <= HI <= 1 "
            "(the crop's share of the image area), e.g. 0.2 1.0"
        )
    return float(values[0]), float(values[1])


def build_eval_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    pad_to: Optional[int] = None,
    crop_pct: float = 1.0,
) -> transforms.Compose:
    """Deterministic eval transform: zero pad to ``pad_to`` when given (28 -> 32), otherwise resize the
    short side to ``img_size / crop_pct`` (bicubic) and centre-crop ``img_size``; then tensor, normalise."""
    if pad_to:
        ops: List[Callable] = [PadTo(pad_to)]
        if pad_to != img_size:
            ops += [transforms.Resize(img_size, interpolation=transforms.InterpolationMode.BICUBIC)]
    else:
        resize = int(math.floor(img_size / crop_pct + 1e-6))
        ops = [transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC)]
    ops += [transforms.CenterCrop(img_size), transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(ops)


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize`` for display: x (B, C, H, W) or (C, H, W) -> x * std + mean (not clamped)."""
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return x * std_t + mean_t


# ----------------------------------------------------------------------------------------------------
# Samplers and loaders


class EpochSeededSampler(Sampler[int]):
    """Single-process sampler whose order depends only on ``seed + epoch``.

    ``set_epoch(e)`` selects the permutation ``torch.randperm(n, generator=manual_seed(seed + e))``
    (identity order when ``shuffle=False``) and resets ``start_index`` to 0; set ``start_index`` after it
    to skip the first indices of that order (``skip_batches * batch_size`` to resume mid-epoch).
    """

    def __init__(self, dataset_len: int, seed: int = 0, shuffle: bool = True, with_epoch: bool = False) -> None:
        self.dataset_len = dataset_len
        self.seed = seed
        self.shuffle = shuffle
        self.with_epoch = with_epoch
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start_index = 0

    def order(self) -> List[int]:
        if not self.shuffle:
            return list(range(self.dataset_len))
        return torch.randperm(
            self.dataset_len, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        ).tolist()

    def __iter__(self) -> Iterator[int]:
        return _keys(self.order()[self.start_index :], self.epoch, self.with_epoch)

    def __len__(self) -> int:
        return max(self.dataset_len - self.start_index, 0)


class DistributedEpochSampler(DistributedSampler):
    """``DistributedSampler`` (order from ``seed + epoch``) with the same ``start_index`` skipping, which
    counts indices of this rank's shard. ``set_epoch`` resets ``start_index`` to 0."""

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int,
        rank: int,
        shuffle: bool = True,
        seed: int = 0,
        with_epoch: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.with_epoch = with_epoch
        self.start_index = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start_index = 0

    def __iter__(self) -> Iterator[int]:
        return _keys(list(super().__iter__())[self.start_index :], self.epoch, self.with_epoch)

    def __len__(self) -> int:
        return max(self.num_samples - self.start_index, 0)


def _keys(indices: List[int], epoch: int, with_epoch: bool) -> Iterator:
    # (epoch, index) keys let SeededAugmentation fix each sample's augmentation in any worker process
    return iter([(epoch, i) for i in indices]) if with_epoch else iter(indices)


class SeededAugmentation(Dataset):
    """Applies a random ``transform`` whose randomness is fixed by ``(seed, epoch, index)``.

    Indexed by ``(epoch, index)`` keys (samplers built with ``with_epoch=True``). The crop of sample ``i`` in
    epoch ``e`` is then the same in an uninterrupted run, a run resumed mid-epoch, with 0 or 8 workers, and
    on any number of processes, which is what makes resume continue exactly. The global RNG is restored
    afterwards, so the transform consumes none of the caller's randomness.
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        image, label = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            # ints hash identically in every process (no hash randomisation for ints and tuples of ints)
            torch.manual_seed(hash((self.seed, epoch, index)) % 2**63)
            image = self.transform(image)
        return image, label


def seed_worker(worker_id: int, base_seed: int = 0) -> None:
    """DataLoader ``worker_init_fn``: seed python, numpy and torch from the base seed, the worker id
    and the loader's per-iterator seed (``torch.initial_seed()``, itself drawn from the seeded generator)."""
    seed = (base_seed * 1_000_003 + worker_id + torch.initial_seed()) % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
    rank: int = 0,
    world_size: int = 1,
    with_epoch: bool = False,
) -> DataLoader:
    """DataLoader with a reproducible order: ``loader.sampler`` is an ``EpochSeededSampler`` (or a
    ``DistributedEpochSampler`` when ``distributed``), both with ``set_epoch`` and ``start_index``.

    Call ``set_loader_epoch(loader, epoch, skip_batches)`` before each epoch. Workers are persistent,
    seeded by ``seed_worker``; ``pin_memory`` only with CUDA. With ``with_epoch=True`` the sampler yields
    ``(epoch, index)`` keys for a ``SeededAugmentation`` dataset, whose crops are then reproduced exactly on
    resume; a plain dataset's augmentation draws from the worker RNG, so only its batch order is reproduced.
    Iterable datasets get no sampler (their order is their own).
    """
    common = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        worker_init_fn=partial(seed_worker, base_seed=seed) if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed + rank),
    )
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, **common)
    if distributed:
        sampler: Sampler = DistributedEpochSampler(
            dataset, world_size, rank, shuffle=shuffle, seed=seed, with_epoch=with_epoch)
    else:
        sampler = EpochSeededSampler(len(dataset), seed=seed, shuffle=shuffle, with_epoch=with_epoch)
    return DataLoader(dataset, sampler=sampler, **common)


def set_loader_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Select epoch ``epoch``'s order and skip its first ``skip_batches`` batches (resume mid-epoch)."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if skip_batches:
        if not hasattr(sampler, "start_index"):
            raise ValueError(f"{type(sampler).__name__} cannot skip batches")
        sampler.start_index = skip_batches * loader.batch_size
