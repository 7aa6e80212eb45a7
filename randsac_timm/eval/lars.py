"""LARS as used for linear probing by MoCo v3 and MAE (`Large Batch Training of Convolutional Networks`).

Unlike `timm.optim.Lars` with the same options (tests/test_lars.py), it adapts at weight decay 0, skips 1-D tensors
and divides by |g + wd p| (timm: |g| + wd |p| + eps); timm's at weight decay 0 is plain momentum SGD.

Update of one parameter `p` with gradient `g` (MoCo v3 `moco/optimizer.py`):

    if p.ndim > 1:   g = g + weight_decay * p;   g = g * trust_coeff * ||p|| / ||g||   (1 where a norm is 0)
    mu = momentum * mu + g;   p = p - lr * mu
"""
from typing import Callable, Iterable, Optional, Union

import torch

__all__ = ['Lars']


class Lars(torch.optim.Optimizer):
    """LARS with the trust ratio (and weight decay) on tensors of 2 or more dimensions only; biases and norm
    parameters (1-D) take a plain momentum-SGD step.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (the schedule writes each group's `lr`).
        weight_decay: L2 penalty added to the gradient of >= 2-D tensors before the trust ratio.
        momentum: heavy-ball momentum (no dampening, no Nesterov).
        trust_coeff: the trust coefficient `eta` of the LARS paper.
    """

    def __init__(self, params: Union[Iterable[torch.Tensor], Iterable[dict]], lr: float = 0.0,
                 weight_decay: float = 0.0, momentum: float = 0.9, trust_coeff: float = 0.001):
        if lr < 0 or weight_decay < 0 or momentum < 0 or trust_coeff <= 0:
            raise ValueError(f'Lars: lr ({lr}), weight_decay ({weight_decay}) and momentum ({momentum}) must be >= 0 '
                             f'and trust_coeff ({trust_coeff}) > 0')
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coeff=trust_coeff))

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> Optional[torch.Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:  # weights adapt; biases and norm parameters do not (MoCo v3, MAE)
                    update = update.add(p, alpha=group['weight_decay'])
                    param_norm, update_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    one = torch.ones_like(param_norm)
                    ratio = torch.where((param_norm > 0) & (update_norm > 0),
                                        group['trust_coeff'] * param_norm / update_norm, one)
                    update = update.mul(ratio)
                state = self.state[p]
                if 'mu' not in state:
                    state['mu'] = torch.zeros_like(p)
                mu = state['mu']
                mu.mul_(group['momentum']).add_(update)
                p.add_(mu, alpha=-group['lr'])
        return loss
