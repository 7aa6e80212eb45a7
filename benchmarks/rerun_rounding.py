"""Why a rerun of a race run is close to it but not bit-identical: where the two first part, and whether the online
L-BFGS readout of the same weights moves with the floating-point kernels it runs on.

    python benchmarks/rerun_rounding.py          # ~3 min: reads the committed records, then two step-0 evaluations

`race_continue.py` reran three of the race's runs in later sessions, on other machines, from the race's own configs
(same code, torch, seed and data order). This script compares each rerun with the race's run from the committed
records (`benchmarks/results/race_recipe/<run>.json` against `race_continue/<run>.json` "run1"):
  - the final training loss of both, and its relative difference;
  - the online evaluations (kNN and converged L-BFGS readout on the race's fixed subsets): the first one whose kNN
    differs, and whether the step-0 ones (the same seeded initial weights in both) agree.
Then it rebuilds the initial weights of the race's MAE seed-1 run and evaluates them as the run did, at 1 and at 2
torch threads on this machine: the same weights, the same subsets, only the matmul kernels' summation order differs.

Output: `benchmarks/results/rerun_rounding.json` and the table it prints.
"""
import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablation_grid import _write_row  # noqa: E402
from race_continue import RESULTS, race_config  # noqa: E402

from randsac_timm.train.run_log import machine_record  # noqa: E402

RERUNS = ('RandSAC-seed1', 'MAE-seed0', 'MAE-seed1')


def compare(name: str, results: str = RESULTS) -> Dict[str, Any]:
    """The race's run `name` against its rerun, from their committed records."""
    with open(os.path.join(results, 'race_recipe', f'{name}.json')) as f:
        race = json.load(f)
    with open(os.path.join(results, 'race_continue', f'{name}.json')) as f:
        rerun = json.load(f)['run1']
    evals = rerun['online_evals']
    pairs = list(zip(race['knn_top1'], race['lbfgs_top1'], evals))
    first_knn_diff: Optional[int] = next((e['step'] for knn, _, e in pairs if abs(knn - e['knn_top1']) > 1e-6), None)
    return dict(run=name, steps=rerun['steps'], race_final_loss=race['final_loss'],
                rerun_final_loss=rerun['final_loss'],
                final_loss_rel_diff=abs(rerun['final_loss'] - race['final_loss']) / race['final_loss'],
                step0_knn=(pairs[0][0], pairs[0][2]['knn_top1']), step0_lbfgs=(pairs[0][1], pairs[0][2]['lbfgs_top1']),
                first_knn_diff_step=first_knn_diff, eval_steps=[e['step'] for e in evals])


def step0_readouts(threads: List[int]) -> List[Dict[str, Any]]:
    """The online evaluation of the race's MAE seed-1 initial weights at each thread count."""
    from randsac_timm.train.config import PretrainConfig, make_config
    from randsac_timm.train.engine import build_pretrain_model
    from randsac_timm.train.online_eval import OnlineEvaluator

    cfg = make_config(PretrainConfig, dict(race_config('MAE', 1)['config'], output_dir=None))
    torch.manual_seed(cfg.seed)  # as the engine seeds before building the model
    encoder = build_pretrain_model(cfg).encoder
    evaluator = OnlineEvaluator(cfg, torch.device('cpu'))
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        scores = evaluator.evaluate(encoder)
        rows.append(dict(threads=n, knn_top1=scores['knn_top1'], lbfgs_top1=scores['lbfgs_top1']))
        print(f'MAE-seed1 step-0 weights at {n} thread(s): kNN {scores["knn_top1"]:.2f}, '
              f'L-BFGS {scores["lbfgs_top1"]:.2f}', flush=True)
    return rows


def table(result: Dict[str, Any]) -> str:
    lines = ['| rerun | steps | final loss race / rerun (rel. diff) | step-0 kNN race / rerun | '
             'step-0 L-BFGS race / rerun | first online eval whose kNN differs |', '|---|---|---|---|---|---|']
    for r in result['reruns']:
        first = 'none' if r['first_knn_diff_step'] is None else f'step {r["first_knn_diff_step"]}'
        lines.append(f'| {r["run"]} | {r["steps"]} | {r["race_final_loss"]:.8f} / {r["rerun_final_loss"]:.8f} '
                     f'({r["final_loss_rel_diff"]:.1e}) | {r["step0_knn"][0]:.2f} / {r["step0_knn"][1]:.2f} | '
                     f'{r["step0_lbfgs"][0]:.2f} / {r["step0_lbfgs"][1]:.2f} | {first} |')
    lines += ['', 'The same step-0 weights (MAE seed 1) evaluated on this machine: ' + ', '.join(
        f'{r["threads"]} thread(s) kNN {r["knn_top1"]:.2f} / L-BFGS {r["lbfgs_top1"]:.2f}'
        for r in result['step0_on_this_machine']) + '.']
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2, 1],
                        help='thread counts to evaluate the step-0 weights at (the last repeats the first: '
                             'is one count deterministic?)')
    parser.add_argument('--out', default=os.path.join(RESULTS, 'rerun_rounding.json'))
    args = parser.parse_args(argv)
    result = dict(command='python benchmarks/rerun_rounding.py', machine=machine_record(torch.device('cpu')),
                  reruns=[compare(name) for name in RERUNS],
                  step0_on_this_machine=step0_readouts(args.threads))
    _write_row(args.out, result)
    print(table(result))


if __name__ == '__main__':
    from randsac_timm.train.config import run_cli

    sys.exit(run_cli('rerun_rounding.py', main, ()))
