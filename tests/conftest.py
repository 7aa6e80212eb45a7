import pytest

from randsac_timm.data import FashionMNIST


@pytest.fixture(scope='session')
def fashion_mnist_train() -> FashionMNIST:
    """The real Fashion-MNIST training split (Debian's dataset-fashion-mnist, installed by .ci/run)."""
    return FashionMNIST(train=True)


@pytest.fixture(scope='session')
def fashion_mnist_test() -> FashionMNIST:
    return FashionMNIST(train=False)

