"""Tests for randsac_timm.train.data on the real Fashion-MNIST installed by Debian's dataset-fashion-mnist."""

import gzip
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from randsac_timm.train import data
from randsac_timm.train.data import (
    DATASET_STATS,
    EpochSeededSampler,
    FashionMNIST,
    build_dataset,
    build_eval_transform,
    build_loader,
    build_pretrain_transform,
    dataset_in_chans,
    dataset_num_classes,
    dataset_pad_to,
    dataset_stats,
    denormalize,
    set_loader_epoch,
)

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


# The real data set is required, never skipped: without Debian's package FashionMNIST raises an error
# naming `apt-get install -y dataset-fashion-mnist`.
@pytest.fixture(scope="module")
def fmnist_train(fashion_mnist_train):
    return fashion_mnist_train


@pytest.fixture(scope="module")
def fmnist_test(fashion_mnist_test):
    return fashion_mnist_test


def test_debian_fashion_mnist_has_official_splits_and_balanced_labels(fmnist_train, fmnist_test):
    for ds, n in ((fmnist_train, 60000), (fmnist_test, 10000)):
        assert len(ds) == n
        assert ds.data.shape == (n, 28, 28) and ds.data.dtype == torch.uint8
        assert ds.targets.shape == (n,) and ds.targets.dtype == torch.int64
        assert len(ds.classes) == 10
        assert torch.bincount(ds.targets, minlength=10).tolist() == [n // 10] * 10
    img, label = fmnist_test[0]
    assert img.mode == "L" and img.size == (28, 28)
    assert isinstance(label, int) and label == int(fmnist_test.targets[0])
    assert np.array_equal(np.asarray(img), fmnist_test.data[0].numpy())


def test_dataset_stats_match_fashion_mnist_pixels(fmnist_train):
    pixels = fmnist_train.data.float() / 255
    (mean,), (std,) = DATASET_STATS["fashion_mnist"]
    assert abs(pixels.mean().item() - mean) < 1e-3
    assert abs(pixels.std().item() - std) < 1e-3
    assert dataset_stats("fashion-mnist") == DATASET_STATS["fashion_mnist"]
    assert dataset_in_chans("fmnist") == 1 and dataset_in_chans("cifar10") == 3
    assert dataset_num_classes("fmnist") == 10 and dataset_num_classes("cifar100") == 100


def test_build_dataset_aliases_give_the_official_split():
    ds = build_dataset("fmnist", "val", data_dir=None, transform=None)
    assert len(ds) == 10000
    with pytest.raises(ValueError, match="accepted"):
        build_dataset("mnist-fashion", "train", data_dir=None, transform=None)
    with pytest.raises(ValueError, match="split"):
        build_dataset("fashion_mnist", "test", data_dir=None, transform=None)


def test_unpadded_eval_transform_normalises_to_zero_mean_unit_std(fmnist_test):
    mean, std = dataset_stats("fashion_mnist")
    tf = build_eval_transform(28, mean, std, pad_to=None)
    idx = torch.randperm(len(fmnist_test), generator=torch.Generator().manual_seed(0))[:256]
    batch = torch.stack([tf(fmnist_test[int(i)][0]) for i in idx])
    assert batch.shape == (256, 1, 28, 28) and batch.dtype == torch.float32
    assert abs(batch.mean().item()) < 0.05
    assert abs(batch.std().item() - 1) < 0.05
    # The 28 -> 28 eval transform is exact: pixels come back after denormalize.
    raw = fmnist_test.data[idx].float().unsqueeze(1) / 255
    torch.testing.assert_close(denormalize(batch, mean, std), raw, atol=1e-5, rtol=0)


def test_padded_eval_transform_pads_28_to_32_with_black(fmnist_test):
    mean, std = dataset_stats("fashion_mnist")
    pad_to = dataset_pad_to("fashion_mnist", 32)
    assert pad_to == 32 and dataset_pad_to("fashion_mnist", 28) is None and dataset_pad_to("cifar10", 32) is None
    tf = build_eval_transform(32, mean, std, pad_to=pad_to)
    x = torch.stack([tf(fmnist_test[i][0]) for i in range(64)])
    assert x.shape == (64, 1, 32, 32)
    pixels = denormalize(x, mean, std)
    torch.testing.assert_close(
        pixels[:, :, 2:30, 2:30], fmnist_test.data[:64].float().unsqueeze(1) / 255, atol=1e-5, rtol=0
    )
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert pixels[:, :, border].abs().max().item() < 1e-5
    # Expected normalised mean with the zero border: (mean_pix * 784/1024 - mu) / sigma.
    expected = ((fmnist_test.data[:64].float() / 255).mean().item() * 784 / 1024 - mean[0]) / std[0]
    assert abs(x.mean().item() - expected) < 1e-4


def test_pretrain_transform_keeps_one_channel_and_crops_randomly(fmnist_train):
    mean, std = dataset_stats("fashion_mnist")
    tf = build_pretrain_transform(32, mean, std, pad_to=dataset_pad_to("fashion_mnist", 32))
    img = fmnist_train[0][0]
    torch.manual_seed(0)
    a = tf(img)
    torch.manual_seed(1)
    b = tf(img)
    torch.manual_seed(0)
    a_again = tf(img)
    assert a.shape == (1, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, b)
    assert torch.equal(a, a_again)
    # values stay within the normalised [0, 1] pixel range (bicubic may overshoot slightly)
    assert denormalize(a, mean, std).min() > -0.1 and denormalize(a, mean, std).max() < 1.1


def test_missing_fashion_mnist_names_the_fix(monkeypatch):
    monkeypatch.setattr(data, "DEFAULT_FASHION_MNIST_DIRS", ())
    with pytest.raises(FileNotFoundError) as info:
        build_dataset("fashion_mnist", "train", data_dir="/nonexistent", transform=None)
    msg = str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "/nonexistent" in msg and "--data-dir" in msg


def test_data_dir_copy_is_preferred_and_truncated_file_raises_value_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEFAULT_FASHION_MNIST_DIRS", ())
    for f in FILES:
        shutil.copy(os.path.join(DEBIAN_DIR, f), tmp_path / f)
    assert len(build_dataset("fashion_mnist", "val", data_dir=str(tmp_path), transform=None)) == 10000

    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100_000])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        FashionMNIST(str(tmp_path), train=True)

    # A plain (ungzipped) idx file with valid gzip-free bytes but missing pixels is caught by size.
    images.unlink()
    with gzip.open(os.path.join(DEBIAN_DIR, FILES[2]), "rb") as f:
        raw = f.read()
    plain = tmp_path / "t10k-images-idx3-ubyte"
    plain.write_bytes(raw[:-784])
    (tmp_path / FILES[2]).unlink()
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        FashionMNIST(str(tmp_path), train=False)
    plain.write_bytes(b"\x00\x00\x08\x01" + raw[4:])  # labels magic on an images file
    with pytest.raises(ValueError, match="magic"):
        FashionMNIST(str(tmp_path), train=False)


def test_cifar10_missing_without_download_raises_clear_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as info:
        build_dataset("cifar10", "train", data_dir=str(tmp_path), transform=None, download=False)
    assert "--data-dir" in str(info.value)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        build_dataset("torch/cifar10", "train", data_dir=str(tmp_path), transform=None)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        build_dataset("cifar100", "val", data_dir=None, transform=None)


def test_imagefolder_reads_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / cls / f"{i}.png")
    mean, std = dataset_stats("imagefolder")
    ds = build_dataset("imagefolder", "val", data_dir=str(tmp_path), transform=build_eval_transform(16, mean, std))
    assert len(ds) == 6
    assert ds.classes == ["cat", "dog"]
    assert dataset_num_classes("imagefolder", ds) == 2
    x, y = ds[5]
    assert x.shape == (3, 16, 16) and y == 1
    # a bare folder of class subfolders works too
    bare = build_dataset("imagefolder", "train", data_dir=str(tmp_path / "train"), transform=None)
    assert len(bare) == 6 and bare.classes == ["cat", "dog"]


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochSeededSampler(1000, seed=3), EpochSeededSampler(1000, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)
    assert sorted(a) == list(range(1000))
    b.set_epoch(6)
    assert list(a) != list(b)
    c = EpochSeededSampler(1000, seed=4)
    c.set_epoch(5)
    assert list(a) != list(c)


def test_skipping_batches_yields_exactly_the_tail_of_the_epoch():
    ds = torch.utils.data.TensorDataset(torch.arange(103))
    loader = build_loader(ds, batch_size=8, shuffle=True, num_workers=0, seed=7, drop_last=True)
    set_loader_epoch(loader, 2)
    full = [batch[0].tolist() for batch in loader]
    assert len(full) == 12
    set_loader_epoch(loader, 2, skip_batches=5)
    assert [batch[0].tolist() for batch in loader] == full[5:]
    assert len(loader) == 7
    set_loader_epoch(loader, 2)  # set_epoch resets the skip
    assert [batch[0].tolist() for batch in loader] == full


def test_worker_processes_keep_the_seeded_order_and_skip():
    ds = torch.utils.data.TensorDataset(torch.arange(50))
    in_process = build_loader(ds, 5, shuffle=True, num_workers=0, seed=2)
    workers = build_loader(ds, 5, shuffle=True, num_workers=2, seed=2)
    assert workers.persistent_workers and workers.pin_memory == torch.cuda.is_available()
    for epoch in range(2):  # persistent workers still follow set_epoch, which runs in the main process
        set_loader_epoch(in_process, epoch)
        set_loader_epoch(workers, epoch, skip_batches=3)
        assert [b[0].tolist() for b in workers] == [b[0].tolist() for b in in_process][3:]


def test_distributed_sampler_shards_and_skips():
    ds = torch.utils.data.TensorDataset(torch.arange(40))
    shards = []
    for rank in range(2):
        loader = build_loader(ds, 4, True, 0, seed=1, drop_last=False, distributed=True, rank=rank, world_size=2)
        set_loader_epoch(loader, 3)
        full = [b[0].tolist() for b in loader]
        set_loader_epoch(loader, 3, skip_batches=2)
        assert [b[0].tolist() for b in loader] == full[2:]
        shards.append(sum(full, []))
    assert sorted(shards[0] + shards[1]) == list(range(40))


def test_max_samples_gives_a_deterministic_subset(fmnist_test):
    a = build_dataset("fashion_mnist", "val", data_dir=None, transform=None, max_samples=500, seed=0)
    b = build_dataset("fashion_mnist", "val", data_dir=None, transform=None, max_samples=500, seed=0)
    c = build_dataset("fashion_mnist", "val", data_dir=None, transform=None, max_samples=500, seed=1)
    assert isinstance(a, torch.utils.data.Subset) and len(a) == 500
    assert list(a.indices) == list(b.indices) and list(a.indices) != list(c.indices)
    assert list(a.indices) == sorted(set(a.indices))
    assert torch.equal(a.targets, fmnist_test.targets[list(a.indices)])
    assert a.classes == fmnist_test.classes
    assert np.array_equal(np.asarray(a[0][0]), fmnist_test.data[a.indices[0]].numpy())
    assert len(build_dataset("fmnist", "val", None, None, max_samples=10**6)) == 10000


def test_seeded_augmentation_is_fixed_by_seed_epoch_and_index_in_any_worker_count(fmnist_train):
    from randsac_timm.train.data import SeededAugmentation

    subset = build_dataset("fashion_mnist", "train", max_samples=64, seed=0)
    augmented = SeededAugmentation(subset, build_pretrain_transform(32, (0.2860,), (0.3530,), pad_to=32), seed=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = augmented[(1, 5)][0]
    assert torch.equal(torch.get_rng_state(), before)  # consumes none of the caller's randomness
    assert torch.equal(a, augmented[(1, 5)][0])
    assert not torch.equal(a, augmented[(2, 5)][0])  # another epoch, another crop

    def batches(workers):
        loader = build_loader(augmented, batch_size=16, num_workers=workers, seed=0, with_epoch=True)
        set_loader_epoch(loader, 1, skip_batches=1)
        return [x for x, _ in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 3
    assert all(torch.equal(s, p) for s, p in zip(serial, parallel))


# ----------------------------------------------------------------------------------------------------
# Native 28x28 Fashion-MNIST and the pretraining crop scale


def test_native_28_transforms_neither_pad_nor_resize(fmnist_test):
    mean, std = dataset_stats("fashion_mnist")
    pad_to = dataset_pad_to("fashion_mnist", 28)
    assert pad_to is None
    raw = fmnist_test.data[:64].float().unsqueeze(1) / 255
    ds = build_dataset("fashion_mnist", "val", transform=build_eval_transform(28, mean, std, pad_to=pad_to))
    x = torch.stack([ds[i][0] for i in range(64)])
    assert x.shape == (64, 1, 28, 28)
    torch.testing.assert_close(denormalize(x, mean, std), raw, atol=1e-6, rtol=0)  # the original pixels
    # the pretraining crop is cut from the 28x28 image: a full-area, unflipped crop is the image itself
    full = build_pretrain_transform(28, mean, std, pad_to=pad_to, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    torch.testing.assert_close(torch.stack([full(fmnist_test[i][0]) for i in range(64)]), x, atol=1e-6, rtol=0)
    torch.manual_seed(0)
    crop = build_pretrain_transform(28, mean, std, pad_to=pad_to)(fmnist_test[0][0])
    assert crop.shape == (1, 28, 28) and not torch.equal(crop, x[0])


def test_crop_scale_flag_reaches_the_pretraining_crop(fmnist_train, monkeypatch, tmp_path):
    from randsac_timm.train import engine
    from randsac_timm.train.config import parse_pretrain_args

    cfg = parse_pretrain_args(["--crop-scale", "1", "1", "--img-size", "28", "--max-train-samples", "32",
                               "--batch-size", "16", "--workers", "0", "--no-progress", "--output-dir", str(tmp_path)])
    assert cfg.crop_scale == (1.0, 1.0) and parse_pretrain_args([]).crop_scale == (0.2, 1.0)  # the paper's default
    built = []

    class Built(Exception):
        pass

    def spy(*args, **kwargs):
        built.append(build_pretrain_transform(*args, **kwargs))
        raise Built  # the transform is all this test needs; stop before the model is built

    monkeypatch.setattr(engine, "build_pretrain_transform", spy)
    with pytest.raises(Built):
        engine.train(cfg)
    # scale (1, 1) leaves one crop, the whole image (RandomResizedCrop falls back to it for an unreachable ratio):
    # the augmented images are the originals, some flipped
    mean, std = dataset_stats("fashion_mnist")
    torch.manual_seed(0)
    for i in range(16):
        out = denormalize(built[0](fmnist_train[i][0]), mean, std)[0]
        raw = fmnist_train.data[i].float() / 255
        assert any(torch.allclose(out, r, atol=1e-6, rtol=0) for r in (raw, raw.flip(-1)))


@pytest.mark.parametrize("scale", [(0.0, 1.0), (-0.1, 0.5), (0.6, 0.5), (0.2, 1.5), (float("nan"), 1.0), (0.5,)])
def test_bad_crop_scale_is_one_clear_error(scale):
    from randsac_timm.train.data import check_crop_scale

    with pytest.raises(ValueError, match=r"--crop-scale.*0 < LO <= HI <= 1") as info:
        build_pretrain_transform(28, (0.5,), (0.5,), scale=scale)
    assert repr(tuple(scale)) in str(info.value)
    assert check_crop_scale([0.5, 1]) == (0.5, 1.0)


def test_eval_scripts_build_an_encoder_trained_at_28_for_unpadded_28x28_images(tmp_path):
    """A 2-step run at --img-size 28, then eval_linear.py on its checkpoint and on its exported encoder."""
    from randsac_timm.eval.config import parse_linear_args
    from randsac_timm.eval.linear_probe import run_linear_probe
    from randsac_timm.train.config import parse_pretrain_args
    from randsac_timm.train.engine import train

    run = train(parse_pretrain_args([
        "--img-size", "28", "--segments", "square:16-4", "--crop-scale", "0.5", "1", "--max-steps", "2",
        "--max-train-samples", "64", "--batch-size", "16", "--workers", "0", "--no-progress", "--vis-every", "0",
        "--output-dir", str(tmp_path / "run")]))
    state = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    assert state["config"]["crop_scale"] == [0.5, 1.0] and state["encoder_kwargs"]["img_size"] == 28
    quick = ["--fast", "--max-train-samples", "200", "--max-eval-samples", "100", "--epochs", "2", "--warmup-epochs",
             "1", "--batch-size", "100", "--workers", "0", "--no-progress", "--no-knn", "--no-pixel-baselines"]
    for source, kind in ((run.checkpoint, "pretrain_checkpoint"), (run.encoder, "encoder_safetensors")):
        results = run_linear_probe(parse_linear_args(["--checkpoint", source, "--output-dir", str(tmp_path / kind),
                                                      *quick]))
        assert results["encoder"]["kind"] == kind and results["encoder"]["model_kwargs"]["img_size"] == 28
        # the encoder has a fixed 28x28 input (timm asserts the size), so its features came from unpadded images
        assert results["dataset"]["img_size"] == 28 and results["dataset"]["pad_to"] is None
        assert 0.0 <= results["top1"] <= 100.0
