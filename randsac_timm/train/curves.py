"""Training curves from log.jsonl files: loss and online kNN top-1, against images seen and against wall-clock.

    python -m randsac_timm.train.curves output/run-a/log.jsonl output/run-b/log.jsonl --out curves.png

`train_pretrain.py` draws `training-curves.png` itself at the end of a run with online evaluation on
(`--eval-every`); this draws the same figure for any logs, one colour per run, e.g. to compare benchmark runs.

A log holds one segment per process that wrote to it, each opened by a `start` record with the step it started from.
A resumed segment replays the steps after its checkpoint, so the earlier segments' records past its starting step
are dropped, and its clock continues from the time the earlier segments had reached at that step (a new run in
the same folder starts from step 0 and so replaces them). Both clocks, wall-clock and the process's CPU time
(user + system), are training time: the evaluations' own seconds (`eval_s`, `eval_cpu_s`) are left out, so runs
evaluated at different rates compare fairly. Train records without `wall_time_s` (logs written before it was
recorded) are timed from their `images_per_s`; without `cpu_time_s`, the run has no CPU-time axis (None).
"""
import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .checkpoint import atomic_write
from .run_log import read_log

__all__ = ['RunCurves', 'read_curves', 'plot_curves', 'main']


@dataclass
class RunCurves:
    """One run's points; `wall_s` / `cpu_s` are training wall-clock / CPU time (evaluation time left out), across
    resumes. `*_cpu_s` are None where the log has no CPU time."""

    label: str
    train_images: List[float] = field(default_factory=list)
    train_wall_s: List[float] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    eval_images: List[float] = field(default_factory=list)
    eval_wall_s: List[float] = field(default_factory=list)
    train_cpu_s: List[Optional[float]] = field(default_factory=list)
    eval_cpu_s: List[Optional[float]] = field(default_factory=list)
    knn_top1: List[float] = field(default_factory=list)
    lbfgs_top1: List[Optional[float]] = field(default_factory=list)


def _segments(records: List[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
    segments: List[List[Dict[str, Any]]] = []
    for record in records:
        if record.get('event') == 'start' or not segments:
            segments.append([])
        segments[-1].append(record)
    return segments


def _timed(segment: List[Dict[str, Any]], offset: float, cpu_offset: Optional[float]) -> List[Dict[str, Any]]:
    """The segment's train and eval records, each with `images` seen and the training clocks `clock` (wall) and
    `cpu_clock` (CPU time, None where unknown) added."""
    start = segment[0] if segment[0].get('event') == 'start' else {}
    batch = start.get('effective_batch', 1)
    out, evals_s, evals_cpu = [], 0.0, 0.0
    last = (start.get('step', 0), 0.0)  # (step, clock) of the previous train record

    def cpu_clock(record: Dict[str, Any]) -> Optional[float]:
        if cpu_offset is None or record.get('cpu_time_s') is None:
            return None
        return cpu_offset + record['cpu_time_s'] - evals_cpu

    for record in segment:
        event = record.get('event')
        if event == 'train':
            if 'wall_time_s' in record:
                clock = record['wall_time_s'] - evals_s
            else:
                clock = last[1] + (record['step'] - last[0]) * batch / max(record.get('images_per_s') or 0, 1e-9)
            last = (record['step'], clock)
            out.append(dict(record, images=record['step'] * batch, clock=offset + clock, cpu_clock=cpu_clock(record)))
        elif event == 'eval':  # its clocks are read before the evaluation ran
            out.append(dict(record, images=record['images_seen'], clock=offset + record['wall_time_s'] - evals_s,
                            cpu_clock=cpu_clock(record)))
            evals_s += record.get('eval_s', 0.0)
            evals_cpu += record.get('eval_cpu_s', 0.0)
    return out


def _clock_at(points: List[Dict[str, Any]], step: int, key: str = 'clock') -> Optional[float]:
    """Training clock `key` ('clock' or 'cpu_clock') at `step`, interpolated between the train records around it;
    None where that clock is unknown."""
    train = [p for p in points if p['event'] == 'train']
    before = [p for p in train if p['step'] <= step]
    after = [p for p in train if p['step'] > step]
    if not before:
        return 0.0
    a = before[-1][key]
    if not after or after[0]['step'] == before[-1]['step'] or a is None:
        return a
    b = after[0][key]
    if b is None:
        return a
    return a + (b - a) * (step - before[-1]['step']) / (after[0]['step'] - before[-1]['step'])


def read_curves(path: str, label: Optional[str] = None) -> RunCurves:
    """A log.jsonl's curves, stitched across resumes (see the module docstring).

    Args:
        path: a log.jsonl written by train_pretrain.py.
        label: the run's name in the legend; default: the log's folder name.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'log {path} does not exist')
    records = read_log(path)
    points: List[Dict[str, Any]] = []
    for segment in _segments(records):
        first = segment[0].get('step', 0)
        if not first:  # a new run in the same folder
            points = []
        offset, cpu_offset = _clock_at(points, first), _clock_at(points, first, 'cpu_clock')
        points = [p for p in points if p['step'] <= first] + _timed(segment, offset, cpu_offset)
    curves = RunCurves(label or os.path.basename(os.path.dirname(os.path.abspath(path))))
    for p in points:
        if p['event'] == 'train':
            curves.train_images.append(p['images'])
            curves.train_wall_s.append(p['clock'])
            curves.train_cpu_s.append(p['cpu_clock'])
            curves.loss.append(p['loss'])
        else:
            curves.eval_images.append(p['images'])
            curves.eval_wall_s.append(p['clock'])
            curves.eval_cpu_s.append(p['cpu_clock'])
            curves.knn_top1.append(p['knn_top1'])
            curves.lbfgs_top1.append(p.get('lbfgs_top1'))
    return curves


def plot_curves(logs: Sequence[str], out_png: str, labels: Optional[Sequence[str]] = None) -> str:
    """Draw loss and kNN top-1 against images seen and against wall-clock for each log into one PNG.

    Args:
        logs: log.jsonl paths, one run each.
        out_png: the figure's path (written atomically).
        labels: legend names, one per log; default: each log's folder name.

    Returns:
        out_png.
    """
    if labels is not None and len(labels) != len(logs):
        raise ValueError(f'{len(labels)} labels for {len(logs)} logs; give one label per log')
    runs = [read_curves(path, label) for path, label in zip(logs, labels or [None] * len(logs))]
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazily, and no pyplot: no global backend state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8), layout='constrained')
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    longest = max([t for run in runs for t in run.train_wall_s + run.eval_wall_s] or [0.0])
    unit, scale = ('min', 60.0) if longest > 600 else ('s', 1.0)
    for i, run in enumerate(runs):
        color = f'C{i % 10}'
        axes[0, 0].plot(run.train_images, run.loss, color=color, label=run.label)
        axes[0, 1].plot([t / scale for t in run.train_wall_s], run.loss, color=color, label=run.label)
        for ax, x in ((axes[1, 0], run.eval_images), (axes[1, 1], [t / scale for t in run.eval_wall_s])):
            ax.plot(x, run.knn_top1, 'o-', color=color, label=f'{run.label} kNN')
            lbfgs = [(a, b) for a, b in zip(x, run.lbfgs_top1) if b is not None]
            if lbfgs:
                ax.plot(*zip(*lbfgs), 's--', color=color, label=f'{run.label} L-BFGS readout')
    for row, ylabel in ((0, 'training loss'), (1, 'top-1 on the test subset (%)')):
        axes[row, 0].set_xlabel('images seen')
        axes[row, 1].set_xlabel(f'training wall-clock ({unit}, evaluation time left out)')
        for ax in axes[row]:
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize='small')
            else:
                ax.text(0.5, 0.5, 'no online evaluation in these logs\n(train_pretrain.py --eval-every N)',
                        ha='center', va='center', transform=ax.transAxes, color='gray')
    fig.suptitle('pretraining curves: ' + ', '.join(run.label for run in runs))
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    return out_png


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m randsac_timm.train.curves', description=__doc__.split('\n')[0])
    parser.add_argument('logs', nargs='+', metavar='LOG', help='log.jsonl files written by train_pretrain.py')
    parser.add_argument('--out', required=True, metavar='PNG', help='the figure to write')
    parser.add_argument('--labels', nargs='+', default=None, help='legend names, one per log (default: folders)')
    args = parser.parse_args(argv)
    from .config import run_cli

    return run_cli(parser.prog, lambda: print(plot_curves(args.logs, args.out, args.labels)))


if __name__ == '__main__':
    sys.exit(main())
