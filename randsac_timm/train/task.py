"""The pretraining objective as a `timm.task.TrainingTask`, so timm-style loops can drive it."""
from typing import Dict, Optional

import torch
import torch.nn as nn
from timm.task import TrainingTask

__all__ = ['PretrainTask']


class PretrainTask(TrainingTask):
    """Self-supervised task around a pretraining wrapper whose forward returns an output with `.loss`.

    Works for `RandSACPretrain` (and any wrapper with the same output contract). Labels are ignored.
    The serialization is drawn from `generator`, a dedicated RNG the engine checkpoints, so resuming
    replays the same segment orders.

    Args:
        model: the pretraining wrapper.
        generator: RNG for the objective's own sampling (segments); the global RNG when None.
    """

    def __init__(
            self,
            model: nn.Module,
            generator: Optional[torch.Generator] = None,
            device: Optional[torch.device] = None,
            verbose: bool = False,
    ):
        super().__init__(device=device, verbose=verbose)
        self.trainable_module = model
        self.generator = generator

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'PretrainTask':
        from torch.nn.parallel import DistributedDataParallel as DDP
        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """
        Args:
            input: (B, C, H, W) images.
            target: unused (self-supervised); accepted for timm's loop signature.

        Returns:
            {'loss': scalar, 'output': the wrapper's output object}
        """
        out = self.trainable_module(input, generator=self.generator)
        return {'loss': out.loss, 'output': out}
