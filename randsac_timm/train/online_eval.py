"""Online evaluation during pretraining: the encoder's weighted kNN top-1 (and, optionally, the converged L-BFGS
readout) on fixed subsets, every `--eval-every` epochs and / or `--eval-every-minutes`, as `eval` records in log.jsonl.

What is measured is `eval_linear.py`'s own protocol, by its own functions, on smaller fixed subsets:
    bank     a seeded subset of the TRAIN split, `--eval-train-samples` images, eval transform (no augmentation);
    queries  a seeded subset of the TEST split (`'val'`: the split eval_linear.py scores on), `--eval-test-samples`;
    feature  the mean of the encoder's last-block tokens (`linear_probe.mean_token_features`);
    kNN      cosine, k = 20, T = 0.07, votes exp(cos / T) (`linear_probe.knn_scores`, LinearProbeConfig's k and T);
    readout  multinomial logistic regression fitted by L-BFGS to convergence (`converged_probe.readout_top1`).
The subsets are drawn once from `--eval-seed` (default `--seed`), so every evaluation of a run (and of runs with the
same evaluation seed) scores the same images, and the numbers of a finished run are comparable to
`eval_linear.py --max-train-samples N --max-eval-samples M` of its encoder.

It runs on the primary process, in eval mode, under `torch.no_grad` and inside `torch.random.fork_rng`, so the
training run draws exactly the same random numbers (and ends with the same weights) with evaluation on or off.
"""
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..eval.config import LinearProbeConfig
from ..eval.converged_probe import readout_top1
from ..eval.linear_probe import extract_features, knn_scores, mean_token_features, topk_accuracy
from .config import PretrainConfig, resolve_pretrain_config
from .data import build_dataset, build_eval_transform, dataset_num_classes, dataset_pad_to, dataset_stats

__all__ = ['EvalSchedule', 'OnlineEvaluator']

KNN_K = LinearProbeConfig.knn_k
KNN_T = LinearProbeConfig.knn_t
# eval-transformed images up to this size are kept in memory (Fashion-MNIST / CIFAR subsets: tens of MB); larger
# ones (ImageNet crops) are read again at each evaluation through a loader with the run's workers
CACHE_BYTES = 512 * 2**20


class _Split:
    """A fixed evaluation subset: its images kept in memory if small enough, else read through a loader each time."""

    def __init__(self, dataset: Dataset, batch_size: int, workers: int):
        self.dataset, self.batch_size = dataset, batch_size
        # its own generator: iterating a loader would otherwise draw its worker seed from the global RNG
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                 generator=torch.Generator().manual_seed(0))
        image = dataset[0][0]
        self.cached: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        if image.numel() * image.element_size() * len(dataset) <= CACHE_BYTES:
            images, labels = zip(*self.loader)
            self.cached = torch.cat(images), torch.cat(labels)

    def batches(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.cached is None:
            yield from self.loader
            return
        images, labels = self.cached
        for i in range(0, len(images), self.batch_size):
            yield images[i:i + self.batch_size], labels[i:i + self.batch_size]


class OnlineEvaluator:
    """Scores an encoder on the run's fixed bank (train split) and queries (test split); see the module docstring.

    Args:
        cfg: the run's settings (dataset, image size, seed, `eval_*` options, batch size, workers, amp).
        device: where the encoder lives.
    """

    def __init__(self, cfg: PretrainConfig, device: torch.device):
        cfg = resolve_pretrain_config(cfg)  # a cfg straight from the parser leaves the input size to the model
        mean, std = dataset_stats(cfg.dataset)
        transform = build_eval_transform(cfg.img_size, mean, std, pad_to=dataset_pad_to(cfg.dataset, cfg.img_size))
        splits = {}
        seed = cfg.seed if cfg.eval_seed is None else cfg.eval_seed
        for split, samples in (('train', cfg.eval_train_samples), ('val', cfg.eval_test_samples)):
            dataset = build_dataset(cfg.dataset, split, cfg.data_dir, transform=transform, download=cfg.download,
                                    max_samples=samples, seed=seed)
            splits[split] = _Split(dataset, cfg.batch_size, cfg.workers)
        self.bank, self.queries = splits['train'], splits['val']
        self.num_classes = dataset_num_classes(cfg.dataset, self.bank.dataset)
        self.lbfgs, self.amp, self.device = cfg.eval_lbfgs, cfg.amp, device

    def _scores(self, encoder: nn.Module) -> Dict[str, float]:
        extractor = {'encoder': mean_token_features(encoder)}
        bank, bank_labels = extract_features(self.bank.batches(), extractor, self.device, self.amp)
        queries, query_labels = extract_features(self.queries.batches(), extractor, self.device, self.amp)
        bank, queries = bank['encoder'], queries['encoder']
        scores = knn_scores(bank, bank_labels, queries, self.num_classes, KNN_K, KNN_T)
        result = {'knn_top1': topk_accuracy(scores, query_labels)[1]}
        if self.lbfgs:
            result['lbfgs_top1'] = readout_top1(bank, bank_labels, queries, query_labels, self.num_classes)[0]
        return result

    @torch.no_grad()
    def evaluate(self, encoder: nn.Module) -> Dict[str, float]:
        """{'knn_top1', ['lbfgs_top1'], 'eval_s'}: percentages on the queries, and the seconds it took."""
        start = time.time()
        was_training = encoder.training
        encoder.eval()
        devices = [self.device.index or 0] if self.device.type == 'cuda' else []
        try:
            with torch.random.fork_rng(devices=devices):
                result = self._scores(encoder)
        finally:
            encoder.train(was_training)
        result['eval_s'] = time.time() - start
        return result


@dataclass
class EvalSchedule:
    """When to evaluate after an optimizer step: every `every_steps` steps, once `every_minutes` of wall-clock have
    passed since the last evaluation, and at the last step. (A new run is also evaluated at step 0: the engine.)

    Args:
        every_steps: 0 = not by steps.
        every_minutes: 0 = not by time.
        last_step: the run's final step.
    """

    every_steps: int
    every_minutes: float
    last_step: int
    last_time: float = field(default_factory=time.time)

    @classmethod
    def from_config(cls, cfg: PretrainConfig, updates_per_epoch: int, last_step: int) -> Optional['EvalSchedule']:
        """None when evaluation is off (`--eval-every` and `--eval-every-minutes` both 0)."""
        if not cfg.eval_every and not cfg.eval_every_minutes:
            return None
        every_steps = max(1, round(cfg.eval_every * updates_per_epoch)) if cfg.eval_every else 0
        return cls(every_steps, cfg.eval_every_minutes, last_step)

    def due(self, step: int) -> bool:
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        return by_steps or step == self.last_step or self.clock_due()

    def clock_due(self) -> bool:
        return bool(self.every_minutes) and time.time() - self.last_time >= 60 * self.every_minutes

    def done(self) -> None:
        """Restart the wall-clock interval (after an evaluation)."""
        self.last_time = time.time()
