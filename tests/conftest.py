"""Shared fixtures, and skipping of the tests that need the real Fashion-MNIST when it is not installed.

Without root there is no `apt-get install dataset-fashion-mnist`; the tests that read the real data then skip
with the command that installs it, and every other test still runs (`make test` as a normal user).
"""
import pytest
import torch

from randsac_timm.train.data import DEFAULT_FASHION_MNIST_DIRS, FashionMNIST

FASHION_MNIST_MISSING = (
    'Fashion-MNIST is not installed: apt-get install -y dataset-fashion-mnist (as root), then rerun the tests')
# how this package names that fix (randsac_timm.train.data.FashionMNIST) in an exception, or a script's stderr
_FASHION_MNIST_FIX = 'apt-get install -y dataset-fashion-mnist'


def _fashion_mnist_installed() -> bool:
    try:
        FashionMNIST(train=False)
    except FileNotFoundError:
        return False
    return True


FASHION_MNIST_INSTALLED = _fashion_mnist_installed()


def _needs_missing_data(excinfo) -> bool:
    """Did the test fail because the default Fashion-MNIST is missing (directly, in a script it ran, or when it
    opened the installed files itself)?"""
    err = excinfo.value
    if isinstance(err, FileNotFoundError) and str(err.filename or '').startswith(DEFAULT_FASHION_MNIST_DIRS):
        return True
    text = ' '.join(str(part) for part in (err, getattr(err, 'stderr', None), getattr(err, 'output', None)) if part)
    return _FASHION_MNIST_FIX in text


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # only when the data really is missing: on a machine with it, such a failure stays a failure
    if not FASHION_MNIST_INSTALLED and report.failed and call.excinfo is not None and _needs_missing_data(
            call.excinfo):
        report.outcome = 'skipped'
        report.longrepr = (str(item.path), item.location[1] or 0, f'Skipped: {FASHION_MNIST_MISSING}')


def _require_fashion_mnist() -> None:
    if not FASHION_MNIST_INSTALLED:
        pytest.skip(FASHION_MNIST_MISSING)


@pytest.fixture(scope='session')
def fashion_mnist_train() -> FashionMNIST:
    """The real Fashion-MNIST training split (Debian's dataset-fashion-mnist, installed by .ci/run)."""
    _require_fashion_mnist()
    return FashionMNIST(train=True)


@pytest.fixture(scope='session')
def fashion_mnist_test() -> FashionMNIST:
    _require_fashion_mnist()
    return FashionMNIST(train=False)


@pytest.fixture(scope='session')
def fmnist_batch(fashion_mnist_train) -> torch.Tensor:
    """64 real Fashion-MNIST images, padded 28 -> 32 and normalised: (64, 1, 32, 32)."""
    x = fashion_mnist_train.data[:64].float().div(255).unsqueeze(1)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    return (x - 0.2860) / 0.3530
