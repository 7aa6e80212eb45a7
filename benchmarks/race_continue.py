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
  3. `eval_linear.py --fast --pixel-baselines` on each run's last checkpoint as soon as that run ends (the shipped
     weights' probe), so run 1's numbers are kept even if the command stops during run 2.
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
from typing import Any, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablation_grid import _read, _stats, _write_row  # noqa: E402

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


# RandSAC's seed-0 ends were measured before this script: the race's run is the shipped `.fmnist` encoder (its
# packaged record holds its full-split probe) and `fmnist_continue.sh` wrote its second run
RANDSAC_SEED0 = dict(run1=os.path.join(ROOT, 'randsac_timm', 'hub', 'weights',
                                       'randsac_vit_micro_patch4_28.fmnist.json'),
                     run2=os.path.join(RESULTS, 'fmnist_continue.json'))
TABLE = os.path.join(RESULTS, 'race_continue', 'table.md')


def _ends(method: str, seed: int, results: str = RESULTS) -> Dict[str, Dict[str, Any]]:
    """{'run1': ..., 'run2': ...} of one race run, each with its full-split `probe`, `steps`, `steps_in_all` (run 2's
    counts run 1's, probed or not: MAE seed 0 was probed run 2 first), `train_cpu_min` and `source`, for the ends
    probed so far (none before)."""
    if method == 'RandSAC' and seed == 0:
        with open(RANDSAC_SEED0['run1']) as f:
            shipped = json.load(f)
        race = race_config(method, seed)
        with open(RANDSAC_SEED0['run2']) as f:
            continued = json.load(f)
        steps2 = continued['last_train_record']['step']
        return dict(run1=dict(probe=shipped['evaluations'][0], steps=race['steps'], steps_in_all=race['steps'],
                              train_cpu_min=race['train_cpu_min'], threads=race['threads'],
                              source=os.path.relpath(RANDSAC_SEED0['run1'], ROOT)),
                    run2=dict(probe=continued['probe'], steps=steps2, steps_in_all=race['steps'] + steps2,
                              train_cpu_min=continued['train_cpu_min'], threads=continued['torch_threads'],
                              source=os.path.relpath(RANDSAC_SEED0['run2'], ROOT)))
    path = os.path.join(results, 'race_continue', f'{method}-seed{seed}.json')
    result = _read(path) or {}
    threads = sorted({i['threads'] for i in result.get('invocations', [])})
    before = dict(run1=0, run2=result.get('run1', {}).get('steps', 0))
    return {run: dict(result[run], steps_in_all=before[run] + result[run]['steps'],
                      threads='/'.join(map(str, threads)), source=os.path.relpath(path, ROOT), note=result.get('note'))
            for run in ('run1', 'run2') if 'probe' in result.get(run, {})}


def write_table(path: str = TABLE, seeds: Tuple[int, ...] = (0, 1), results: str = RESULTS) -> str:
    """The two race budgets of both methods on the full split, one row per measured run, then each budget's mean and
    spread over the seeds measured; returns the markdown it wrote to `path`. `results` holds `race_continue/`."""
    readouts = (('LARS', 'top1'), ('converged', 'lbfgs_top1'), ('kNN', 'knn_top1'))
    lines = ['| method | budget | seed | steps in all | this run\'s train CPU-min | threads | '
             + ' | '.join(n for n, _ in readouts) + ' | best block (converged) | source |',
             '|' + '---|' * (8 + len(readouts))]
    summary, pixels, notes = [], [], {}
    for method in ('RandSAC', 'MAE'):
        ends_by_seed = {seed: _ends(method, seed, results) for seed in seeds}  # each result file read once
        for budget, run in (('1 race budget', 'run1'), ('2 race budgets', 'run2')):
            measured = []
            for seed, ends in ends_by_seed.items():
                end = ends.get(run)
                if end is None:
                    continue
                probe = end['probe']
                measured.append(probe)
                pixels.append(probe)
                if end.get('note'):
                    notes[end['source']] = end['note']
                blocks = probe.get('per_block_top1') or []
                best = max(range(len(blocks)), key=blocks.__getitem__) if blocks else None
                lines.append(f'| {method} | {budget} | {seed} | {end["steps_in_all"]} | {end["train_cpu_min"]:.1f} | '
                             f'{end["threads"]} | ' + ' | '.join(f'{probe[k]:.2f}' for _, k in readouts)
                             + (f' | {best + 1}: {blocks[best]:.2f}' if blocks else ' | -') + f' | `{end["source"]}` |')
            if measured:
                summary.append(f'| {method} | {budget} | {len(measured)} | '
                               + ' | '.join(_stats([p[k] for p in measured]) for _, k in readouts) + ' |')
    pixel_keys = ('pixel_linear_top1', 'pixel_lbfgs_top1', 'pixel_knn_top1')
    text = '\n'.join([
        '# The race\'s two budgets on the full split', '',
        'Generated by `python benchmarks/race_continue.py --table` from the result files named in each row. '
        'Budget: the race\'s step count for that method (what 60 CPU-min bought it at 1 thread in the race), once '
        '(run 1: the race\'s run; RandSAC seed 0 is the race\'s own run, the other run 1s are reruns of its committed '
        'config) or twice (run 2: run 1 continued for as many steps again, a warm restart with data seed + 1). '
        'Train CPU-minutes are as measured on the machine and thread count that ran each (not on the race\'s scale). '
        'Probe: `eval_linear.py --fast --pixel-baselines` on the full Fashion-MNIST split (60k / 10k); LARS = the '
        'fast linear probe, converged = the L-BFGS logistic readout of the last block.', '', *lines, '',
        'Mean ± std over the seeds measured (n); one seed gives no spread:', '',
        '| method | budget | n | ' + ' | '.join(n for n, _ in readouts) + ' |', '|' + '---|' * (3 + len(readouts)),
        *summary, '',
        'Raw pixels in the same probes (lowest-highest over the probes): ' + ', '.join(
            f'{name} {min(p[k] for p in pixels):.2f}-{max(p[k] for p in pixels):.2f}'
            for (name, _), k in zip(readouts, pixel_keys)) + '.' if pixels else 'No run probed yet.', '',
        *(f'Note on `{source}`: {note}.\n' for source, note in notes.items())])
    with open(path, 'w') as f:
        f.write(text)
    return text


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
    parser.add_argument('--method', choices=('MAE', 'RandSAC'))
    parser.add_argument('--table', action='store_true',
                        help=f'only write the table of both methods\' measured runs ({os.path.relpath(TABLE, ROOT)}; '
                             f'RandSAC seed 0 is always the shipped .fmnist run and fmnist_continue.json)')
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
    if args.table:
        print(write_table())
        return
    if args.method is None:
        raise ValueError('race_continue.py needs --method MAE or --method RandSAC (or --table)')
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
    _write_row(out, result)  # now, so an invocation killed before its run ends is still on record
    torch.set_num_threads(args.threads)

    # run 2 continues run 1's last weights with a new data order; each run is probed as soon as it ends, so a
    # session that stops during run 2 keeps run 1's full-split numbers. The probes are subprocesses at torch's
    # default threads, as the shipped weights' probe was
    stages = (('run1', run1_dir, {}),
              ('run2', run2_dir, dict(seed=args.seed + 1, init=os.path.join(run1_dir, 'checkpoint-last.pth'))))
    for run, run_dir, changes in stages:
        if not finished(run_dir, config['epochs']):
            train(dict(config, output_dir=run_dir, **changes))
        result[run] = run_summary(run_dir)
        if run == 'run1':
            result['rerun_check'] = rerun_check(race, result['run1'])
        _write_row(out, result)
        result[run]['probe'] = probe(os.path.join(run_dir, 'checkpoint-last.pth'), os.path.join(run_dir, 'probe'),
                                     args.data_dir)
        _write_row(out, result)
    if args.out is None:  # a result file elsewhere (a test's) is not the table's to read
        print(write_table())


if __name__ == '__main__':
    from randsac_timm.train.config import run_cli

    sys.exit(run_cli('race_continue.py', main, (ProbeFailed,)))
