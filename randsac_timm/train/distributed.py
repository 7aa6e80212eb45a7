"""Devices and process groups for torchrun: NCCL on GPUs, gloo on CPU; one primary process logs and saves."""
import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ['DistContext', 'bf16_autocast', 'init_distributed', 'resolve_device', 'select_attention_backends']


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU when CUDA is available, else the CPU."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dev = torch.device(device)
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError(f'--device {device} asked for CUDA but no GPU is visible; use --device cpu.')
        if dev.index is None:
            dev = torch.device('cuda', local_rank)
        torch.cuda.set_device(dev)
    return dev


def bf16_autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` when `enabled` (the `--amp` flag of every script), else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def select_attention_backends(device: torch.device, cudnn_attention: bool) -> bool:
    """Keep PyTorch's cuDNN attention kernel out of masked training on CUDA unless asked for; returns its state.

    Why: from torch 2.11 the default SDPA backend on H100/H200 is cuDNN, whose backward returns NaN for the query
    gradient when an explicit `attn_mask` is given, the sequence length is 64 modulo 128, and a row's
    log-sum-exp falls below -88.7 (pytorch/pytorch#196678). RandSAC always passes masks, and its 8x8 grids are
    64 tokens: finite losses with non-finite gradients, as our ViT-Tiny bf16 runs on an H200 with torch 2.11
    showed near their peak learning rate. Without cuDNN, masked SDPA takes the memory-efficient kernel.
    """
    if device.type == 'cuda':
        torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
    return torch.backends.cuda.cudnn_sdp_enabled()


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is True on any (keeps DDP processes in lock-step)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = 'auto', backend: Optional[str] = None) -> DistContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend or ('nccl' if dev.type == 'cuda' else 'gloo'))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)
