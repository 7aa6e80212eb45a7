"""The race's second hour: rerun one of the time-to-accuracy race's runs, continue it for as many steps again
with the same recipe, and probe both ends on the full split.

    python benchmarks/race_continue.py --method MAE            # the race's seed 0: ~2 x 55 CPU-min, two 6-min probes
    python benchmarks/race_continue.py --method MAE --seed 1   # the race's seed 1, for a spread

`benchmarks/fmnist_continue.sh` gave RandSAC this second hour (it continued the shipped weights, which are the race's
RandSAC seed-0 run). This script gives MAE the same, and either method's seed 1 its own, so the two methods can be
compared at two race budgets each:
  1. run 1: the race's run, again, from its own committed config (`benchmarks/results/race_recipe/
     <method>-seed<S>.json` "config": recipe, epochs, seed S, the online evaluation on the race's subsets); its final
     loss and online readouts are checked against the race's, which says whether the rerun is the race's run;
  2. run 2: a warm restart from run 1's weights (`--init`: fresh optimizer, warmup and cosine schedule), the same
     recipe and step count, data order seed S + 1 (so it does not replay run 1's batches), evaluated on the same
     subsets, exactly as `fmnist_continue.sh` continued RandSAC (its seed 0);
  3. `eval_linear.py --fast --pixel-baselines` on run 2's and run 1's last checkpoints, the shipped weights' probe.
The step counts are the race's: each run's epochs are what the race's 60 CPU-min bought that method at 1 thread, so
both methods get two equal budgets on the race's scale whatever this machine's load. Runs train at `--threads`
(default 1, the race's) and are resumable stage by stage: rerun the command after a kill.

Output: `benchmarks/results/race_continue/<method>-seed<S>.json` (both runs' training time, online evaluations, probes
and the rerun check), rewritten after every stage. Runs live in `output/continue/<method>-seed<S>` and
`<method>-seed<S>-x2`. A missing race record, data set or probe failure ends in one line (exit 2), keeping every
finished stage.
"""
import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablation_grid import _read, _write_row  # noqa: E402

from randsac_timm.train.config import PretrainConfig, make_config  # noqa: E402
from randsac_timm.train.curves import read_curves  # noqa: E402
from randsac_timm.train.run_log import read_log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'benchmarks', 'results')


class ProbeFailed(RuntimeError):
    """`eval_linear.py` stopped on a run's checkpoint (its own error is printed above this script's)."""


def race_config(method: str, seed: int = 0) -> Dict[str, Any]:
    """The trainer values of the race's `method` run with `seed`, as the race committed them."""
    path = os.path.join(RESULTS, 'race_recipe', f'{method}-seed{seed}.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'no race record {path}: give --method and --seed of a committed race run '
                                f'(benchmarks/results/race_recipe/, written by benchmarks/race.py --recipes)')
    with open(path) as f:
        return json.load(f)


def _records(out_dir: str) -> List[Dict[str, Any]]:
    """The run log of `out_dir` (empty before the run starts)."""
    log = os.path.join(out_dir, 'log.jsonl')
    return read_log(log) if os.path.exists(log) else []


def _events(records: List[Dict[str, Any]], event: str) -> List[Dict[str, Any]]:
    return [r for r in records if r.get('event') == event]


def run_summary(out_dir: str) -> Dict[str, Any]:
    """A finished run's training time as the race counts it (stitched across resumes, evaluations left out), its last
    training record and its online evaluations."""
    records = _records(out_dir)
    last = _events(records, 'train')[-1]
    curves = read_curves(os.path.join(out_dir, 'log.jsonl'))
    return dict(train_cpu_min=curves.train_cpu_s[-1] / 60, train_wall_min=curves.train_wall_s[-1] / 60,
                steps=last['step'], final_loss=last['loss'], online_evals=_events(records, 'eval'))


def finished(out_dir: str, epochs: float) -> bool:
    """Whether the run in `out_dir` trained to its last epoch (a killed run has not)."""
    records = _records(out_dir)
    logged = _events(records, 'train')
    return bool(logged) and logged[-1]['epoch'] >= epochs - 1e-9 and bool(_events(records, 'end'))


def last_step(out_dir: str) -> int:
    """The last logged optimizer step of the run in `out_dir` (0 before it starts)."""
    logged = _events(_records(out_dir), 'train')
    return logged[-1]['step'] if logged else 0


def train(values: Dict[str, Any]) -> None:
    from randsac_timm.train.engine import train as run_training

    run_training(make_config(PretrainConfig, values))


def probe(checkpoint: str, out_dir: str, data_dir: Optional[str]) -> Dict[str, Any]:
    """The shipped weights' probe (`benchmarks/fmnist_weights.sh`): fast LARS, converged readout per block, kNN and
    the raw-pixel floor on the full split; kept in `out_dir/results.json`, so a finished probe is not rerun."""
    path = os.path.join(out_dir, 'results.json')
    if not os.path.exists(path):
        cmd = [sys.executable, os.path.join(ROOT, 'eval_linear.py'), '--checkpoint', checkpoint, '--fast',
               '--pixel-baselines', '--no-progress', '--output-dir', out_dir]
        if data_dir:
            cmd += ['--data-dir', data_dir]
        if subprocess.run(cmd).returncode != 0:
            raise ProbeFailed(f'eval_linear.py failed on {checkpoint} (its error is above); fix it and rerun this '
                              f'command: the finished runs are kept')
    with open(path) as f:
        return json.load(f)


def rerun_check(race: Dict[str, Any], run1: Dict[str, Any]) -> Dict[str, Any]:
    """Run 1 against the race's run: the same final loss and online readouts say it is the same run."""
    ours = run1['online_evals'][-1] if run1['online_evals'] else {}
    return dict(race_final_loss=race['final_loss'], rerun_final_loss=run1['final_loss'],
                race_knn_top1=race['knn_top1'][-1] if race.get('knn_top1') else None,
                rerun_knn_top1=ours.get('knn_top1'),
                race_lbfgs_top1=race['lbfgs_top1'][-1] if race.get('lbfgs_top1') else None,
                rerun_lbfgs_top1=ours.get('lbfgs_top1'))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
    parser.add_argument('--method', choices=('MAE', 'RandSAC'), required=True)
    parser.add_argument('--seed', type=int, default=0, help="the race's seed to rerun and continue (0 or 1)")
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads while training (the race used 1); the step counts do not depend on it')
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--work', default=os.path.join(ROOT, 'output', 'continue'))
    parser.add_argument('--out', default=None,
                        help='result file (default results/race_continue/<method>-seed<seed>.json)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    race = race_config(args.method, args.seed)
    config = dict(race['config'], data_dir=args.data_dir)
    name = f'{args.method}-seed{args.seed}'
    out = args.out or os.path.join(RESULTS, 'race_continue', f'{name}.json')
    run1_dir = os.path.join(args.work, name)
    run2_dir = os.path.join(args.work, f'{name}-x2')
    result: Dict[str, Any] = _read(out) or {}
    result.update(method=args.method, seed=args.seed, race_run=f'benchmarks/results/race_recipe/{name}.json',
                  epochs_per_run=config['epochs'],
                  command=f'python benchmarks/race_continue.py --method {args.method}'
                          + (f' --seed {args.seed}' if args.seed else '')
                          + (f' --threads {args.threads}' if args.threads != 1 else ''))
    # each invocation's thread count and where it found the runs, so a run resumed at another count says so
    result.setdefault('invocations', []).append(
        dict(threads=args.threads, run1_step=last_step(run1_dir), run2_step=last_step(run2_dir)))
    torch.set_num_threads(args.threads)

    if not finished(run1_dir, config['epochs']):
        train(dict(config, output_dir=run1_dir))
    result['run1'] = run_summary(run1_dir)
    result['rerun_check'] = rerun_check(race, result['run1'])
    _write_row(out, result)

    if not finished(run2_dir, config['epochs']):
        train(dict(config, output_dir=run2_dir, seed=args.seed + 1,
                   init=os.path.join(run1_dir, 'checkpoint-last.pth')))
    result['run2'] = run_summary(run2_dir)
    _write_row(out, result)

    # the probes are subprocesses at torch's default threads, as the shipped weights' probe was
    result['run2']['probe'] = probe(os.path.join(run2_dir, 'checkpoint-last.pth'), os.path.join(run2_dir, 'probe'),
                                    args.data_dir)
    _write_row(out, result)
    result['run1']['probe'] = probe(os.path.join(run1_dir, 'checkpoint-last.pth'), os.path.join(run1_dir, 'probe'),
                                    args.data_dir)
    _write_row(out, result)
    print(json.dumps({k: {m: v[m] for m in ('train_cpu_min', 'final_loss')} for k, v in result.items()
                      if k in ('run1', 'run2')}, indent=1))


if __name__ == '__main__':
    from randsac_timm.train.config import run_cli

    sys.exit(run_cli('race_continue.py', main, (ProbeFailed,)))
