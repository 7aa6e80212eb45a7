import pytest
import torch

from randsac_timm.data import FashionMNIST


@pytest.fixture(scope='session')
def fashion_mnist_train() -> FashionMNIST:
    """The real Fashion-MNIST training split (Debian's dataset-fashion-mnist, installed by .ci/run)."""
    return FashionMNIST(train=True)


@pytest.fixture(scope='session')
def fashion_mnist_test() -> FashionMNIST:
    return FashionMNIST(train=False)



@pytest.fixture(scope='session')
def fmnist_batch(fashion_mnist_train) -> torch.Tensor:
    """64 real Fashion-MNIST images, padded 28 -> 32 and normalised: (64, 1, 32, 32)."""
    x = fashion_mnist_train.data[:64].float().div(255).unsqueeze(1)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    return (x - 0.2860) / 0.3530
