"""Time-to-accuracy race: RandSAC against MAE on Fashion-MNIST, time counted as the training process's CPU time.

    python benchmarks/race.py                                 # 2 seeds x 2 methods x 60 CPU-min, resumable
    python benchmarks/race.py --budget-cpu-min 5 --train-samples 5000 --seeds 1 --tag race_smoke
    python benchmarks/race.py --recipes recipes.json          # the recipe search's best settings (tag race_recipe)
    python benchmarks/race.py --table-only                    # the table and plot from the runs finished so far

Each method pretrains the micro encoder (`randsac_vit_micro_patch4_32`, or `_patch4_28` for a 28x28 recipe) for the
same CPU budget, with its own recipe (default: the ablation grid's fair settings, shared by both: xavier init,
normalised-pixel target, AdamW betas (0.9, 0.999), blr 1.5e-3, batch 128, the full training split). The budget
becomes each method's epoch count from its measured CPU-s per step (a short calibration run, same thread count,
run by the first worker of that method, so the two methods calibrate side by side as they then train: a rate
measured on an idle machine would undercount the shared cores' slowdown): as many optimizer steps as the budget
buys, fractions of an epoch allowed (`budget_epochs`), so each cosine schedule ends at the budget; every run
reports the CPU time it actually used.

During training the online evaluation (`--eval-every`, with the converged L-BFGS readout) scores the encoder on
fixed seeded subsets (bank: `--eval-train-samples` of the train split, queries: `--eval-test-samples` of the test
split) about `--evals` times. Time is the process's user + system CPU time with the evaluations' own CPU time left
out (`train/curves.py`), so a busy machine does not tilt the race and evaluating costs neither side anything. Runs
go `--parallel` at a time (default 2 processes of `--threads 1` on 2 cores), the two methods of a seed side by side,
so both see the same machine.

Time to a threshold is the training CPU-minutes at the first evaluation at or above it (so it is an upper bound,
within one evaluation interval). Thresholds: `--thresholds` (default 75, 80 and 84.6, raw pixels' LARS probe on the
full split) and the raw pixels' own kNN and L-BFGS scores on the same subsets and the same input size as the run
(`pixels-<img_size>.json`: a recipe with the native 28x28 input is held to the 28x28 pixels, a padded one to 32x32).

Outputs: `benchmarks/results/<tag>/<method>-seed<N>.json` per finished run (resumable run by run; an unfinished run
resumes from its checkpoint), `calibration/<method>.json`, `pixels-<img_size>.json`, then
`benchmarks/results/<tag>.md` (table), `<tag>.json` and `<tag>.png` (accuracy against CPU-minutes, both methods,
every seed). Runs live in `output/race/<tag>/` (not committed).
"""
import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the grid's models and target (one fair setting), and its row-file I/O
from ablation_grid import RECIPES, _read, _write_row, load_recipes, same_settings  # noqa: E402

from randsac_timm.train.checkpoint import atomic_write  # noqa: E402
from randsac_timm.train.config import PretrainConfig, make_config  # noqa: E402
from randsac_timm.train.curves import read_curves  # noqa: E402
from randsac_timm.train.run_log import read_log  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def _values(args, method: str, recipes: Dict[str, Dict[str, Any]], seed: int, out_dir: str) -> Dict[str, Any]:
    values = dict(
        dataset='fashion_mnist', img_size=32, max_train_samples=args.train_samples, epochs=1,
        batch_size=args.batch_size, blr=args.blr, min_lr=1e-5, warmup_epochs=0.0, weight_decay=0.05,
        betas=(0.9, 0.999), workers=0, device='cpu', seed=seed, output_dir=out_dir, save_every=100,
        log_every=10, vis_every=0, progress=False, data_dir=args.data_dir,
        eval_train_samples=args.eval_train_samples, eval_test_samples=args.eval_test_samples,
        eval_seed=0)  # every run, whatever its seed, is scored on the same images as the pixel floor
    values.update(recipes[method])
    return values


def _train(values: Dict[str, Any]):
    from randsac_timm.train.engine import train

    return train(make_config(PretrainConfig, values))


def _calibration_key(method: str) -> str:
    return f'{method}@{torch.get_num_threads()}threads'


def _calibration_settings(args, method: str, recipes) -> Dict[str, Any]:
    """Every trainer value but the run's seed and folder: a changed recipe or flag (input size, decoder, batch,
    --batch-size) has another CPU cost per step, so it is measured again."""
    return json.loads(json.dumps({k: v for k, v in _values(args, method, recipes, 0, '').items()
                                  if k not in ('seed', 'output_dir', 'data_dir')}))


def is_calibrated(args, recipes, method: str, done: Dict[str, Any]) -> bool:
    """Whether `done` (a calibration file's content) holds `method`'s rate for today's settings."""
    stored = done.get(_calibration_key(method), {})
    recipe = json.loads(json.dumps(recipes[method]))  # as the file keeps it (tuples become lists)
    # calibrations written before their settings were kept match on the recipe alone
    return bool(stored) and (stored['settings'] == _calibration_settings(args, method, recipes)
                             if 'settings' in stored else stored.get('recipe') == recipe)


def calibrate(args, recipes, path: str, work: str) -> Dict[str, Any]:
    """Each method's CPU-s per optimizer step (steps 3.. of a short run at this thread count), kept in `path`."""
    done = _read(path) or {}
    for method in recipes:
        if is_calibrated(args, recipes, method, done):
            continue
        key = _calibration_key(method)
        out = os.path.join(work, f'calibrate-{method}')
        shutil.rmtree(out, ignore_errors=True)  # its log must hold this calibration's steps only
        # epochs: enough that the step cap, not the end of a small subset's epoch, ends the calibration
        values = dict(_values(args, method, recipes, 0, out), epochs=args.calibration_steps,
                      max_steps=args.calibration_steps, log_every=1, auto_resume=False, save_every=0)
        result = _train(values)
        train = [r for r in read_log(result.log) if r['event'] == 'train']
        first, last = train[2], train[-1]  # the first steps warm up allocators and caches
        done[key] = dict(
            cpu_s_per_step=(last['cpu_time_s'] - first['cpu_time_s']) / (last['step'] - first['step']),
            steps=last['step'] - first['step'], threads=torch.get_num_threads(),
            recipe=json.loads(json.dumps(recipes[method])), settings=_calibration_settings(args, method, recipes))
        print(f'calibration {method}: {done[key]["cpu_s_per_step"]:.2f} CPU-s per step', flush=True)
        _write_row(path, done)  # atomic_write makes its folder
    return done


def pixel_floor(args, rows_dir: str, values: Dict[str, Any]) -> Dict[str, float]:
    """Raw pixels' kNN and L-BFGS top-1 on the online evaluation's subsets, as a run with these `values` sees them
    (the same images, and the same transform: padded 32x32 and native 28x28 inputs each get their own floor)."""
    path = os.path.join(rows_dir, f'pixels-{values["img_size"]}.json')
    done = _read(path)
    if done:
        return done
    from randsac_timm.eval.converged_probe import readout_top1
    from randsac_timm.eval.linear_probe import knn_scores, topk_accuracy
    from randsac_timm.train.online_eval import KNN_K, KNN_T, OnlineEvaluator

    evaluator = OnlineEvaluator(make_config(PretrainConfig, values), torch.device('cpu'))
    (bank, bank_labels), (queries, query_labels) = [
        [torch.cat(t) for t in zip(*[(x.flatten(1), y) for x, y in split.batches()])]
        for split in (evaluator.bank, evaluator.queries)]
    knn = topk_accuracy(knn_scores(bank, bank_labels, queries, evaluator.num_classes, KNN_K, KNN_T), query_labels)[1]
    lbfgs = readout_top1(bank, bank_labels, queries, query_labels, evaluator.num_classes)[0]
    record = dict(knn_top1=knn, lbfgs_top1=lbfgs, bank=len(bank), queries=len(queries), seed=0,
                  img_size=values['img_size'])
    _write_row(path, record)
    return record


def pixel_floors(args, recipes: Dict[str, Dict[str, Any]], rows_dir: str) -> Dict[int, Dict[str, float]]:
    """The pixel floor of every input size the methods' recipes use, keyed by image size."""
    floors = {}
    for method in recipes:
        values = _values(args, method, recipes, 0, 'unused')
        floors.setdefault(values['img_size'], pixel_floor(args, rows_dir, values))
    return floors


def read_floors(rows_dir: str) -> Dict[int, Dict[str, Any]]:
    """The `pixels-<img_size>.json` floors measured so far in `rows_dir`, keyed by image size."""
    floors = {}
    for name in sorted(os.listdir(rows_dir)) if os.path.isdir(rows_dir) else []:
        if name.startswith('pixels-'):
            floor = _read(os.path.join(rows_dir, name))
            floors[floor['img_size']] = floor
    return floors


def budget_epochs(budget_cpu_min: float, cpu_s_per_step: float, steps_per_epoch: int) -> float:
    """The epochs (a fraction allowed) whose optimizer steps spend `budget_cpu_min` training CPU-minutes at the
    calibrated rate. Not rounded to whole epochs: at a budget of one or two epochs that rounding would give one
    recipe up to half an epoch more than another."""
    return max(1, round(budget_cpu_min * 60 / cpu_s_per_step)) / steps_per_epoch


def calibrated_rate(calibration: Dict[str, Any], method: str) -> float:
    """`method`'s calibrated CPU-s per optimizer step at this process's thread count."""
    return calibration[_calibration_key(method)]['cpu_s_per_step']


def budget_values(args, recipes, method: str, seed: int, out_dir: str, rate: float) -> Dict[str, Any]:
    """The trainer values of one run sized to `--budget-cpu-min`: its recipe, the epochs `rate` (CPU-s per step)
    buys, and a warmup of a tenth of them unless the recipe sets one. The race and the recipe search both size
    their runs here."""
    values = _values(args, method, recipes, seed, out_dir)
    steps_per_epoch = max(1, values['max_train_samples'] // values['batch_size'])
    epochs = budget_epochs(args.budget_cpu_min, rate, steps_per_epoch)
    values.update(epochs=epochs, warmup_epochs=values.get('warmup_epochs') or epochs / 10)
    return values


def run_values(args, recipes, method: str, seed: int, work: str, calibration) -> Dict[str, Any]:
    """The trainer values of one race run: sized to the budget, with `--evals` online evaluations."""
    values = budget_values(args, recipes, method, seed, os.path.join(work, f'{method}-seed{seed}'),
                           calibrated_rate(calibration, method))
    values.update(eval_every=values['epochs'] / args.evals, eval_lbfgs=True)
    return values


def finished(args, recipes, method: str, seed: int, rows_dir: str, work: str) -> bool:
    """Whether this run's row file exists and ran with today's settings (at the rate kept when it ran)."""
    path = run_path(rows_dir, method, seed)
    if not os.path.exists(path):
        return False
    calibration = _read(calibration_path(rows_dir, method))
    if not calibration:
        raise SystemExit(f'{path} has no calibration beside it ({calibration_path(rows_dir, method)}): delete it and '
                         f'its run folder to run it again')
    return check_reusable(path, run_values(args, recipes, method, seed, work, calibration))


def check_reusable(path: str, values: Dict[str, Any]) -> bool:
    """Whether the finished run at `path` exists; refuses (one line) one that ran with other settings."""
    done = _read(path)
    changed = same_settings(done.get('config', {}), values, ignore=('data_dir',)) if done else []
    if changed:
        raise SystemExit(f'{path} ran with other settings (different {", ".join(changed)}): give another --tag, or '
                         f'delete it and its run folder to run it again')
    return done is not None


def calibration_path(rows_dir: str, key: str) -> str:
    """One file per method (per trial in the search): the two methods' first workers calibrate at the same time,
    each writing its own."""
    return os.path.join(rows_dir, 'calibration', f'{key}.json')


def run_path(rows_dir: str, method: str, seed: int) -> str:
    return os.path.join(rows_dir, f'{method}-seed{seed}.json')


def run_one(args, recipes, method: str, seed: int, rows_dir: str, work: str) -> Dict[str, Any]:
    """Calibrate `method` unless done, then pretrain it for the CPU budget with online evaluation; its curve and
    times as the run's row file."""
    calibration = calibrate(args, {method: recipes[method]}, calibration_path(rows_dir, method), work)
    values = run_values(args, recipes, method, seed, work, calibration)
    out, epochs = values['output_dir'], values['epochs']
    result = _train(values)
    curves = read_curves(result.log)
    if any(t is None for t in curves.eval_cpu_s):
        raise SystemExit(f'{result.log} has evaluations without CPU times: delete {out} and run the race again')
    record = dict(method=method, seed=seed, recipe=recipes[method], epochs=epochs, steps=result.step,
                  calibrated_cpu_s_per_step=calibrated_rate(calibration, method), threads=torch.get_num_threads(),
                  train_cpu_min=curves.train_cpu_s[-1] / 60, train_wall_min=curves.train_wall_s[-1] / 60,
                  eval_cpu_min=[t / 60 for t in curves.eval_cpu_s], eval_images=curves.eval_images,
                  knn_top1=curves.knn_top1, lbfgs_top1=curves.lbfgs_top1, final_loss=result.last_loss,
                  log=result.log, config=values)
    _write_row(run_path(rows_dir, method, seed), record)
    return record


def time_to(cpu_min: Sequence[float], accuracy: Sequence[Optional[float]], threshold: float) -> Optional[float]:
    """CPU-minutes at the first evaluation at or above `threshold`; None if never reached."""
    for t, a in zip(cpu_min, accuracy):
        if a is not None and a >= threshold:
            return t
    return None


def _stats(values: List[Optional[float]], digits: int = 1) -> str:
    if not values:
        return '-'
    reached = [v for v in values if v is not None]
    if not reached:
        return 'never'
    if len(reached) < len(values):  # some seeds never got there
        shown = ', '.join('never' if v is None else f'{v:.{digits}f}' for v in values)
        return f'{shown} (not all seeds)'
    if len(reached) == 1:
        return f'{reached[0]:.{digits}f}'
    return f'{statistics.mean(reached):.{digits}f} ± {statistics.stdev(reached):.{digits}f}'


def write_table(args, rows_dir: str, tag: str, argv: List[str]) -> None:
    names = [n for n in sorted(os.listdir(rows_dir)) if n.endswith('.json')]  # not the calibration/ folder
    runs = [r for r in (_read(os.path.join(rows_dir, n)) for n in names) if r and 'method' in r]
    if not runs:
        print('no finished runs yet')
        return
    floors = read_floors(rows_dir)  # image size -> raw pixels on the same subsets, same input
    thresholds = [('kNN', 'knn_top1', t) for t in args.thresholds] + [('linear', 'lbfgs_top1', t)
                                                                     for t in args.thresholds]
    methods = [m for m in RECIPES if any(r['method'] == m for r in runs)]
    header = ['method', 'input', 'seeds', 'CPU-min used', 'epochs'] + [
        f'{kind} ≥ {t:.1f}' for kind, _, t in thresholds] + ['kNN ≥ pixels', 'linear ≥ pixels', 'final kNN',
                                                             'final linear', 'images / CPU-s']
    floor_text = '; '.join(f'{size}x{size} input: kNN {f["knn_top1"]:.1f}, linear {f["lbfgs_top1"]:.1f}'
                           for size, f in sorted(floors.items())) or 'not measured'
    models = ', '.join(f'`{m}`' for m in sorted({r['config']['model'] for r in runs}))  # what really ran
    lines = [f'Fashion-MNIST, {models}, budget {args.budget_cpu_min} CPU-min per run '
             f'({runs[0]["threads"]} thread(s) per process), fp32. Cells: training CPU-minutes to the first '
             f'evaluation at or above the accuracy (mean ± std over seeds; "never" = not within the budget). kNN '
             f'(k=20, T=0.07) and linear (converged L-BFGS readout) on fixed subsets: bank '
             f'{args.eval_train_samples} train images, queries {args.eval_test_samples} test images. "≥ pixels" = '
             f'raw pixels on the same subsets and the same input as that run ({floor_text}). Command: '
             f'`python benchmarks/race.py {" ".join(shlex.quote(a) for a in argv)}`.', '',
             '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    summary = []
    for method in methods:
        rs = [r for r in runs if r['method'] == method]
        size = rs[0]['config']['img_size']
        floor = floors.get(size, {})
        cells = [method, f'{size}x{size}', ', '.join(str(r['seed']) for r in rs),
                 _stats([r['train_cpu_min'] for r in rs]),
                 ', '.join(f"{r['epochs']:.2f}" for r in rs)]
        reached = {}
        for kind, key, t in thresholds:
            times = [time_to(r['eval_cpu_min'], r[key], t) for r in rs]
            reached[f'{kind}>={t:.1f}'] = times
            cells.append(_stats(times))
        for kind, key in (('kNN', 'knn_top1'), ('linear', 'lbfgs_top1')):
            times = [time_to(r['eval_cpu_min'], r[key], floor[key]) for r in rs] if key in floor else []
            reached[f'{kind}>=pixels'] = times
            cells.append(_stats(times))
        images_per_cpu_s = [r['steps'] * r['config']['batch_size'] / (r['train_cpu_min'] * 60) for r in rs]
        cells += [_stats([r['knn_top1'][-1] for r in rs]), _stats([r['lbfgs_top1'][-1] for r in rs]),
                  _stats(images_per_cpu_s)]
        lines.append('| ' + ' | '.join(cells) + ' |')
        summary.append(dict(method=method, img_size=size, seeds=[r['seed'] for r in rs], cpu_min_to=reached,
                            final_knn=[r['knn_top1'][-1] for r in rs], final_lbfgs=[r['lbfgs_top1'][-1] for r in rs],
                            images_per_cpu_s=images_per_cpu_s))
    with open(os.path.join(RESULTS, f'{tag}.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(RESULTS, f'{tag}.json'), 'w') as f:
        json.dump(dict(tag=tag, args={k: v for k, v in vars(args).items()}, pixels=floors, methods=summary), f,
                  indent=2)
    _plot(runs, floors, os.path.join(RESULTS, f'{tag}.png'))
    print('\n'.join(lines))


def _plot(runs: List[Dict[str, Any]], floors: Dict[int, Dict[str, float]], png: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), layout='constrained')
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = {m: f'C{i}' for i, m in enumerate(RECIPES)}
    for ax, key, name in ((axes[0], 'knn_top1', 'kNN top-1'), (axes[1], 'lbfgs_top1', 'linear (L-BFGS) top-1')):
        for r in runs:
            ax.plot(r['eval_cpu_min'], r[key], 'o-' if r['seed'] == 0 else 's--', color=colors[r['method']],
                    label=f'{r["method"]} seed {r["seed"]}')
        for i, (size, floor) in enumerate(sorted(floors.items())):
            ax.axhline(floor[key], color='gray', linestyle=(':', '-.')[i % 2],
                       label=f'raw pixels, same subsets, {size}x{size}')
        ax.set_xlabel('training CPU-minutes (evaluation left out)')
        ax.set_ylabel(f'{name} on the test subset (%)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.suptitle('RandSAC vs MAE: accuracy against CPU time (Fashion-MNIST, micro encoder)')
    atomic_write(png, lambda tmp: fig.savefig(tmp, format='png', dpi=100))


def add_runner_args(parser: argparse.ArgumentParser, tag: str, unit: str) -> None:
    """The options of a calibrated, parallel, resumable CPU runner (this race, the recipe search)."""
    parser.add_argument('--calibration-steps', type=int, default=12)
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads per run')
    parser.add_argument('--parallel', type=int, default=2, help='runs at once')
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--tag', default=tag, help=f'results name (default: {tag})')
    parser.add_argument('--table-only', action='store_true')
    parser.add_argument('--worker', nargs=2, metavar=('METHOD', unit), help=argparse.SUPPRESS)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--budget-cpu-min', type=float, default=60.0, help='training CPU-minutes per run')
    parser.add_argument('--seeds', type=int, default=2)
    parser.add_argument('--methods', nargs='+', default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument('--recipes', default=None,
                        help='JSON file {method: {PretrainConfig field: value}}, each over the method\'s default')
    parser.add_argument('--train-samples', type=int, default=60000, help='pretraining images (a seeded subset)')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--blr', type=float, default=1.5e-3)
    parser.add_argument('--evals', type=int, default=8, help='online evaluations per run, besides step 0')
    parser.add_argument('--eval-train-samples', type=int, default=5000)
    parser.add_argument('--eval-test-samples', type=int, default=2000)
    parser.add_argument('--thresholds', type=float, nargs='+', default=[75.0, 80.0, 84.6])
    add_runner_args(parser, 'race', 'SEED')
    args = parser.parse_args(argv)
    if args.recipes and args.tag == 'race':  # a recipe race never reuses (or overwrites) the default race's runs
        args.tag = 'race_recipe'
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != '--table-only']
    for name in ('budget_cpu_min', 'evals', 'threads', 'parallel', 'seeds', 'calibration_steps'):
        if not getattr(args, name) > 0 or (name == 'calibration_steps' and args.calibration_steps < 4):
            raise SystemExit(f'--{name.replace("_", "-")} {getattr(args, name)}: give a positive number '
                             f'(calibration needs 4 steps or more)')
    recipes = load_recipes(args.recipes) if args.recipes else dict(RECIPES)  # each entry over the method's default
    recipes = {m: recipes[m] for m in args.methods}
    torch.set_num_threads(args.threads)
    rows_dir, work = os.path.join(RESULTS, args.tag), os.path.join('output', 'race', args.tag)
    os.makedirs(rows_dir, exist_ok=True)
    if args.worker:
        method, seed = args.worker[0], int(args.worker[1])
        run_one(args, recipes, method, seed, rows_dir, work)
        return
    if not args.table_only:
        pixel_floors(args, recipes, rows_dir)
        todo = [(m, s) for s in range(args.seeds) for m in recipes  # a seed's methods side by side
                if not finished(args, recipes, m, s, rows_dir, work)]
        running: List[subprocess.Popen] = []
        failed: List[str] = []
        first_run: Dict[str, subprocess.Popen] = {}  # each method's first run, the one that calibrates it
        for method, seed in todo:
            # a method's later runs wait for its first run's calibration (or its end), so that two runs of one
            # method never calibrate at once and get two rates (more --parallel than methods)
            while len(running) >= args.parallel or (
                    method in first_run and first_run[method].poll() is None
                    and not is_calibrated(args, recipes, method, _read(calibration_path(rows_dir, method)) or {})):
                running = _wait(running, failed)
            print(f'=== {method} seed {seed}', flush=True)
            running.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv,
                                             '--worker', method, str(seed)]))
            first_run.setdefault(method, running[-1])
        while running:
            running = _wait(running, failed)
        if failed:
            raise SystemExit(f'{len(failed)} run(s) failed: {failed}; rerun the same command to resume them')
    write_table(args, rows_dir, args.tag, argv)


def _wait(running: List[subprocess.Popen], failed: List[str], poll_s: float = 2.0) -> List[subprocess.Popen]:
    """Wait `poll_s`; the runs still running (each one that ended with an error goes to `failed`)."""
    import time

    time.sleep(poll_s)
    still = []
    for p in running:
        code = p.poll()  # once per run: a run that ends between two polls is neither lost nor counted twice
        if code is None:
            still.append(p)
        elif code != 0:
            failed.append(' '.join(p.args[-2:]))
    return still


if __name__ == '__main__':
    from randsac_timm.train.config import run_cli

    sys.exit(run_cli('race.py', main))  # a missing data set or bad value: one line, exit 2
