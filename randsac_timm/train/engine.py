"""The pretraining loop: data -> PretrainTask -> AdamW + warm-up/cosine per step, checkpoints, logs, pictures.

Built on timm pieces (`timm.task.TrainingTask`, `timm.optim.create_optimizer_v2`, `timm.scheduler`).
`train_one_epoch` is the step a reader cares about (batch -> serialization seed -> loss -> backward -> optimizer),
as in MAE's `engine_pretrain.train_one_epoch`; the rest sits beside it: `_setup` builds the data, model, optimizer
and schedule (`Run`), `_restore` resumes a run or starts one from `--init`, `RunState` says where a run is,
and `Callbacks` does what follows each step: records and the progress bar (`TrainLogger`), online evaluation
(`Evaluation`, see `online_eval.py`), checkpoints (`Checkpointer`) and reconstruction pictures (`Pictures`).

Reproducibility contract: every random draw of optimizer step `s` on process `r` is seeded from `(seed, r, s)`
(segment orders, dropout) or `(seed, epoch, sample index)` (augmentation, see `data.SeededAugmentation`), and the
batch order from `(seed, epoch)`, so a run killed at any point and resumed from its last checkpoint logs the same
losses as one that never stopped.
"""
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import unwrap_model
from torch.utils.data import DataLoader
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
from .config import PretrainConfig, check_pretrain_config, resolve_pretrain_config
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
from .online_eval import EvalSchedule, OnlineEvaluator
from .run_log import JsonlLog, machine_record
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
    curves: Optional[str] = None  # training-curves.png, drawn when online evaluation is on


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


def _factory_kwargs(cfg: PretrainConfig, in_chans: int) -> Dict[str, Any]:
    """The wrapper factory's kwargs for this run: input, target, drop path, objective options, decoder sizes."""
    names = ('decoder_embed_dim', 'decoder_depth', 'decoder_num_heads')  # unset ones stay the wrapper's
    decoder_sizes = {name: getattr(cfg, name) for name in names if getattr(cfg, name) is not None}
    input_size = {} if cfg.img_size is None else dict(img_size=cfg.img_size)  # None: the model's own
    return dict(**input_size, in_chans=in_chans, norm_pix=cfg.norm_pix_loss, drop_path_rate=cfg.drop_path,
                **_objective_kwargs(cfg), **decoder_sizes)


def build_pretrain_model(cfg: PretrainConfig) -> torch.nn.Module:
    """The pretraining wrapper named by `cfg.model`, with the run's objective options."""
    return timm.create_model(cfg.model, **_factory_kwargs(cfg, dataset_in_chans(cfg.dataset)))


def _model_kwargs(model: torch.nn.Module, cfg: PretrainConfig) -> Dict[str, Any]:
    """Factory kwargs that rebuild this exact wrapper (segments resolved to the model's default if unset)."""
    kwargs = _factory_kwargs(cfg, model.in_chans)
    if 'mask_ratio' not in kwargs:
        kwargs['segments'] = str(model.segments)
    if getattr(model, 'decoder_kind', None) == 'skip':  # resolved, so a later change of the default cannot break it
        kwargs['skip_memory'] = model.decoder.memory.skip_memory
    return kwargs


def _step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    return hash((seed, rank, step, micro)) % 2**63


@dataclass
class Clock:
    """Wall-clock and this process's CPU time (user + system, every thread) since `train` was called: a busy
    machine slows the wall-clock of a run but not its CPU time, so equal-budget comparisons use the latter."""

    wall_start: float = field(default_factory=time.time)
    cpu_start: float = field(default_factory=time.process_time)

    def wall(self) -> float:
        return time.time() - self.wall_start

    def cpu(self) -> float:
        return time.process_time() - self.cpu_start


@dataclass
class Run:
    """What `_setup` builds once per process: the data, the model and its objective, the optimizer and schedule."""

    cfg: PretrainConfig
    ctx: DistContext
    loader: DataLoader
    model: torch.nn.Module  # the bare wrapper; `task` may hold it wrapped (DDP, torch.compile)
    task: PretrainTask
    generator: torch.Generator  # segment orders, reseeded every micro-batch
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    lr: float
    eff_batch: int  # images per optimizer step, all processes together
    updates_per_epoch: int
    total_updates: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def batches_per_epoch(self) -> int:
        return self.updates_per_epoch * self.cfg.accum_iter

    @property
    def max_steps(self) -> int:
        return min(self.total_updates, self.cfg.max_steps) if self.cfg.max_steps else self.total_updates


@dataclass
class RunState:
    """Where a run is. A checkpoint stores all of it but `nonfinite_run`, so a resumed run continues exactly."""

    step: int = 0  # optimizer steps done (skipped non-finite ones included)
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` done
    nonfinite_skipped: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    nonfinite_run: int = 0  # of those, how many in a row up to now


def _build_train_loader(cfg: PretrainConfig, ctx: DistContext) -> DataLoader:
    """Augmentation fixed by (seed, epoch, index), order by (seed, epoch), one shard per process."""
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
    if len(loader) // cfg.accum_iter == 0:
        raise ValueError(
            f'{len(dataset)} training images give no full step of batch {cfg.batch_size} x accum {cfg.accum_iter} '
            f'x {ctx.world_size} processes; lower --batch-size / --accum-iter or use more data.')
    return loader


def _setup(cfg: PretrainConfig, ctx: DistContext) -> Run:
    """Data, model, objective, AdamW and a per-step warm-up + cosine schedule, all at step 0."""
    loader = _build_train_loader(cfg, ctx)
    updates_per_epoch = len(loader) // cfg.accum_iter
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    model = build_pretrain_model(cfg).to(ctx.device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    generator = torch.Generator(device=ctx.device)
    eff_batch = cfg.batch_size * cfg.accum_iter * ctx.world_size
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    optimizer = create_optimizer_v2(model, opt='adamw', lr=lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    total_updates = max(1, round(cfg.epochs * updates_per_epoch))  # fractional epochs end mid-epoch
    warmup_updates = min(round(cfg.warmup_epochs * updates_per_epoch), total_updates - 1)
    # warmup_prefix: the cosine spans the updates after the warm-up, so it reaches min_lr at the last one
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total_updates - warmup_updates, lr_min=cfg.min_lr, warmup_t=warmup_updates,
        warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    mean, std = dataset_stats(cfg.dataset)
    return Run(cfg=cfg, ctx=ctx, loader=loader, model=model,
               task=PretrainTask(model, generator=generator, device=ctx.device), generator=generator,
               optimizer=optimizer, scheduler=scheduler, lr=lr, eff_batch=eff_batch,
               updates_per_epoch=updates_per_epoch, total_updates=total_updates, mean=mean, std=std)


def _restore(run: Run, log: JsonlLog) -> Tuple[RunState, Optional[Dict[str, Any]]]:
    """Resume from an explicit --resume, else the output folder's last checkpoint; else start from --init's weights.

    Returns:
        (where the run starts, what --init loaded or None).
    """
    cfg = run.cfg
    if cfg.resume and cfg.init:
        raise ValueError(f'--resume {cfg.resume} continues a run (optimizer and schedule included) and --init '
                         f'{cfg.init} starts a new one from weights; pass one of them')
    resume_path = cfg.resume or (os.path.join(cfg.output_dir, LAST) if cfg.auto_resume else None)
    if resume_path and (cfg.resume or os.path.exists(resume_path)):
        return _resume(run, resume_path, log), None
    if not cfg.init:
        return RunState(), None
    # a new run from a full pretraining model (after a kill, the folder's own checkpoint resumes it instead):
    # every wrapper weight, strictly; the optimizer and schedule stay fresh, at step 0
    init = init_pretrain_model(run.model, cfg.init, cfg.model)
    if run.ctx.is_primary:
        print(f'initialised {cfg.model} from {cfg.init} ({init["path"]}, sha256 {init["sha256"][:12]}...)')
    return RunState(), init


def _resume(run: Run, path: str, log: JsonlLog) -> RunState:
    """Load weights, optimizer and schedule from checkpoint `path`; returns where it stopped."""
    checkpoint = load_checkpoint(path)
    if checkpoint['model_name'] != run.cfg.model:
        raise CheckpointError(
            f'{path} was written by model {checkpoint["model_name"]!r}, not {run.cfg.model!r}; use a new '
            f'--output-dir or the same --model.')
    run.model.load_state_dict(checkpoint['model'])
    run.optimizer.load_state_dict(checkpoint['optimizer'])
    run.scheduler.load_state_dict(checkpoint['scheduler'])
    state = RunState(step=checkpoint['step'], epoch=checkpoint['epoch'], batch_in_epoch=checkpoint['batch_in_epoch'],
                     nonfinite_skipped=checkpoint.get('nonfinite_skipped', 0))
    if run.ctx.is_primary:
        print(f'resumed from {path} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})')
    log.write(event='resume', step=state.step, epoch=state.epoch, checkpoint=path)
    return state


def _prepare_model(run: Run) -> None:
    """torch.compile and DDP (after the weights are loaded), then training mode."""
    if run.cfg.compile:
        run.task.compile()
    if run.ctx.distributed:
        run.task.prepare_distributed(device_ids=[run.device.index] if run.device.type == 'cuda' else None)
    run.model.train()


def _run_info(run: Run, init: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The start record's description of the run and its machine; warns about --amp on CPU and selects the
    attention backends (their state is part of the record)."""
    cfg, device = run.cfg, run.device
    if cfg.amp and device.type != 'cuda' and run.ctx.is_primary:
        print('warning: --amp on CPU runs bf16 autocast, which is slow on most CPUs; fp32 is the CPU default')
    cudnn_sdp = select_attention_backends(device, cfg.cudnn_attention) if device.type == 'cuda' else None
    return dict(model=cfg.model, segments=str(run.model.segments), lr=run.lr, effective_batch=run.eff_batch,
                cudnn_sdp=cudnn_sdp, world_size=run.ctx.world_size,
                updates_per_epoch=run.updates_per_epoch, total_updates=run.total_updates,
                init={k: v for k, v in init.items() if k != 'model_kwargs'} if init else None, **machine_record(device))


class Checkpointer:
    """Writes `checkpoint-last.pth`, and numbered copies pruned to --keep-checkpoints, on the primary process."""

    def __init__(self, run: Run, clock: Clock):
        self.run, self.clock = run, clock
        self.last = os.path.join(run.cfg.output_dir, LAST)

    def state_dict(self, state: RunState) -> Dict[str, Any]:
        """The checkpoint: plain dicts and tensors only (see `checkpoint.py` for the keys)."""
        run, cfg = self.run, self.run.cfg
        bare = unwrap_model(run.model)
        return {
            'format': 'randsac-timm/pretrain/v1',
            'model': bare.state_dict(),
            'model_name': cfg.model,
            'model_kwargs': _model_kwargs(bare, cfg),
            'encoder_name': bare.encoder.pretrained_cfg.get('architecture'),
            'encoder_kwargs': dict(img_size=cfg.img_size, in_chans=bare.in_chans),
            'optimizer': run.optimizer.state_dict(),
            'scheduler': run.scheduler.state_dict(),
            'step': state.step, 'epoch': state.epoch, 'batch_in_epoch': state.batch_in_epoch,
            'nonfinite_skipped': state.nonfinite_skipped,
            'rng': rng_state({'segments': run.generator}),
            'config': cfg.to_dict(),
            'world_size': run.ctx.world_size,
            'wall_time_s': self.clock.wall(),
        }

    def save(self, state: RunState, tag: Optional[str] = None) -> Optional[str]:
        """Save `state`; with `tag`, also as `checkpoint-{tag}.pth`. Returns the last checkpoint's path (primary)."""
        if not self.run.ctx.is_primary:
            return None
        checkpoint = self.state_dict(state)
        atomic_save(checkpoint, self.last)
        if tag is not None:
            atomic_save(checkpoint, os.path.join(self.run.cfg.output_dir, f'checkpoint-{tag}.pth'))
            prune_checkpoints(self.run.cfg.output_dir, self.run.cfg.keep_checkpoints)
        return self.last


def _vis_images(cfg: PretrainConfig, mean, std) -> Optional[torch.Tensor]:
    """A fixed handful of validation images (eval transform) for the reconstruction pictures."""
    try:
        transform = build_eval_transform(cfg.img_size, mean, std, pad_to=dataset_pad_to(cfg.dataset, cfg.img_size))
        val = build_dataset(cfg.dataset, 'val', cfg.data_dir, transform=transform, download=cfg.download)
    except (FileNotFoundError, ValueError) as e:
        _logger.warning(f'no validation split for pictures ({e}); using training images')
        return None
    return torch.stack([val[i][0] for i in range(min(NUM_VIS_IMAGES, len(val)))])


class Pictures:
    """Reconstructions of a fixed handful of validation images, drawn on the primary process; `paths` lists them."""

    def __init__(self, run: Run):
        self.run = run
        self.images = _vis_images(run.cfg, run.mean, run.std) if run.ctx.is_primary else None
        self.paths: List[str] = []

    def draw(self, name: str) -> None:
        if self.images is None:
            return
        from ..visualize import save_reconstruction
        run, bare = self.run, unwrap_model(self.run.model)
        bare.eval()
        path = save_reconstruction(os.path.join(run.cfg.output_dir, name), bare, self.images.to(run.device),
                                   run.mean, run.std, generator=torch.Generator(device=run.device).manual_seed(
                                       run.cfg.seed))
        bare.train()
        self.paths.append(path)


def _epoch(run: Run, state: RunState) -> float:
    """Epochs done, with the fraction of the current one."""
    return state.epoch + state.batch_in_epoch / run.batches_per_epoch


class TrainLogger:
    """log.jsonl's per-step records and the progress bar.

    Owns the running sums behind them: the mean loss over the micro-batches since the last train record (and since
    the epoch began), and images/s over the same window; `last_loss` is the last train record's loss.
    """

    def __init__(self, log: JsonlLog, run: Run, step: int, clock: Clock):
        self.log, self.run, self.clock = log, run, clock
        self.progress = tqdm(total=run.max_steps, initial=step, disable=not (run.ctx.is_primary and run.cfg.progress),
                             dynamic_ncols=True, desc='pretrain')
        self.postfix: Dict[str, str] = {}
        # a run resumed at (or near) its end still reports the loss it reached, not NaN
        resumed_loss = log.last('train', 'loss') if step > 0 else None
        self.last_loss = float('nan') if resumed_loss is None else float(resumed_loss)
        self.epoch_loss, self.epoch_count = 0.0, 0
        self._new_window(step)

    def _new_window(self, step: int) -> None:
        self.window_loss, self.window_count, self.window_start, self.window_first_step = 0.0, 0, time.time(), step

    def _mean(self, total: float, count: int) -> float:
        """The mean over every process (a collective: each process calls it at the same point)."""
        return self.run.ctx.all_reduce_mean(torch.tensor(total / max(count, 1), device=self.run.device)).item()

    def pause(self, seconds: float) -> None:
        """Leave `seconds` spent on something else (an evaluation) out of the window's images/s."""
        self.window_start += seconds

    def show(self, **values: str) -> None:
        self.postfix.update(values)
        self.progress.set_postfix(**self.postfix)

    def add_loss(self, loss: float) -> None:
        self.window_loss += loss
        self.window_count += 1
        self.epoch_loss += loss
        self.epoch_count += 1

    def step_done(self, state: RunState) -> None:
        """Advance the bar; every --log-every steps and at the last one, write a train record."""
        self.progress.update(1)
        run = self.run
        if state.step % run.cfg.log_every != 0 and state.step != run.max_steps:
            return
        mean_loss = self._mean(self.window_loss, self.window_count)
        elapsed = max(time.time() - self.window_start, 1e-9)
        ips = (state.step - self.window_first_step) * run.eff_batch / elapsed
        lr = run.optimizer.param_groups[0]['lr']
        extra = {}
        if run.device.type == 'cuda':
            extra['peak_memory_mb'] = torch.cuda.max_memory_allocated(run.device) / 2**20
        self.log.write(event='train', step=state.step, epoch=_epoch(run, state), loss=mean_loss, lr=lr,
                       images_per_s=ips, nonfinite_skipped=state.nonfinite_skipped, wall_time_s=self.clock.wall(),
                       cpu_time_s=self.clock.cpu(), **extra)
        self.show(loss=f'{mean_loss:.4f}', lr=f'{lr:.2e}', img_s=f'{ips:.0f}')
        self.last_loss = mean_loss
        self._new_window(state.step)

    def epoch_done(self, state: RunState) -> None:
        self.log.write(event='epoch', step=state.step, epoch=state.epoch,
                       loss=self._mean(self.epoch_loss, self.epoch_count), images_per_s=None,
                       nonfinite_skipped=state.nonfinite_skipped, wall_time_s=self.clock.wall(),
                       cpu_time_s=self.clock.cpu())
        self.epoch_loss, self.epoch_count = 0.0, 0


class Evaluation:
    """Online evaluation (`online_eval.py`) when its schedule says: the primary process scores the encoder and
    writes an `eval` record, the others wait at a barrier. The time it takes is left out of the logged images/s."""

    def __init__(self, run: Run, schedule: EvalSchedule):
        self.schedule = schedule
        self.evaluator = OnlineEvaluator(run.cfg, run.device) if run.ctx.is_primary else None

    @classmethod
    def from_run(cls, run: Run) -> Optional['Evaluation']:
        """None unless --eval-every or --eval-every-minutes is set."""
        schedule = EvalSchedule.from_config(run.cfg, run.updates_per_epoch, run.max_steps)
        return cls(run, schedule) if schedule else None

    def __call__(self, run: Run, state: RunState, logger: TrainLogger, force: bool = False) -> None:
        """Evaluate if one is due after step `state.step`, or if `force` (the starting point of a new run)."""
        due = force or self.schedule.due(state.step)
        if self.schedule.every_minutes and not force:
            due = run.ctx.any(due)  # each process reads its own clock; all must agree
        if not due:
            return
        start, wall, cpu = time.time(), logger.clock.wall(), logger.clock.cpu()
        if self.evaluator is not None:
            result = self.evaluator.evaluate(unwrap_model(run.model).encoder)
            # its own CPU time too, so time-to-accuracy curves (curves.py, benchmarks/race.py) can leave it out
            result['eval_cpu_s'] = logger.clock.cpu() - cpu
            logger.log.write(event='eval', step=state.step, epoch=_epoch(run, state),
                             images_seen=state.step * run.eff_batch, wall_time_s=wall, cpu_time_s=cpu, **result)
            logger.show(knn=f'{result["knn_top1"]:.1f}')
        run.ctx.barrier()
        logger.pause(time.time() - start)
        self.schedule.done()


@dataclass
class Callbacks:
    """What happens beside the optimisation: records and progress, online evaluation, checkpoints, pictures."""

    logger: TrainLogger
    checkpointer: Checkpointer
    pictures: Pictures
    evaluation: Optional[Evaluation] = None

    def after_step(self, run: Run, state: RunState) -> None:
        """After optimizer step `state.step`: its record, then an evaluation, a checkpoint and a picture when due.

        The evaluation comes before the checkpoint, so a run killed in between evaluates that step again on resume.
        """
        self.logger.step_done(state)
        if self.evaluation is not None:
            self.evaluation(run, state, self.logger)
        if run.cfg.save_every and state.step % run.cfg.save_every == 0:
            self.checkpointer.save(state, tag=str(state.step))
        if run.cfg.vis_every and state.step % run.cfg.vis_every == 0:
            self.pictures.draw(f'reconstruction-step{state.step:07d}.png')


def _grad_sync(run: Run, last_micro: bool):
    """DDP all-reduces the gradients once per optimizer step, on its last micro-batch."""
    return contextlib.nullcontext() if last_micro or not run.ctx.distributed else run.task.no_sync()


def _gradients_finite(run: Run) -> bool:
    """Clip to --clip-grad (if set); False for an inf/NaN norm. A finite loss can still give non-finite gradients
    (an overflow in backward), and stepping on them would poison the weights and every checkpoint after."""
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in run.model.parameters() if p.grad is not None], run.cfg.clip_grad or float('inf'))
    return bool(torch.isfinite(grad_norm))


def _skip_step(run: Run, state: RunState, log: JsonlLog) -> None:
    """Drop this step's gradients and count it; after --max-nonfinite in a row, stop (the last checkpoint stays)."""
    run.optimizer.zero_grad(set_to_none=True)
    state.nonfinite_skipped += 1
    state.nonfinite_run += 1
    log.write(event='nonfinite', step=state.step, epoch=state.epoch, skipped_total=state.nonfinite_skipped)
    if state.nonfinite_run >= run.cfg.max_nonfinite:
        last = os.path.join(run.cfg.output_dir, LAST)
        raise NonFiniteLossError(
            f'{state.nonfinite_run} non-finite losses or gradients in a row (step {state.step}); stopping. The last '
            f'good checkpoint {last if os.path.exists(last) else "(none yet)"} is kept. Lower --blr, '
            f'set --clip-grad, or check the data; raise --max-nonfinite to tolerate more.')


def train_one_epoch(run: Run, state: RunState, callbacks: Callbacks) -> None:
    """Train on the rest of epoch `state.epoch` (from micro-batch `state.batch_in_epoch`), up to `run.max_steps`.

    Every micro-batch: seed its randomness from (seed, rank, step, micro-batch), compute the loss, backpropagate.
    After the last micro-batch of a step: clip, then step the optimizer, or skip the step if any loss or the
    gradient was not finite. `state` advances as it goes, so a checkpoint taken after any step resumes exactly.
    """
    cfg, ctx = run.cfg, run.ctx
    set_loader_epoch(run.loader, state.epoch, skip_batches=state.batch_in_epoch)
    nonfinite = False  # a micro-batch of the current optimizer step had a non-finite loss
    for images, _ in run.loader:
        if state.batch_in_epoch >= run.batches_per_epoch:
            break
        micro = state.batch_in_epoch % cfg.accum_iter
        if micro == 0:
            run.scheduler.step_update(state.step)
            nonfinite = False
        seed = _step_seed(cfg.seed, ctx.rank, state.step, micro)
        torch.manual_seed(seed)  # dropout / drop path of this micro-batch
        run.generator.manual_seed(seed)  # segment orders of this micro-batch
        images = images.to(run.device, non_blocking=True)
        last_micro = micro == cfg.accum_iter - 1
        with _grad_sync(run, last_micro):
            with bf16_autocast(run.device, cfg.amp):
                loss = run.task(images)['loss']
            if ctx.any(not bool(torch.isfinite(loss))):  # agreed by every process, so all skip the same steps
                nonfinite = True
            else:
                (loss / cfg.accum_iter).backward()
                callbacks.logger.add_loss(loss.item())
        state.batch_in_epoch += 1
        if not last_micro:
            continue

        if nonfinite or not _gradients_finite(run):
            _skip_step(run, state, callbacks.logger.log)
        else:
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            state.nonfinite_run = 0
        state.step += 1
        callbacks.after_step(run, state)
        if state.step >= run.max_steps:
            break


def train(cfg: PretrainConfig) -> TrainResult:
    """Run (or resume) one pretraining job described by `cfg`; see `train_pretrain.py --help`."""
    clock = Clock()
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, clock)
    finally:
        ctx.close()


def _train(cfg: PretrainConfig, ctx: DistContext, clock: Clock) -> TrainResult:
    check_pretrain_config(cfg)  # before anything is read or written
    cfg = resolve_pretrain_config(cfg)
    if ctx.is_primary:
        os.makedirs(cfg.output_dir, exist_ok=True)
    log = JsonlLog(os.path.join(cfg.output_dir, 'log.jsonl') if ctx.is_primary else None)
    run = _setup(cfg, ctx)
    state, init = _restore(run, log)
    _prepare_model(run)
    pictures, evaluation = Pictures(run), Evaluation.from_run(run)
    log.write(event='start', step=state.step, config=cfg.to_dict(), **_run_info(run, init))
    callbacks = Callbacks(TrainLogger(log, run, state.step, clock), Checkpointer(run, clock), pictures, evaluation)
    if evaluation is not None and state.step == 0:  # the starting point of a new run
        evaluation(run, state, callbacks.logger, force=True)

    while state.step < run.max_steps and state.epoch < cfg.epochs:
        train_one_epoch(run, state, callbacks)
        if state.batch_in_epoch >= run.batches_per_epoch:  # the epoch ran to its end
            callbacks.logger.epoch_done(state)
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            callbacks.checkpointer.save(state, tag=f'epoch{state.epoch:04d}')
    callbacks.logger.progress.close()
    return _finish(run, state, callbacks, clock)


def _finish(run: Run, state: RunState, callbacks: Callbacks, clock: Clock) -> TrainResult:
    """The last checkpoint, the encoder alone, a final picture, the end record and the summary lines."""
    cfg, ctx = run.cfg, run.ctx
    result = TrainResult(output_dir=cfg.output_dir, checkpoint=callbacks.checkpointer.save(state), encoder=None,
                         log=os.path.join(cfg.output_dir, 'log.jsonl'), pictures=callbacks.pictures.paths,
                         step=state.step, epoch=state.epoch, last_loss=callbacks.logger.last_loss,
                         nonfinite_skipped=state.nonfinite_skipped)
    if ctx.is_primary:
        bare = unwrap_model(run.model)
        result.encoder = os.path.join(cfg.output_dir, 'encoder.safetensors')
        export_encoder(bare.encoder, result.encoder, bare.encoder.pretrained_cfg.get('architecture'),
                       dict(img_size=cfg.img_size, in_chans=bare.in_chans),
                       extra_metadata={'pretrain_model': cfg.model, 'step': str(state.step)})
        callbacks.pictures.draw('reconstruction-final.png')
    result.wall_time_s, result.cpu_time_s = clock.wall(), clock.cpu()
    callbacks.logger.log.write(event='end', step=state.step, epoch=state.epoch, wall_time_s=result.wall_time_s,
                               cpu_time_s=result.cpu_time_s, nonfinite_skipped=state.nonfinite_skipped,
                               last_loss=result.last_loss)
    if ctx.is_primary and callbacks.evaluation is not None:
        # imported here: `python -m randsac_timm.train.curves` would warn about finding it imported by the package
        from .curves import plot_curves
        result.curves = plot_curves([result.log], os.path.join(cfg.output_dir, 'training-curves.png'))
    ctx.barrier()
    if ctx.is_primary:
        print(f'done: {state.step} steps in {result.wall_time_s:.0f} s ({state.nonfinite_skipped} non-finite steps '
              'skipped)')
        print(f'  checkpoint: {result.checkpoint}')
        print(f'  log:        {result.log}')
        print(f'  pictures:   {", ".join(result.pictures) if result.pictures else "(none)"}')
        if result.curves:
            print(f'  curves:     {result.curves}')
        print(f'  encoder:    {result.encoder}  (plain timm ViT keys, no decoder)')
    return result
