"""The pretraining loop: data -> PretrainTask -> AdamW + warm-up/cosine per step, checkpoints, logs, pictures.

Built on timm pieces (`timm.task.TrainingTask`, `timm.optim.create_optimizer_v2`, `timm.scheduler`) and kept
to one loop that reads top to bottom. Reproducibility contract: every random draw of optimizer step `s` on
process `r` is seeded from `(seed, r, s)` (segment orders, dropout) or `(seed, epoch, sample index)`
(augmentation, see `data.SeededAugmentation`), and the batch order from `(seed, epoch)`, so a run killed at
any point and resumed from its last checkpoint logs the same losses as one that never stopped.
"""
import contextlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import unwrap_model
from tqdm import tqdm

from ..hub.loading import init_pretrain_model
from .checkpoint import (
    LAST,
    CheckpointError,
    atomic_save,
    export_encoder,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
)
from .config import PretrainConfig, check_pretrain_config
from .data import (
    SeededAugmentation,
    build_dataset,
    build_eval_transform,
    build_loader,
    build_pretrain_transform,
    dataset_in_chans,
    dataset_pad_to,
    dataset_stats,
    set_loader_epoch,
)
from .distributed import DistContext, bf16_autocast, init_distributed, select_attention_backends
from .task import PretrainTask

__all__ = ['train', 'TrainResult', 'NonFiniteLossError', 'build_pretrain_model']

_logger = logging.getLogger(__name__)

NUM_VIS_IMAGES = 8


class NonFiniteLossError(RuntimeError):
    """Raised after `max_nonfinite` non-finite losses in a row; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    output_dir: str
    checkpoint: Optional[str]
    encoder: Optional[str]
    log: str
    pictures: List[str] = field(default_factory=list)
    step: int = 0
    epoch: int = 0
    last_loss: float = float('nan')
    nonfinite_skipped: int = 0
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0  # this process's CPU time, user + system


class JsonlLog:
    """Appends one JSON object per line to `log.jsonl` (primary process only), flushed at each record."""

    def __init__(self, path: Optional[str]):
        self.path = path

    def write(self, **record: Any) -> None:
        if self.path is None:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')


def _objective_kwargs(cfg: PretrainConfig) -> Dict[str, Any]:
    """The options only one objective takes: MAE (`mae_pretrain_*`) or RandSAC (every other wrapper)."""
    if cfg.model.startswith('mae_'):
        return dict(mask_ratio=cfg.mask_ratio)  # segments / decoder / skip options do not apply to MAE
    kwargs = dict(skip_connections=cfg.skip_connections, loss_first_segment=cfg.loss_first_segment, decoder=cfg.decoder,
                  attn_impl=cfg.attn_impl, attn_block_size=cfg.attn_block_size)
    if cfg.segments:
        kwargs['segments'] = cfg.segments
    if cfg.skip_memory:
        kwargs['skip_memory'] = cfg.skip_memory
    return kwargs


def build_pretrain_model(cfg: PretrainConfig) -> torch.nn.Module:
    """The pretraining wrapper named by `cfg.model`, with the run's objective options."""
    kwargs: Dict[str, Any] = dict(
        img_size=cfg.img_size, in_chans=dataset_in_chans(cfg.dataset), norm_pix=cfg.norm_pix_loss,
        drop_path_rate=cfg.drop_path, **_objective_kwargs(cfg),
    )
    return timm.create_model(cfg.model, **kwargs)


def _model_kwargs(model: torch.nn.Module, cfg: PretrainConfig) -> Dict[str, Any]:
    """Factory kwargs that rebuild this exact wrapper (segments resolved to the model's default if unset)."""
    kwargs = dict(
        img_size=cfg.img_size, in_chans=model.in_chans, norm_pix=cfg.norm_pix_loss,
        drop_path_rate=cfg.drop_path, **_objective_kwargs(cfg),
    )
    if 'mask_ratio' not in kwargs:
        kwargs['segments'] = str(model.segments)
    if getattr(model, 'decoder_kind', None) == 'skip':  # resolved, so a later change of the default cannot break it
        kwargs['skip_memory'] = model.decoder.memory.skip_memory
    return kwargs


def _step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    return hash((seed, rank, step, micro)) % 2**63


def _vis_images(cfg: PretrainConfig, mean, std) -> Optional[torch.Tensor]:
    """A fixed handful of validation images (eval transform) for the reconstruction pictures."""
    try:
        transform = build_eval_transform(cfg.img_size, mean, std, pad_to=dataset_pad_to(cfg.dataset, cfg.img_size))
        val = build_dataset(cfg.dataset, 'val', cfg.data_dir, transform=transform, download=cfg.download)
    except (FileNotFoundError, ValueError) as e:
        _logger.warning(f'no validation split for pictures ({e}); using training images')
        return None
    return torch.stack([val[i][0] for i in range(min(NUM_VIS_IMAGES, len(val)))])


def train(cfg: PretrainConfig) -> TrainResult:
    """Run (or resume) one pretraining job described by `cfg`; see `train_pretrain.py --help`."""
    # the process's own CPU time (user + system, every thread) beside wall-clock: a busy machine slows the
    # wall-clock of a run but not its CPU time, so equal-budget comparisons use the latter
    start_time, start_cpu = time.time(), time.process_time()
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, start_time, start_cpu)
    finally:
        ctx.close()


def _train(cfg: PretrainConfig, ctx: DistContext, start_time: float, start_cpu: float) -> TrainResult:
    device = ctx.device
    check_pretrain_config(cfg)  # before anything is read or written
    out_dir = cfg.output_dir
    if ctx.is_primary:
        os.makedirs(out_dir, exist_ok=True)
    log = JsonlLog(os.path.join(out_dir, 'log.jsonl') if ctx.is_primary else None)

    # data: augmentation fixed by (seed, epoch, index), order by (seed, epoch)
    mean, std = dataset_stats(cfg.dataset)
    base = build_dataset(cfg.dataset, 'train', cfg.data_dir, transform=None, download=cfg.download,
                         max_samples=cfg.max_train_samples, seed=cfg.seed)
    transform = build_pretrain_transform(cfg.img_size, mean, std, pad_to=dataset_pad_to(cfg.dataset, cfg.img_size),
                                         scale=tuple(cfg.crop_scale))
    dataset = SeededAugmentation(base, transform, seed=cfg.seed)
    loader = build_loader(dataset, cfg.batch_size, shuffle=True, num_workers=cfg.workers, seed=cfg.seed,
                          drop_last=True, distributed=ctx.distributed, rank=ctx.rank, world_size=ctx.world_size,
                          with_epoch=True)
    set_loader_epoch(loader, 0)
    updates_per_epoch = len(loader) // cfg.accum_iter
    if updates_per_epoch == 0:
        raise ValueError(
            f'{len(dataset)} training images give no full step of batch {cfg.batch_size} x accum {cfg.accum_iter} '
            f'x {ctx.world_size} processes; lower --batch-size / --accum-iter or use more data.')
    batches_per_epoch = updates_per_epoch * cfg.accum_iter

    # model, objective, optimizer, schedule
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    model = build_pretrain_model(cfg).to(device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    generator = torch.Generator(device=device)
    task = PretrainTask(model, generator=generator, device=device)
    eff_batch = cfg.batch_size * cfg.accum_iter * ctx.world_size
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    optimizer = create_optimizer_v2(model, opt='adamw', lr=lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    total_updates = cfg.epochs * updates_per_epoch
    warmup_updates = min(round(cfg.warmup_epochs * updates_per_epoch), total_updates - 1)
    # warmup_prefix: the cosine spans the updates after the warm-up, so it reaches min_lr at the last one
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total_updates - warmup_updates, lr_min=cfg.min_lr, warmup_t=warmup_updates,
        warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)

    # resume: an explicit --resume, else the output folder's last checkpoint
    step, epoch, batch_in_epoch, nonfinite_skipped = 0, 0, 0, 0
    if cfg.resume and cfg.init:
        raise ValueError(f'--resume {cfg.resume} continues a run (optimizer and schedule included) and --init '
                         f'{cfg.init} starts a new one from weights; pass one of them')
    init = None
    resume_path = cfg.resume or (os.path.join(out_dir, LAST) if cfg.auto_resume else None)
    if resume_path and (cfg.resume or os.path.exists(resume_path)):
        state = load_checkpoint(resume_path)
        if state['model_name'] != cfg.model:
            raise CheckpointError(
                f'{resume_path} was written by model {state["model_name"]!r}, not {cfg.model!r}; use a new '
                f'--output-dir or the same --model.')
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        step, epoch, batch_in_epoch = state['step'], state['epoch'], state['batch_in_epoch']
        nonfinite_skipped = state.get('nonfinite_skipped', 0)
        if ctx.is_primary:
            print(f'resumed from {resume_path} at step {step} (epoch {epoch}, batch {batch_in_epoch})')
        log.write(event='resume', step=step, epoch=epoch, checkpoint=resume_path)
    elif cfg.init:
        # a new run from a full pretraining model (after a kill, the folder's own checkpoint resumes it instead):
        # every wrapper weight, strictly; the optimizer and schedule above stay fresh, at step 0
        init = init_pretrain_model(model, cfg.init, cfg.model)
        if ctx.is_primary:
            print(f'initialised {cfg.model} from {cfg.init} ({init["path"]}, sha256 {init["sha256"][:12]}...)')

    if cfg.compile:
        task.compile()
    if ctx.distributed:
        task.prepare_distributed(device_ids=[device.index] if device.type == 'cuda' else None)
    model.train()

    max_steps = min(total_updates, cfg.max_steps) if cfg.max_steps else total_updates
    vis = _vis_images(cfg, mean, std) if ctx.is_primary else None
    use_amp = cfg.amp
    if use_amp and device.type != 'cuda' and ctx.is_primary:
        print('warning: --amp on CPU runs bf16 autocast, which is slow on most CPUs; fp32 is the CPU default')
    cudnn_sdp = select_attention_backends(device, cfg.cudnn_attention) if device.type == 'cuda' else None
    meta = dict(model=cfg.model, segments=str(model.segments), lr=lr, effective_batch=eff_batch, cudnn_sdp=cudnn_sdp,
                world_size=ctx.world_size, device=str(device), updates_per_epoch=updates_per_epoch,
                total_updates=total_updates, torch=torch.__version__, timm=timm.__version__,
                host=platform.node(), cpu=platform.processor() or platform.machine(),
                gpu=torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
                init={k: v for k, v in init.items() if k != 'model_kwargs'} if init else None)
    log.write(event='start', step=step, config=cfg.to_dict(), **meta)

    result = TrainResult(output_dir=out_dir, checkpoint=None, encoder=None, log=os.path.join(out_dir, 'log.jsonl'))

    def save(tag: Optional[str] = None) -> Optional[str]:
        if not ctx.is_primary:
            return None
        bare = unwrap_model(model)
        state = {
            'format': 'randsac-timm/pretrain/v1',
            'model': bare.state_dict(),
            'model_name': cfg.model,
            'model_kwargs': _model_kwargs(bare, cfg),
            'encoder_name': bare.encoder.pretrained_cfg.get('architecture'),
            'encoder_kwargs': dict(img_size=cfg.img_size, in_chans=bare.in_chans),
            'optimizer': optimizer.state_dict(),
            'scheduler': scheduler.state_dict(),
            'step': step, 'epoch': epoch, 'batch_in_epoch': batch_in_epoch,
            'nonfinite_skipped': nonfinite_skipped,
            'rng': rng_state({'segments': generator}),
            'config': cfg.to_dict(),
            'world_size': ctx.world_size,
            'wall_time_s': time.time() - start_time,
        }
        last = os.path.join(out_dir, LAST)
        atomic_save(state, last)
        if tag is not None:
            atomic_save(state, os.path.join(out_dir, f'checkpoint-{tag}.pth'))
            prune_checkpoints(out_dir, cfg.keep_checkpoints)
        return last

    def picture(name: str) -> None:
        if not ctx.is_primary or vis is None:
            return
        from ..visualize import save_reconstruction
        bare = unwrap_model(model)
        bare.eval()
        path = save_reconstruction(os.path.join(out_dir, name), bare, vis.to(device), mean, std,
                                   generator=torch.Generator(device=device).manual_seed(cfg.seed))
        bare.train()
        result.pictures.append(path)

    progress = tqdm(total=max_steps, initial=step, disable=not (ctx.is_primary and cfg.progress),
                    dynamic_ncols=True, desc='pretrain')
    window_loss, window_count, window_start = 0.0, 0, time.time()
    window_first_step = step
    epoch_loss, epoch_count = 0.0, 0
    nonfinite_run = 0
    stop = step >= max_steps

    while not stop and epoch < cfg.epochs:
        set_loader_epoch(loader, epoch, skip_batches=batch_in_epoch)
        window_bad = False
        for images, _ in loader:
            if batch_in_epoch >= batches_per_epoch:
                break
            micro = batch_in_epoch % cfg.accum_iter
            if micro == 0:
                scheduler.step_update(step)
                window_bad = False
            seed = _step_seed(cfg.seed, ctx.rank, step, micro)
            torch.manual_seed(seed)  # dropout / drop path of this micro-batch
            generator.manual_seed(seed)  # segment orders of this micro-batch
            images = images.to(device, non_blocking=True)
            last_micro = micro == cfg.accum_iter - 1
            sync = contextlib.nullcontext() if last_micro or not ctx.distributed else task.no_sync()
            with sync:
                with bf16_autocast(device, use_amp):
                    loss = task(images)['loss']
                bad = ctx.any(not bool(torch.isfinite(loss)))
                if bad:
                    window_bad = True
                else:
                    (loss / cfg.accum_iter).backward()
                    window_loss += loss.item()
                    window_count += 1
                    epoch_loss += loss.item()
                    epoch_count += 1
            batch_in_epoch += 1
            if not last_micro:
                continue

            if not window_bad:
                # a finite loss can still give inf/NaN gradients (an overflow in backward); stepping on them
                # would poison the weights and every checkpoint after, so they count as a non-finite step too
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.grad is not None], cfg.clip_grad or float('inf'))
                window_bad = not bool(torch.isfinite(grad_norm))
            if window_bad:
                optimizer.zero_grad(set_to_none=True)
                nonfinite_skipped += 1
                nonfinite_run += 1
                log.write(event='nonfinite', step=step, epoch=epoch, skipped_total=nonfinite_skipped)
                if nonfinite_run >= cfg.max_nonfinite:
                    last = os.path.join(out_dir, LAST)
                    raise NonFiniteLossError(
                        f'{nonfinite_run} non-finite losses or gradients in a row (step {step}); stopping. The last '
                        f'good checkpoint {last if os.path.exists(last) else "(none yet)"} is kept. Lower --blr, '
                        f'set --clip-grad, or check the data; raise --max-nonfinite to tolerate more.')
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                nonfinite_run = 0
            step += 1
            progress.update(1)

            if step % cfg.log_every == 0 or step == max_steps:
                mean_loss = ctx.all_reduce_mean(
                    torch.tensor(window_loss / max(window_count, 1), device=device)).item()
                elapsed = max(time.time() - window_start, 1e-9)
                ips = (step - window_first_step) * eff_batch / elapsed
                cur_lr = optimizer.param_groups[0]['lr']
                extra = {}
                if device.type == 'cuda':
                    extra['peak_memory_mb'] = torch.cuda.max_memory_allocated(device) / 2**20
                log.write(event='train', step=step, epoch=epoch + batch_in_epoch / batches_per_epoch,
                          loss=mean_loss, lr=cur_lr, images_per_s=ips, nonfinite_skipped=nonfinite_skipped, **extra)
                progress.set_postfix(loss=f'{mean_loss:.4f}', lr=f'{cur_lr:.2e}', img_s=f'{ips:.0f}')
                result.last_loss = mean_loss
                window_loss, window_count, window_start, window_first_step = 0.0, 0, time.time(), step
            if cfg.save_every and step % cfg.save_every == 0:
                save(tag=str(step))
            if cfg.vis_every and step % cfg.vis_every == 0:
                picture(f'reconstruction-step{step:07d}.png')
            if step >= max_steps:
                stop = True
                break

        if batch_in_epoch >= batches_per_epoch:  # the epoch ran to its end
            mean_loss = ctx.all_reduce_mean(torch.tensor(epoch_loss / max(epoch_count, 1), device=device)).item()
            log.write(event='epoch', step=step, epoch=epoch, loss=mean_loss,
                      images_per_s=None, nonfinite_skipped=nonfinite_skipped, wall_time_s=time.time() - start_time,
                      cpu_time_s=time.process_time() - start_cpu)
            epoch, batch_in_epoch = epoch + 1, 0
            epoch_loss, epoch_count = 0.0, 0
            save(tag=f'epoch{epoch:04d}')
    progress.close()

    result.checkpoint = save()
    result.step, result.epoch, result.nonfinite_skipped = step, epoch, nonfinite_skipped
    if ctx.is_primary:
        bare = unwrap_model(model)
        result.encoder = os.path.join(out_dir, 'encoder.safetensors')
        export_encoder(bare.encoder, result.encoder, bare.encoder.pretrained_cfg.get('architecture'),
                       dict(img_size=cfg.img_size, in_chans=bare.in_chans),
                       extra_metadata={'pretrain_model': cfg.model, 'step': str(step)})
        picture('reconstruction-final.png')
    result.wall_time_s = time.time() - start_time
    result.cpu_time_s = time.process_time() - start_cpu
    log.write(event='end', step=step, epoch=epoch, wall_time_s=result.wall_time_s, cpu_time_s=result.cpu_time_s,
              nonfinite_skipped=nonfinite_skipped, last_loss=result.last_loss)
    ctx.barrier()
    if ctx.is_primary:
        print(f'done: {step} steps in {result.wall_time_s:.0f} s ({nonfinite_skipped} non-finite steps skipped)')
        print(f'  checkpoint: {result.checkpoint}')
        print(f'  log:        {result.log}')
        print(f'  pictures:   {", ".join(result.pictures) if result.pictures else "(none)"}')
        print(f'  encoder:    {result.encoder}  (plain timm ViT keys, no decoder)')
    return result
