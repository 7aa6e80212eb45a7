"""Converged linear readout: multinomial logistic regression on standardised features, full batch, L-BFGS.

The paper's LARS probe (`linear_probe.py`) runs a fixed schedule of ~1300 steps and underfits badly conditioned
features; this readout is run to a gradient tolerance instead, so it measures what is linearly decodable from the
features rather than how fast SGD gets there. The objective is strictly convex (L2 on the weights), so its optimum
is unique and the result does not depend on initialisation or seed.

    loss(W, b) = mean_i CE(W z_i + b, y_i) + l2 / 2 * ||W||^2,   z = (x - mean) / std  (training statistics)

Precision: the statistics (mean, std, PCA) are float64; the fit itself runs in float32 by default, about twice as
fast as float64 on CPU (two skinny (N, D) x (D, C) matmuls per evaluation dominate), and float32 rounding of a
mean gradient (relative ~1e-7) is far below the stopping tolerance. `dtype=torch.float64` is there for
tighter tolerances (the reference test uses it).
"""
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

__all__ = ['LogisticReadout', 'fit_logistic_regression', 'logistic_objective', 'pca_basis', 'readout_top1',
           'LBFGS_L2', 'LBFGS_TOL', 'LBFGS_MAX_ITER', 'LBFGS_HISTORY', 'LBFGS_DTYPE']

# fixed, never tuned on the test split: a weight of 10 on a unit-variance feature costs 5e-3 of loss, so the optimum
# stays finite on separable data (few samples, raw pixels) without visibly shrinking a readout of good features
LBFGS_L2 = 1e-4
LBFGS_TOL = 1e-4  # max |gradient| of the mean objective (loss ~0.5) at which the fit counts as converged
LBFGS_MAX_ITER = 3000  # a cap for pathological inputs; real features stop well below it (docs/evaluation.md)
LBFGS_HISTORY = 20
LBFGS_DTYPE = torch.float32  # see the module docstring
_STD_FLOOR = 1e-6  # constant columns (the zero padding of Fashion-MNIST) are centred, not divided by ~0


@dataclass
class LogisticReadout:
    """A fitted readout. weight (C, D) and bias (C,) act on standardised features; mean, std (D,) standardise."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    iterations: int
    evaluations: int
    converged: bool
    loss: float
    grad_max: float

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, D) -> logits (N, C), in the fit's dtype."""
        z = ((features.to(self.mean) - self.mean) / self.std).to(self.weight)
        return torch.addmm(self.bias, z, self.weight.T)

    def info(self) -> Dict[str, Any]:
        return dict(iterations=self.iterations, evaluations=self.evaluations, converged=self.converged,
                    loss=self.loss, grad_max=self.grad_max)


def logistic_objective(z: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       l2: float) -> torch.Tensor:
    """The regularised mean cross-entropy the readout minimises. z (N, D) standardised, weight (C, D), bias (C,)."""
    return F.cross_entropy(torch.addmm(bias, z, weight.T), labels) + 0.5 * l2 * weight.pow(2).sum()


def fit_logistic_regression(
        features: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        l2: float = LBFGS_L2,
        tol: float = LBFGS_TOL,
        max_iter: int = LBFGS_MAX_ITER,
        history_size: int = LBFGS_HISTORY,
        dtype: torch.dtype = LBFGS_DTYPE,
) -> LogisticReadout:
    """Full-batch L-BFGS (strong Wolfe) from zero weights until max |gradient| <= `tol` or `max_iter` iterations.

    Args:
        features: (N, D) training features, any float dtype; standardised with their own mean and std.
        labels: (N,) int64 in [0, num_classes).

    Returns:
        the readout, with the iterations run and whether the gradient tolerance was met.
    """
    x = features.detach().to(torch.float64)
    mean = x.mean(0)
    std = x.std(0).clamp_min(_STD_FLOOR)
    z = (x - mean).div_(std).to(dtype)  # (N, D)
    del x
    labels = labels.to(z.device)
    rows = torch.arange(len(z), device=z.device)
    weight = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device)
    bias = torch.zeros(num_classes, dtype=z.dtype, device=z.device)
    # tolerance_change 0: stop on the gradient test or the cap, never on a small step, so `converged` is meaningful
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, max_eval=2 * max_iter,
                                  tolerance_grad=tol, tolerance_change=0.0, history_size=history_size,
                                  line_search_fn='strong_wolfe')

    @torch.no_grad()
    def closure() -> torch.Tensor:
        # `logistic_objective` and its gradient written out: no autograd graph over the (N, D) features
        log_p = torch.addmm(bias, z, weight.T).log_softmax(1)  # (N, C)
        loss = -log_p[rows, labels].mean() + 0.5 * l2 * weight.pow(2).sum()
        residual = log_p.exp_()
        residual[rows, labels] -= 1.0
        residual /= len(z)  # (N, C): d loss / d logits
        weight.grad = torch.addmm(weight, residual.T, z, beta=l2)
        bias.grad = residual.sum(0)
        return loss

    optimizer.step(closure)
    loss = closure()
    grad_max = max(weight.grad.abs().max().item(), bias.grad.abs().max().item())
    state = optimizer.state[optimizer._params[0]]
    return LogisticReadout(weight=weight.clone(), bias=bias.clone(), mean=mean, std=std,
                           iterations=state.get('n_iter', 0), evaluations=state.get('func_evals', 0),
                           converged=grad_max <= tol, loss=loss.item(), grad_max=grad_max)


def readout_top1(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor,
                 num_classes: int, **fit_kw: Any) -> Tuple[float, Dict[str, Any]]:
    """Fit on (train, train_labels), score top-1 (percent) on (val, val_labels). Returns (top1, fit info)."""
    readout = fit_logistic_regression(train, train_labels, num_classes, **fit_kw)
    pred = readout.logits(val).argmax(1)
    return 100.0 * (pred == val_labels.to(pred.device)).double().mean().item(), readout.info()


@torch.no_grad()
def pca_basis(train: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The top-`k` principal directions of `train` (N, D), from the eigenvectors of its covariance (float64).

    Returns:
        (mean (D,), components (D, k)); project with `(x - mean) @ components`.
    """
    x = train.to(torch.float64)
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / max(len(x) - 1, 1)  # (D, D): cheaper than an SVD of (N, D) when N >> D
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    k = min(k, vecs.shape[1])
    return mean, vecs[:, -k:].flip(1).contiguous()
