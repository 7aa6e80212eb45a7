"""End-to-end fine-tuning of a pretrained encoder with timm's pieces (the MAE / BEiT recipe of the paper).

timm does the work: `create_optimizer_v2(layer_decay=...)` makes one group per (layer, decay) with an `lr_scale`,
which only a timm scheduler applies (a plain torch scheduler would silently ignore it); `create_transform` gives
RandAugment + random erasing; `Mixup` makes soft targets for `SoftTargetCrossEntropy`; `ClassificationTask` runs
forward + loss; `ModelEmaV3` keeps the optional EMA. The loop itself mirrors `engine.py`: per-step schedule,
torchrun data parallel through `distributed.init_distributed`, bf16 autocast with `--amp` on CUDA.
"""
import json
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save_file
from timm.data import Mixup, create_transform
from timm.data import auto_augment as timm_auto_augment
from timm.data.auto_augment import RandAugment
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.task import ClassificationTask
from timm.utils import ModelEmaV3, unwrap_model
from torchvision import transforms
from tqdm import tqdm

from ..hub.loading import load_encoder
from ..train.checkpoint import atomic_write
from ..train.data import (
    PadTo,
    build_dataset,
    build_eval_transform,
    build_loader,
    dataset_in_chans,
    dataset_num_classes,
    dataset_pad_to,
    dataset_stats,
    set_loader_epoch,
)
from ..train.distributed import DistContext, bf16_autocast, init_distributed
from .config import FinetuneConfig
from .linear_probe import topk_accuracy
from .results import hardware_info, write_results

_POSTERIZE = timm_auto_augment.posterize

__all__ = ['build_finetune_transforms', 'build_optimizer_and_scheduler', 'build_criterion', 'evaluate_classifier',
           'run_finetune']


def build_finetune_transforms(
        dataset: str,
        img_size: int,
        auto_augment: Optional[str] = 'rand-m9-mstd0.5-inc1',
        reprob: float = 0.25,
) -> Tuple[Callable, Callable]:
    """(train, eval) transforms with the dataset's own channels and mean/std.

    `create_transform` defaults to ImageNet statistics and 3 channels; passing the dataset's mean/std keeps a
    1-channel ('L') image 1-channel, and RandAugment's ops all accept 'L' images. Fashion-MNIST is zero-padded
    28 -> 32 first, as in pretraining. Output: (C, img_size, img_size) float tensors.
    """
    mean, std = dataset_stats(dataset)
    pad_to = dataset_pad_to(dataset, img_size)
    train = create_transform(
        input_size=(dataset_in_chans(dataset), img_size, img_size), is_training=True, auto_augment=auto_augment,
        interpolation='bicubic', re_prob=reprob, re_mode='pixel', re_count=1, mean=mean, std=std)
    _guard_posterize(train)
    if pad_to:
        train = transforms.Compose([PadTo(pad_to), *train.transforms])
    return train, build_eval_transform(img_size, mean, std, pad_to=pad_to)


def _posterize_keep_zero_bits(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    # Pillow >= 12 rejects bits=0, which timm's PosterizeIncreasing draws at magnitude 10 (reachable with mstd);
    # older Pillow returned a black image there, so keep that behaviour
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size, 0)
    return _POSTERIZE(img, bits_to_keep, **kwargs)


def _guard_posterize(transform: Any) -> None:
    for t in getattr(transform, 'transforms', []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith('Posterize'):
                    op.aug_fn = _posterize_keep_zero_bits


def build_optimizer_and_scheduler(
        model: nn.Module,
        lr: float,
        weight_decay: float,
        betas: Tuple[float, float],
        layer_decay: Optional[float],
        total_steps: int,
        warmup_steps: int,
        min_lr: float = 1e-6,
) -> Tuple[torch.optim.Optimizer, CosineLRScheduler]:
    """AdamW with BEiT layer decay (timm groups carry `lr_scale`) and a per-step warm-up + cosine timm scheduler.

    Call `scheduler.step_update(step)` before each optimizer step; it writes `lr * lr_scale` into every group.
    """
    optimizer = create_optimizer_v2(model, opt='adamw', lr=lr, weight_decay=weight_decay, betas=tuple(betas),
                                    layer_decay=layer_decay)
    warmup_steps = min(warmup_steps, total_steps)
    # warmup_prefix: warm-up first, then a cosine over the remaining steps, ending at the last step
    scheduler = CosineLRScheduler(optimizer, t_initial=max(total_steps - warmup_steps, 1), lr_min=min_lr,
                                  warmup_t=warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    return optimizer, scheduler


def build_criterion(num_classes: int, mixup: float, cutmix: float, smoothing: float, mixup_prob: float = 1.0,
                    switch_prob: float = 0.5) -> Tuple[Optional[Mixup], nn.Module]:
    """(Mixup or None, loss): soft targets from Mixup (which also smooths) or label smoothing on hard labels."""
    if (mixup > 0 or cutmix > 0) and mixup_prob > 0:
        mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob, switch_prob=switch_prob, mode='batch',
                    label_smoothing=smoothing, num_classes=num_classes)
        return mix, SoftTargetCrossEntropy()
    if smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=smoothing)
    return None, nn.CrossEntropyLoss()


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader, device: torch.device, num_classes: int,
                        amp: bool = False) -> Dict[str, Optional[float]]:
    """Top-1 (and top-5 for more than 10 classes) in percent of `model` over `loader`."""
    was_training = model.training
    model.eval()
    scores, labels = [], []
    for images, target in loader:
        with bf16_autocast(device, amp):
            scores.append(model(images.to(device)).float())
        labels.append(torch.as_tensor(target).to(device))
    model.train(was_training)
    topk = (1, 5) if num_classes > 10 else (1,)
    acc = topk_accuracy(torch.cat(scores), torch.cat(labels), topk)
    return dict(top1=acc[1], top5=acc.get(5))


def run_finetune(cfg: FinetuneConfig) -> Dict[str, Any]:
    """Fine-tune the encoder `cfg` names on `cfg.dataset`; writes `results.json` and `model.safetensors`."""
    start = time.time()
    ctx = init_distributed(cfg.device)
    try:
        return _run(cfg, ctx, start)
    finally:
        ctx.close()


def _run(cfg: FinetuneConfig, ctx: DistContext, start: float) -> Dict[str, Any]:
    device = ctx.device
    in_chans = dataset_in_chans(cfg.dataset)
    probe = build_dataset(cfg.dataset, 'val', cfg.data_dir, max_samples=cfg.max_eval_samples, seed=cfg.seed)
    num_classes = dataset_num_classes(cfg.dataset, probe)
    torch.manual_seed(cfg.seed)  # identical head init on every process
    model, source = load_encoder(checkpoint=cfg.checkpoint, model=cfg.model, pretrained=cfg.pretrained,
                                 num_classes=num_classes, img_size=cfg.img_size, in_chans=in_chans,
                                 drop_path_rate=cfg.drop_path)
    model = model.to(device).train()
    img_size = model.patch_embed.img_size[0] if cfg.img_size is None else cfg.img_size

    train_tf, eval_tf = build_finetune_transforms(cfg.dataset, img_size, cfg.auto_augment, cfg.reprob)
    train_set = build_dataset(cfg.dataset, 'train', cfg.data_dir, transform=train_tf, download=cfg.download,
                              max_samples=cfg.max_train_samples, seed=cfg.seed)
    val_set = build_dataset(cfg.dataset, 'val', cfg.data_dir, transform=eval_tf, download=cfg.download,
                            max_samples=cfg.max_eval_samples, seed=cfg.seed)
    loader = build_loader(train_set, cfg.batch_size, shuffle=True, num_workers=cfg.workers, seed=cfg.seed,
                          drop_last=True, distributed=ctx.distributed, rank=ctx.rank, world_size=ctx.world_size)
    val_loader = build_loader(val_set, cfg.batch_size, shuffle=False, num_workers=cfg.workers, seed=cfg.seed)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f'{len(train_set)} training images give no full batch of {cfg.batch_size} x '
                         f'{ctx.world_size} processes (mixup needs full, even batches); lower --batch-size.')
    if cfg.batch_size % 2 and (cfg.mixup > 0 or cfg.cutmix > 0):
        raise ValueError(f'--batch-size {cfg.batch_size} is odd; timm Mixup pairs samples, use an even batch size')

    eff_batch = cfg.batch_size * ctx.world_size
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    total_steps = cfg.epochs * steps_per_epoch
    optimizer, scheduler = build_optimizer_and_scheduler(
        model, lr, cfg.weight_decay, cfg.betas, cfg.layer_decay, total_steps,
        round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr)
    mixup, criterion = build_criterion(num_classes, cfg.mixup, cfg.cutmix, cfg.smoothing, cfg.mixup_prob,
                                       cfg.mixup_switch_prob)
    task = ClassificationTask(model, criterion=criterion, device=device, verbose=False)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    if ctx.distributed:
        task.prepare_distributed(device_ids=[device.index] if device.type == 'cuda' else None)
    if cfg.amp and device.type != 'cuda' and ctx.is_primary:
        print('warning: --amp on CPU runs bf16 autocast, which is slow on most CPUs; fp32 is the CPU default')

    max_steps = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    history = []
    step, epoch, last_loss = 0, 0, float('nan')
    bar = tqdm(total=max_steps, disable=not (ctx.is_primary and cfg.progress), desc='finetune', dynamic_ncols=True)

    def evaluate() -> Dict[str, Any]:
        record: Dict[str, Any] = dict(epoch=epoch, step=step, **evaluate_classifier(
            model, val_loader, device, num_classes, cfg.amp))
        if ema is not None:
            record.update({f'{k}_ema': v for k, v in evaluate_classifier(
                ema.module, val_loader, device, num_classes, cfg.amp).items()})
        history.append(record)
        return record

    while step < max_steps:
        set_loader_epoch(loader, epoch)
        for images, target in loader:
            scheduler.step_update(step)
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            if mixup is not None:
                images, target = mixup(images, target)
            with bf16_autocast(device, cfg.amp):
                loss = task(images, target)['loss']
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f'non-finite loss {loss.item()} at step {step}; lower --blr or set '
                                         f'--clip-grad')
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            if ema is not None:
                ema.update(model, step=step)
            step += 1
            last_loss = loss.item()
            bar.update(1)
            bar.set_postfix(loss=f'{last_loss:.4f}', lr=f'{optimizer.param_groups[-1]["lr"]:.2e}')
            if step >= max_steps:
                break
        epoch += 1
        if ctx.is_primary and cfg.eval_every and epoch % cfg.eval_every == 0 and step < max_steps:
            evaluate()
    bar.close()

    results: Dict[str, Any] = {}
    if ctx.is_primary:
        final = evaluate()
        bare = unwrap_model(model)
        weights_path = os.path.join(cfg.output_dir, 'model.safetensors')
        state = {k: v.detach().contiguous().cpu() for k, v in bare.state_dict().items()}
        metadata = dict(format='pt', architecture=source['architecture'], num_classes=str(num_classes),
                        model_kwargs=json.dumps(source['model_kwargs']))
        atomic_write(weights_path, lambda tmp: save_file(state, tmp, metadata=metadata))
        wall = time.time() - start
        results = {
            'top1': final['top1'], 'knn_top1': None, 'pixel_linear_top1': None, 'pixel_knn_top1': None,
            'top5': final.get('top5'), 'top1_ema': final.get('top1_ema'),
            'protocol': dict(name='finetune', optimizer='AdamW + layer decay (timm lr_scale)',
                             schedule='per-step linear warm-up + cosine (timm CosineLRScheduler)',
                             augmentation=f'create_transform(auto_augment={cfg.auto_augment!r}, re_prob={cfg.reprob})',
                             mixup=mixup is not None, loss=type(criterion).__name__),
            'encoder': source,
            'dataset': dict(name=cfg.dataset, train_samples=len(train_set), eval_samples=len(val_set),
                            eval_split='val (the official test split)', num_classes=num_classes, img_size=img_size,
                            in_chans=in_chans, pad_to=dataset_pad_to(cfg.dataset, img_size)),
            'hyperparameters': dict(cfg.to_dict(), lr=lr, effective_batch=eff_batch, world_size=ctx.world_size,
                                    steps_per_epoch=steps_per_epoch, total_steps=total_steps, steps_run=step),
            'history': history, 'last_loss': last_loss, 'weights': weights_path,
            'wall_time_s': wall, 'hardware': hardware_info(device),
        }
        results['path'] = write_results(cfg.output_dir, results)
        print(summary_line(results))
    ctx.barrier()
    return results


def summary_line(results: Dict[str, Any]) -> str:
    """The one-line stdout summary of a fine-tuning results dict."""
    enc, data, hp = results['encoder'], results['dataset'], results['hyperparameters']
    ema = f' (ema {results["top1_ema"]:.2f})' if results.get('top1_ema') is not None else ''
    return (f'finetune {enc["architecture"]} [{enc["kind"]}] on {data["name"]} {data["train_samples"]}/'
            f'{data["eval_samples"]}: top1 {results["top1"]:.2f}{ema} | {hp["steps_run"]} steps | '
            f'{results["wall_time_s"]:.0f} s')
