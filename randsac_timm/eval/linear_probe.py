"""Frozen-encoder evaluation: linear probe (MoCo v3 / MAE protocol), weighted kNN, and raw-pixel baselines.

Feature of an image: the mean of the encoder's last-block tokens (no class token, no `fc_norm`: pretraining
never trains that norm, and the probe's BatchNorm standardises anyway). The raw-pixel baseline runs the very
same head and kNN on the flattened, normalised pixels of the same images, so one data pass feeds both.

Two modes share one head-training loop:
    paper (default)  each epoch draws fresh crops (RandomResizedCrop + flip) through the frozen encoder;
    fast (`--fast`)   features of the un-augmented images are extracted once and the head trains on the cache.

Beside that fixed-schedule LARS probe (`top1`), converged logistic-regression readouts (`converged_probe.py`) run in
both modes on the un-augmented features: of the encoder (`lbfgs_top1`), of every block's mean-pooled tokens
(`per_block_top1`), of raw pixels (`pixel_lbfgs_top1`) and of raw pixels PCA-reduced to the encoder's width
(`pixel_pca_linear_top1`, the dimension-matched floor).
"""
import logging
import math
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

from ..hub.loading import load_encoder
from ..train.data import (
    SeededAugmentation,
    build_dataset,
    build_eval_transform,
    build_loader,
    build_pretrain_transform,
    dataset_in_chans,
    dataset_num_classes,
    dataset_pad_to,
    dataset_stats,
    set_loader_epoch,
)
from ..train.distributed import bf16_autocast, resolve_device
from .config import LinearProbeConfig
from .converged_probe import (
    LBFGS_DTYPE,
    LBFGS_HISTORY,
    LBFGS_L2,
    LBFGS_MAX_ITER,
    LBFGS_TOL,
    pca_basis,
    readout_top1,
)
from .lars import Lars
from .results import hardware_info, write_results

__all__ = [
    'LinearHead', 'mean_token_features', 'block_mean_features', 'extract_features', 'cached_batches',
    'augmented_batches', 'train_linear_heads', 'evaluate_head', 'knn_scores', 'topk_accuracy', 'converged_readouts',
    'run_linear_probe',
]

_logger = logging.getLogger(__name__)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
Batches = Callable[[int], Iterable[Tuple[Dict[str, torch.Tensor], torch.Tensor]]]

PROBE_CROP_SCALE = (0.08, 1.0)  # MAE / MoCo v3 linear probe: torchvision's default RandomResizedCrop scale


class LinearHead(nn.Module):
    """`BatchNorm1d(affine=False)` + `Linear`: the MAE linear-probe head. (B, D) -> (B, num_classes)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


def mean_token_features(encoder: nn.Module) -> FeatureFn:
    """x (B, C, H, W) -> mean of the last block's (non-prefix) tokens, (B, D)."""
    prefix = getattr(encoder, 'num_prefix_tokens', 0)

    def features(x: torch.Tensor) -> torch.Tensor:
        return encoder.forward_features(x)[:, prefix:].mean(1).float()

    return features


def block_mean_features(encoder: nn.Module) -> FeatureFn:
    """x (B, C, H, W) -> (B, depth, D): the mean of each block's (non-prefix) tokens after the encoder's final norm.

    Entry `depth - 1` is `mean_token_features`; one forward gives every block (timm's `forward_intermediates`).
    """

    def features(x: torch.Tensor) -> torch.Tensor:
        blocks = encoder.forward_intermediates(x, norm=True, output_fmt='NLC', intermediates_only=True)
        return torch.stack([tokens.mean(1) for tokens in blocks], 1).float()

    return features


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).float()


@torch.no_grad()
def _apply(extractors: Dict[str, FeatureFn], images: torch.Tensor, device: torch.device,
           amp: bool) -> Dict[str, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    with bf16_autocast(device, amp):
        return {name: fn(images).float() for name, fn in extractors.items()}


@torch.no_grad()
def extract_features(
        loader: Iterable,
        extractors: Dict[str, FeatureFn],
        device: torch.device,
        amp: bool = False,
        desc: Optional[str] = None,
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """One pass over `loader` ((B, C, H, W) images, (B,) labels) through every extractor.

    Returns:
        ({name: (N, D_name) float32 on `device`}, labels (N,) int64 on `device`), in the loader's order.
    """
    parts: Dict[str, list] = {name: [] for name in extractors}
    labels = []
    for images, target in tqdm(loader, desc=desc, disable=desc is None, dynamic_ncols=True):
        for name, feats in _apply(extractors, images, device, amp).items():
            parts[name].append(feats)
        labels.append(torch.as_tensor(target).to(device))
    return {name: torch.cat(p) for name, p in parts.items()}, torch.cat(labels)


def _batch_plan(n: int, batch_size: int) -> Tuple[int, bool]:
    # BatchNorm needs > 1 sample per batch: drop the ragged tail unless the split is smaller than one batch
    drop_last = n >= batch_size
    return (n // batch_size if drop_last else 1), drop_last


def cached_batches(features: Dict[str, torch.Tensor], labels: torch.Tensor, batch_size: int,
                   seed: int) -> Tuple[Batches, int]:
    """Fast mode: epoch `e` visits the cached features in the order `randperm(N, seed + e)`.

    Returns:
        (batches(epoch) -> iterator of ({name: (B, D)}, (B,)), steps per epoch)
    """
    n = len(labels)
    steps, _ = _batch_plan(n, batch_size)
    size = min(batch_size, n)

    def batches(epoch: int) -> Iterator[Tuple[Dict[str, torch.Tensor], torch.Tensor]]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).to(labels.device)
        for i in range(steps):
            idx = order[i * size:(i + 1) * size]
            yield {name: f[idx] for name, f in features.items()}, labels[idx]

    return batches, steps


def augmented_batches(loader: torch.utils.data.DataLoader, extractors: Dict[str, FeatureFn], device: torch.device,
                      amp: bool = False) -> Batches:
    """Paper mode: epoch `e` draws fresh crops (fixed by (seed, e, index) via `SeededAugmentation`) and runs them
    through the frozen extractors. `loader` must be built with `with_epoch=True`."""

    def batches(epoch: int) -> Iterator[Tuple[Dict[str, torch.Tensor], torch.Tensor]]:
        set_loader_epoch(loader, epoch)
        for images, target in loader:
            yield _apply(extractors, images, device, amp), torch.as_tensor(target).to(device)

    return batches


def train_linear_heads(
        batches: Batches,
        steps_per_epoch: int,
        feature_dims: Dict[str, int],
        num_classes: int,
        epochs: int,
        warmup_epochs: float,
        lr: float,
        min_lr: float = 0.0,
        momentum: float = 0.9,
        trust_coeff: float = 0.001,
        weight_decay: float = 0.0,
        seed: int = 0,
        device: Optional[torch.device] = None,
        progress: bool = False,
) -> Dict[str, LinearHead]:
    """Train one `LinearHead` per feature set on the same batches: LARS, per-step warm-up + cosine.

    Args:
        batches: epoch -> iterator of ({name: (B, D_name)}, labels (B,)).
        steps_per_epoch: length of each epoch's iterator (for the schedule).
        feature_dims: {name: D_name}; one head each.
        lr: peak learning rate (after warm-up).

    Returns:
        {name: trained head in eval mode}.
    """
    device = device or torch.device('cpu')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # head init depends on the seed only
        heads = {name: LinearHead(dim, num_classes).to(device) for name, dim in sorted(feature_dims.items())}
    # LARS is per tensor, so one optimizer over every head equals one optimizer per head
    params = [p for head in heads.values() for p in head.parameters()]
    optimizer = Lars(params, lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coeff=trust_coeff)
    total = epochs * steps_per_epoch
    warmup = min(round(warmup_epochs * steps_per_epoch), total)
    # timm's warmup_prefix puts warm-up before a cosine of t_initial steps, so the cosine ends at the last step
    scheduler = CosineLRScheduler(optimizer, t_initial=max(total - warmup, 1), lr_min=min_lr, warmup_t=warmup,
                                  warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    for head in heads.values():
        head.train()
    step = 0
    bar = tqdm(total=total, disable=not progress, desc='linear head', dynamic_ncols=True)
    for epoch in range(epochs):
        for feats, labels in batches(epoch):
            scheduler.step_update(step)
            loss = sum(F.cross_entropy(heads[name](feats[name]), labels) for name in heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
    bar.close()
    if step == 0:
        raise ValueError('the linear head got no training batch; check --epochs and the training split')
    return {name: head.eval() for name, head in heads.items()}


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, topk: Tuple[int, ...] = (1,)) -> Dict[int, float]:
    """scores (N, C), labels (N,) -> {k: percent of samples whose label is among the k best scores}."""
    best = scores.topk(max(topk), dim=1).indices  # (N, maxk)
    hit = best == labels[:, None]
    return {k: 100.0 * hit[:, :k].any(1).float().mean().item() for k in topk}


@torch.no_grad()
def evaluate_head(head: LinearHead, features: torch.Tensor, labels: torch.Tensor,
                  topk: Tuple[int, ...] = (1,), batch_size: int = 4096) -> Dict[int, float]:
    """Accuracy of a trained head (eval mode: BatchNorm running statistics) on features (N, D)."""
    head.eval()
    scores = torch.cat([head(features[i:i + batch_size]) for i in range(0, len(features), batch_size)])
    return topk_accuracy(scores, labels, topk)


@torch.no_grad()
def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
               num_classes: int, k: int = 20, t: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted cosine kNN (DINO): the k most similar training samples vote with weight exp(cos / t).

    Args:
        train_features: (N, D); train_labels: (N,); test_features: (M, D).

    Returns:
        (M, num_classes) summed vote weights.
    """
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, len(train))
    out = []
    for i in range(0, len(test_features), chunk):
        sim = F.normalize(test_features[i:i + chunk].float(), dim=1) @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / t).exp())
        out.append(votes)
    return torch.cat(out)


def converged_readouts(
        train_blocks: torch.Tensor,
        train_labels: torch.Tensor,
        val_blocks: torch.Tensor,
        val_labels: torch.Tensor,
        num_classes: int,
        train_pixels: Optional[torch.Tensor] = None,
        val_pixels: Optional[torch.Tensor] = None,
        progress: bool = False,
) -> Dict[str, Any]:
    """Converged L-BFGS logistic readouts (fit on train, top-1 on val) of every block and, if given, of raw pixels.

    Args:
        train_blocks, val_blocks: (N, depth, D) per-block features (`block_mean_features`); the last is the encoder's.
        train_pixels, val_pixels: (N, P) flattened pixels, or None; read in full and PCA-reduced to D dimensions
            (principal directions of the training pixels only).

    Returns:
        {'blocks': [fit of block 1, ..., block depth], 'encoder': the last block's fit, 'pixels': ..., 'pixels_pca':
        ...}; each fit is {'top1', 'iterations', 'evaluations', 'converged', 'loss', 'grad_max'}.
    """
    depth, width = train_blocks.shape[1:]
    jobs: Dict[str, Callable[[], Tuple[torch.Tensor, torch.Tensor]]] = {
        f'block{i + 1}': (lambda i=i: (train_blocks[:, i], val_blocks[:, i])) for i in range(depth)}
    if train_pixels is not None:
        jobs['pixels'] = lambda: (train_pixels, val_pixels)

        def pca() -> Tuple[torch.Tensor, torch.Tensor]:
            mean, components = pca_basis(train_pixels, width)
            return (train_pixels.double() - mean) @ components, (val_pixels.double() - mean) @ components

        jobs['pixels_pca'] = pca
    fits: Dict[str, Dict[str, Any]] = {}
    for name, data in tqdm(jobs.items(), desc='L-BFGS readouts', disable=not progress, dynamic_ncols=True):
        train, val = data()
        top1, info = readout_top1(train, train_labels, val, val_labels, num_classes)
        fits[name] = dict(top1=top1, **info, dim=train.shape[1])
        _logger.info('L-BFGS readout %s: top1 %.2f after %d iterations (converged: %s)', name, top1,
                     info['iterations'], info['converged'])
    blocks = [fits.pop(f'block{i + 1}') for i in range(depth)]
    return dict(blocks=blocks, encoder=blocks[-1], **fits)


def _split_blocks(feats: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """Replace feats['blocks'] (N, depth, D) by feats['encoder'] = its last block; return the blocks (or None)."""
    blocks = feats.pop('blocks', None)
    if blocks is not None:
        feats['encoder'] = blocks[:, -1].contiguous()
    return blocks


def _build_splits(cfg: LinearProbeConfig, img_size: int):
    mean, std = dataset_stats(cfg.dataset)
    pad_to = dataset_pad_to(cfg.dataset, img_size)
    eval_tf = build_eval_transform(img_size, mean, std, pad_to=pad_to)
    train = build_dataset(cfg.dataset, 'train', cfg.data_dir, transform=eval_tf, download=cfg.download,
                          max_samples=cfg.max_train_samples, seed=cfg.seed)
    val = build_dataset(cfg.dataset, 'val', cfg.data_dir, transform=eval_tf, download=cfg.download,
                        max_samples=cfg.max_eval_samples, seed=cfg.seed)
    crop_tf = build_pretrain_transform(img_size, mean, std, pad_to=pad_to, scale=PROBE_CROP_SCALE)
    return train, val, crop_tf


def run_linear_probe(cfg: LinearProbeConfig) -> Dict[str, Any]:
    """Linear probe + kNN of the encoder, and of raw pixels, on `cfg.dataset`; writes `results.json`.

    Returns:
        the results dict (also at `cfg.output_dir/results.json`); percentages.
    """
    start = time.time()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    encoder, source = load_encoder(checkpoint=cfg.checkpoint, model=cfg.model, pretrained=cfg.pretrained,
                                   num_classes=0, img_size=cfg.img_size, in_chans=dataset_in_chans(cfg.dataset))
    encoder = encoder.to(device).eval().requires_grad_(False)
    img_size = encoder.patch_embed.img_size[0] if cfg.img_size is None else cfg.img_size
    train_set, val_set, crop_tf = _build_splits(cfg, img_size)
    num_classes = dataset_num_classes(cfg.dataset, train_set)

    extractors: Dict[str, FeatureFn] = {'encoder': mean_token_features(encoder)}
    if cfg.pixel_baselines:
        extractors['pixels'] = _flatten
    plain = dict(extractors)  # the un-augmented pass
    if cfg.lbfgs:  # every block's pooled tokens from the same forward; 'encoder' is then the last of them
        plain = {'blocks': block_mean_features(encoder), **{k: v for k, v in plain.items() if k != 'encoder'}}
    timings: Dict[str, float] = {}
    loader_kw = dict(batch_size=cfg.feature_batch_size, shuffle=False, num_workers=cfg.workers, seed=cfg.seed)
    desc = (lambda s: s) if cfg.progress else (lambda s: None)
    t0 = time.time()
    val_feats, val_labels = extract_features(build_loader(val_set, **loader_kw), plain, device, cfg.amp,
                                             desc('features (eval)'))
    need_plain_train = cfg.fast or cfg.knn or cfg.lbfgs
    train_feats, train_labels = (extract_features(build_loader(train_set, **loader_kw), plain, device, cfg.amp,
                                                  desc('features (train)')) if need_plain_train else ({}, None))
    val_blocks, train_blocks = _split_blocks(val_feats), _split_blocks(train_feats)
    timings['feature_extraction_s'] = time.time() - t0

    n_train = len(train_set)
    batch = min(cfg.batch_size, n_train)
    lr = cfg.lr if cfg.lr is not None else cfg.blr * batch / 256
    if cfg.fast:
        batches, steps = cached_batches(train_feats, train_labels, cfg.batch_size, cfg.seed)
    else:
        steps, drop_last = _batch_plan(n_train, cfg.batch_size)
        base = build_dataset(cfg.dataset, 'train', cfg.data_dir, transform=None, download=cfg.download,
                             max_samples=cfg.max_train_samples, seed=cfg.seed)
        loader = build_loader(SeededAugmentation(base, crop_tf, seed=cfg.seed), batch, shuffle=True,
                              num_workers=cfg.workers, seed=cfg.seed, drop_last=drop_last, with_epoch=True)
        batches = augmented_batches(loader, extractors, device, cfg.amp)
    t0 = time.time()
    dims = {name: f.shape[1] for name, f in val_feats.items()}
    heads = train_linear_heads(batches, steps, dims, num_classes, cfg.epochs, cfg.warmup_epochs, lr, cfg.min_lr,
                               cfg.momentum, cfg.trust_coeff, cfg.weight_decay, cfg.seed, device, cfg.progress)
    timings['head_training_s'] = time.time() - t0

    topk = (1, 5) if num_classes > 10 else (1,)  # top-5 of 10 classes says little
    metrics: Dict[str, Dict[str, Optional[float]]] = {}
    t0 = time.time()
    for name in extractors:
        linear = evaluate_head(heads[name], val_feats[name], val_labels, topk)
        knn = None
        if cfg.knn:
            scores = knn_scores(train_feats[name], train_labels, val_feats[name], num_classes, cfg.knn_k, cfg.knn_t)
            knn = topk_accuracy(scores, val_labels, topk)
        metrics[name] = dict(linear_top1=linear[1], linear_top5=linear.get(5),
                             knn_top1=knn[1] if knn else None, knn_top5=knn.get(5) if knn else None)
    timings['evaluation_s'] = time.time() - t0
    readouts: Dict[str, Any] = {}
    if cfg.lbfgs:
        t0 = time.time()
        readouts = converged_readouts(train_blocks, train_labels, val_blocks, val_labels, num_classes,
                                      train_feats.get('pixels'), val_feats.get('pixels'), cfg.progress)
        timings['lbfgs_s'] = time.time() - t0
    wall = time.time() - start
    pixels = metrics.get('pixels', {})
    lbfgs_top1 = {name: fit['top1'] for name, fit in readouts.items() if name != 'blocks'}
    results: Dict[str, Any] = {
        'top1': metrics['encoder']['linear_top1'],
        'knn_top1': metrics['encoder']['knn_top1'],
        'pixel_linear_top1': pixels.get('linear_top1'),
        'pixel_knn_top1': pixels.get('knn_top1'),
        'lbfgs_top1': lbfgs_top1.get('encoder'),
        'pixel_lbfgs_top1': lbfgs_top1.get('pixels'),
        'pixel_pca_linear_top1': lbfgs_top1.get('pixels_pca'),
        'per_block_top1': [fit['top1'] for fit in readouts['blocks']] if readouts else None,
        'top5': metrics['encoder']['linear_top5'],
        'protocol': dict(
            name='linear_probe', mode='fast' if cfg.fast else 'paper',
            feature='mean of last-block tokens (no class token, no fc_norm)',
            head='BatchNorm1d(affine=False, eps=1e-6) + Linear', optimizer='LARS (trust ratio on >=2-D tensors)',
            augmentation=('none (cached features)' if cfg.fast else
                          f'RandomResizedCrop(scale={PROBE_CROP_SCALE}) + horizontal flip'),
            knn=dict(k=cfg.knn_k, t=cfg.knn_t, weighting='exp(cos/t)') if cfg.knn else None,
            pixel_baseline='same head / kNN on flattened normalised pixels' if cfg.pixel_baselines else None,
            converged_readout=_converged_protocol() if cfg.lbfgs else None),
        'metrics': metrics,
        'converged_readouts': readouts or None,
        'encoder': source,
        'dataset': dict(name=cfg.dataset, train_split='train', eval_split='val (the official test split)',
                        train_samples=n_train, eval_samples=len(val_set), num_classes=num_classes,
                        img_size=img_size, in_chans=dataset_in_chans(cfg.dataset),
                        pad_to=dataset_pad_to(cfg.dataset, img_size)),
        'hyperparameters': dict(cfg.to_dict(), effective_batch=batch, lr=lr, steps_per_epoch=steps,
                                total_steps=steps * cfg.epochs),
        'wall_time_s': wall,
        'timings_s': timings,
        'hardware': hardware_info(device),
    }
    results['path'] = write_results(cfg.output_dir, results)
    print(summary_line(results))
    return results


def _converged_protocol() -> Dict[str, Any]:
    return dict(
        model='multinomial logistic regression on standardised features (training mean / std)',
        objective='mean cross-entropy + l2 / 2 * ||W||^2 (bias not decayed)', l2=LBFGS_L2,
        optimizer=f'torch.optim.LBFGS, full batch, strong Wolfe line search, history {LBFGS_HISTORY}, zero init',
        tolerance=f'max |gradient| <= {LBFGS_TOL}', max_iter=LBFGS_MAX_ITER,
        dtype=f'{str(LBFGS_DTYPE).removeprefix("torch.")} (mean / std / PCA in float64)',
        features='un-augmented images (both modes); per block: mean of its tokens after the final norm',
        pixel_pca='pixels projected on the top-D principal directions of the training pixels (D = encoder width)',
    )


def _pct(value: Optional[float]) -> str:
    return 'n/a' if value is None or (isinstance(value, float) and math.isnan(value)) else f'{value:.2f}'


def summary_line(results: Dict[str, Any]) -> str:
    """The one-line stdout summary of a linear-probe results dict."""
    enc, data = results['encoder'], results['dataset']
    return (f'linear probe ({results["protocol"]["mode"]}) {enc["architecture"]} [{enc["kind"]}] on {data["name"]} '
            f'{data["train_samples"]}/{data["eval_samples"]}: top1 {_pct(results["top1"])} | '
            f'knn {_pct(results["knn_top1"])} | pixels linear {_pct(results["pixel_linear_top1"])} '
            f'knn {_pct(results["pixel_knn_top1"])} | {_converged_summary(results)}{results["wall_time_s"]:.0f} s')


def _converged_summary(results: Dict[str, Any]) -> str:
    if results.get('lbfgs_top1') is None:
        return ''
    blocks = ' '.join(f'{v:.1f}' for v in results['per_block_top1'])
    return (f'L-BFGS {_pct(results["lbfgs_top1"])} pixels {_pct(results["pixel_lbfgs_top1"])} '
            f'PCA pixels {_pct(results["pixel_pca_linear_top1"])} | blocks [{blocks}] | ')
