"""Recipe search for the Fashion-MNIST micro encoder, RandSAC and MAE with the same number of trials.

    python benchmarks/recipe_search.py                      # 2 x 15 trials x 15 CPU-min + probes: resumable
    python benchmarks/recipe_search.py --methods MAE --trials base 'input 28x28'
    python benchmarks/recipe_search.py --budget-cpu-min 1 --train-samples 2000 --probe-train-samples 2000 \\
        --probe-epochs 5 --tag recipe_smoke                  # a few minutes: checks the machinery, proves nothing
    python benchmarks/recipe_search.py --table-only

A one-round coordinate search, honestly bounded. Every trial changes ONE knob of the base recipe (the ablation
grid's fair setting: `randsac_vit_micro_patch4_32`, xavier init, normalised-pixel target, AdamW betas (0.9, 0.999),
blr 1.5e-3, batch 128, padded 32x32 input, crop scale 0.2-1), pretrains for `--budget-cpu-min` training
CPU-minutes (steps from each trial's own calibrated CPU-s per step, as in `race.py`, so a cheaper recipe gets more
epochs; fractions of an epoch allowed, since whole epochs would give a 1.4-epoch budget 1 epoch and a 1.8-epoch
one 2) on a seeded `--train-samples` subset, then probes the encoder on the full official split: the paper's LARS
probe (fast mode), the converged L-BFGS readout of the last block (the score that ranks trials) and of every
block, and the weighted kNN. When a method's single-knob trials are done, one more trial combines, for every knob
whose best value beat the base, that value (`combine`); its best trial is its recipe.

Fairness: the knobs that apply to both objectives (input, crop, target, lr, batch, decoder width and depth) get
the same values for both; RandSAC's own knobs (segments, skip memory) are matched by as many trials on MAE's own
knob (mask ratio), so both get the same number of trials (`check_equal_trials`), one seed each, the same budget.
Raw pixels (and the random-init encoder) are probed on the same split for each input size, as the floor.

Outputs: one JSON per finished trial in `benchmarks/results/<tag>/` (a killed search resumes trial by trial; an
unfinished pretraining resumes from its checkpoint), `<tag>.md` (table), `<tag>.json` (every trial) and
`<tag>-best.json` ({method: recipe}, ready for `python benchmarks/race.py --recipes`). Runs live in
`output/recipe_search/<tag>/` (not committed). Trials go `--parallel` at a time (default 2 processes of
`--threads 1` on 2 cores).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch

from randsac_timm.train.run_log import read_log

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the grid's row-file I/O and its probe (LARS fast, converged, per block, kNN), the race's budget machinery
from ablation_grid import (  # noqa: E402
    PROBE_KEYS, _fmt, _initial_encoder, _probe, _read, _slug, _write_row, run_time, same_settings)
from race import (  # noqa: E402
    RECIPES, _train, _wait, add_runner_args, budget_values, calibrate, calibrated_rate, calibration_path, read_floors)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')

# (trial name, knob, overrides of the base recipe); knob None = the base itself
SHARED_TRIALS: List[Tuple[str, Optional[str], Dict[str, Any]]] = [
    ('base', None, {}),
    ('input 28x28', 'input', dict(img_size=28)),
    ('crop 0.5-1', 'crop', dict(crop_scale=[0.5, 1.0])),
    ('raw-pixel target', 'target', dict(norm_pix_loss=False)),
    ('blr 0.75e-3', 'lr', dict(blr=0.75e-3)),
    ('blr 3e-3', 'lr', dict(blr=3e-3)),
    ('batch 64', 'batch', dict(batch_size=64)),
    ('batch 256', 'batch', dict(batch_size=256)),
    ('decoder width 64', 'decoder width', dict(decoder_embed_dim=64)),
    ('decoder depth 4', 'decoder depth', dict(decoder_depth=4)),
]
OWN_TRIALS: Dict[str, List[Tuple[str, Optional[str], Dict[str, Any]]]] = {
    'RandSAC': [
        ('segments blob:7-3', 'segments', dict(segments='blob:7-3')),
        ('segments blob:16-4', 'segments', dict(segments='blob:16-4')),
        ('skip memory paper', 'skip memory', dict(skip_memory='paper')),
        ('skip memory paper_last', 'skip memory', dict(skip_memory='paper_last')),
    ],
    'MAE': [
        ('mask 0.5', 'mask ratio', dict(mask_ratio=0.5)),
        ('mask 0.6', 'mask ratio', dict(mask_ratio=0.6)),
        ('mask 0.85', 'mask ratio', dict(mask_ratio=0.85)),
        ('mask 0.9', 'mask ratio', dict(mask_ratio=0.9)),
    ],
}
COMBINED = 'combined'
EXPLICIT = ('img_size', 'batch_size', 'blr')  # written into the best recipes even where a trial left them as they were
SCORE = 'lbfgs_top1'  # ranks trials: the converged readout of the last block, the one a user fine-tunes from


def trials(method: str) -> List[Dict[str, Any]]:
    """The single-knob trials of `method`: {name, knob, overrides, recipe}."""
    return [dict(name=name, knob=knob, overrides=overrides, recipe=dict(RECIPES[method], **overrides))
            for name, knob, overrides in SHARED_TRIALS + OWN_TRIALS[method]]


def check_equal_trials() -> None:
    counts = {method: len(trials(method)) for method in RECIPES}
    if len(set(counts.values())) != 1:
        raise AssertionError(f'unequal trial counts {counts}: a search must give each method as many trials')


def combine(method: str, done: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The base recipe plus, for every knob whose best trial beat the base on `SCORE`, that trial's values; None
    while a single-knob trial of `method` is unfinished or when no knob beat the base."""
    singles = trials(method)
    if any(t['name'] not in done for t in singles):
        return None
    base = done['base'][SCORE]
    best: Dict[str, Dict[str, Any]] = {}
    for t in singles:
        if t['knob'] is None or done[t['name']][SCORE] <= base:
            continue
        if t['knob'] not in best or done[t['name']][SCORE] > done[best[t['knob']]['name']][SCORE]:
            best[t['knob']] = t
    if not best:
        return None
    overrides: Dict[str, Any] = {}
    for t in best.values():
        overrides.update(t['overrides'])
    return dict(name=COMBINED, knob='+'.join(sorted(best)), overrides=overrides,
                recipe=dict(RECIPES[method], **overrides))


def _trial_path(rows_dir: str, method: str, name: str) -> str:
    return os.path.join(rows_dir, f'{method.lower()}-{_slug(name)}.json')


def _done(rows_dir: str, method: str, budget_cpu_min: Optional[float] = None) -> Dict[str, Dict[str, Any]]:
    """The finished trials of `method`, by name; refuses (one line) a trial file written with another recipe or
    budget than its name has now (a changed trial list or `--budget-cpu-min` under the same `--tag`)."""
    found = {}
    for t in trials(method) + [dict(name=COMBINED)]:
        path = _trial_path(rows_dir, method, t['name'])
        record = _read(path)
        if not record:
            continue
        changed = same_settings(dict(recipe=record['recipe']), dict(recipe=t['recipe'])) if 'recipe' in t else []
        if budget_cpu_min is not None and record.get('budget_cpu_min', budget_cpu_min) != budget_cpu_min:
            changed.append('budget_cpu_min')
        if changed:
            raise SystemExit(f'{path} was run with another {" and ".join(changed)} than trial {t["name"]!r} has now: '
                             f'give another --tag, or delete the file to run the trial again')
        found[t['name']] = record
    return found


def complete(method: str, done: Dict[str, Dict[str, Any]]) -> bool:
    """Whether `method`'s search is over: every single-knob trial done, and the combined one if any knob won."""
    singles_done = all(t['name'] in done for t in trials(method))
    return singles_done and (COMBINED in done or combine(method, done) is None)


def run_trial(args, method: str, trial: Dict[str, Any], rows_dir: str, work: str) -> Dict[str, Any]:
    """Pretrain one trial for the CPU budget, probe it on the full split; its row file."""
    key = f'{method}-{_slug(trial["name"])}'
    recipes = {key: trial['recipe']}
    rate = calibrated_rate(calibrate(args, recipes, calibration_path(rows_dir, key), work), key)
    out = os.path.join(work, key)
    values = budget_values(args, recipes, key, args.seed, out, rate)
    epochs = values['epochs']
    result = _train(values)
    wall, cpu, time_complete = run_time(read_log(result.log))
    probe = _probe(result.checkpoint, args.seed, args, os.path.join(out, 'probe'), pixels=False)
    record = dict(method=method, trial=trial['name'], knob=trial['knob'], overrides=trial['overrides'],
                  recipe=trial['recipe'], seed=args.seed, budget_cpu_min=args.budget_cpu_min, epochs=epochs,
                  steps=result.step, calibrated_cpu_s_per_step=rate, threads=torch.get_num_threads(),
                  pretrain_cpu_min=cpu / 60 if time_complete else None, pretrain_wall_min=wall / 60,
                  final_loss=result.last_loss, **{k: probe.get(k) for k in PROBE_KEYS if 'pixel' not in k},
                  probe_wall_s=probe.get('wall_time_s'), config=values)
    _write_row(_trial_path(rows_dir, method, trial['name']), record)
    print(f'{method} {trial["name"]}: LARS {record["top1"]:.2f} converged {record["lbfgs_top1"]:.2f} '
          f'kNN {record["knn_top1"]:.2f} ({epochs} epochs)', flush=True)
    return record


def pixel_floors(args, rows_dir: str, work: str) -> Dict[int, Dict[str, Any]]:
    """Raw pixels and the random-init encoder on the full split, for each input size the trials use."""
    sizes = sorted({t['recipe'].get('img_size', 32) for m in RECIPES for t in trials(m)})
    floors = {}
    for size in sizes:
        path = os.path.join(rows_dir, f'pixels-{size}.json')
        if not os.path.exists(path):
            out = os.path.join(work, f'pixels-{size}')
            checkpoint = _initial_encoder(args.seed, out, img_size=size)
            probe = _probe(checkpoint, args.seed, args, os.path.join(out, 'probe'), pixels=True)
            _write_row(path, dict(img_size=size, seed=args.seed, random_init={k: probe.get(k) for k in PROBE_KEYS
                                                                            if 'pixel' not in k},
                                  **{k: probe.get(k) for k in PROBE_KEYS if 'pixel' in k}))
        floors[size] = _read(path)
    return floors


def native_size_model(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """`recipe` with its wrapper renamed to the registered one whose own input size is the recipe's `img_size`
    (`..._patch4_32` at 28 -> `..._patch4_28`), where such a wrapper exists: the same network, parameters and init
    (the sin-cos positions are a buffer), so the run is the one the search measured, and the weights it makes are
    published under the name of the size they take."""
    import timm

    size, model = recipe.get('img_size'), recipe.get('model')
    stem, _, own = (model or '').rpartition('_')
    renamed = f'{stem}_{size}'
    if size is None or not own.isdigit() or int(own) == size or not timm.is_model(renamed):
        return recipe
    return dict(recipe, model=renamed)


def write_table(args, rows_dir: str, argv: List[str]) -> None:
    floors = read_floors(rows_dir)
    header = ['method', 'trial', 'knob', 'epochs', 'pretrain CPU-min', 'LARS top-1', 'converged top-1',
              'Δ converged vs base', 'kNN top-1', 'per-block converged']
    lines = [f'Recipe search, Fashion-MNIST, `randsac_vit_micro_patch4_32`, {args.budget_cpu_min} training '
             f'CPU-min per trial (steps from the calibrated CPU-s per step), {args.train_samples} '
             f'pretraining images, seed {args.seed}, {args.threads} thread(s) per trial. Probes on the full official '
             f'split: '
             f'LARS (fast), converged L-BFGS of the last block (ranks the trials), per block, kNN (k=20, T=0.07). '
             f'Command: `python benchmarks/recipe_search.py {" ".join(shlex.quote(a) for a in argv)}`.', '']
    for size, f in sorted(floors.items()):
        r = f['random_init']
        lines.append(f'- floor, {size}x{size} input: raw pixels LARS {_fmt(f["pixel_linear_top1"])}, converged '
                     f'{_fmt(f["pixel_lbfgs_top1"])}, PCA to width {_fmt(f["pixel_pca_linear_top1"])}, kNN '
                     f'{_fmt(f["pixel_knn_top1"])}; random-init encoder LARS {_fmt(r["top1"])}, converged '
                     f'{_fmt(r["lbfgs_top1"])}')
    lines += ['', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    everything: Dict[str, Any] = dict(tag=args.tag, floors=floors, trials=[], best={})
    best_recipes = {}
    for method in RECIPES:
        done = _done(rows_dir, method, args.budget_cpu_min)
        base = done.get('base', {}).get(SCORE)
        for name, r in done.items():
            delta = None if base is None else r[SCORE] - base
            blocks = ' '.join(f'{v:.1f}' for v in r['per_block_top1'] or [])
            cpu = r['pretrain_cpu_min']
            lines.append(f'| {method} | {name} | {r["knob"] or "-"} | {r["epochs"]:.2f} | '
                         f'{"-" if cpu is None else f"{cpu:.1f}"} | {_fmt(r["top1"])} | {_fmt(r[SCORE])} | '
                         f'{"-" if delta is None else f"{delta:+.2f}"} | {_fmt(r["knn_top1"])} | {blocks} |')
            everything['trials'].append(r)
        if done:
            winner = max(done.values(), key=lambda r: r[SCORE])
            # the search's own settings of the knobs the recipe did not change (its --batch-size, --blr, input
            # size), so the race and the grid train with what the search measured, whatever their own defaults
            best_recipes[method] = native_size_model(dict(
                {k: winner['config'][k] for k in EXPLICIT if k in winner['config']}, **winner['recipe']))
            everything['best'][method] = dict(trial=winner['trial'], score=winner[SCORE],
                                              recipe=best_recipes[method], complete=complete(method, done))
    lines += ['', 'Best per method (converged top-1): ' + '; '.join(
        f'{m} `{b["trial"]}` {b["score"]:.2f}{"" if b["complete"] else " (search unfinished)"}'
        for m, b in everything['best'].items())]
    for suffix, text in (('.md', '\n'.join(lines) + '\n'), ('.json', json.dumps(everything, indent=2)),
                         ('-best.json', json.dumps(best_recipes, indent=2))):
        with open(os.path.join(RESULTS, f'{args.tag}{suffix}'), 'w') as f:
            f.write(text)
    print('\n'.join(lines))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--budget-cpu-min', type=float, default=15.0, help='training CPU-minutes per trial')
    parser.add_argument('--methods', nargs='+', default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument('--trials', nargs='+', default=None, help='only these trial names (default: all)')
    parser.add_argument('--train-samples', type=int, default=20000, help='pretraining images (a seeded subset)')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--blr', type=float, default=1.5e-3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--probe-train-samples', type=int, default=None, help='probe training images (default: all)')
    parser.add_argument('--probe-epochs', type=int, default=90, help='LARS head epochs on cached features')
    add_runner_args(parser, 'recipe_search', 'TRIAL')
    args = parser.parse_args(argv)
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != '--table-only']
    for name in ('budget_cpu_min', 'threads', 'parallel', 'train_samples', 'probe_epochs'):
        if not getattr(args, name) > 0:
            raise SystemExit(f'--{name.replace("_", "-")} {getattr(args, name)}: give a positive number')
    if args.calibration_steps < 4:
        raise SystemExit(f'--calibration-steps {args.calibration_steps}: give 4 or more')
    known = {t['name'] for m in RECIPES for t in trials(m)} | {COMBINED}
    if args.trials and set(args.trials) - known:
        raise SystemExit(f'--trials {sorted(set(args.trials) - known)}: unknown; trials are {sorted(known)}')
    check_equal_trials()
    # the race's value builder reads these; the search does no online evaluation (the full-split probe scores it)
    args.eval_train_samples, args.eval_test_samples, args.device = 5000, 2000, 'cpu'
    torch.set_num_threads(args.threads)
    rows_dir, work = os.path.join(RESULTS, args.tag), os.path.join('output', 'recipe_search', args.tag)
    os.makedirs(rows_dir, exist_ok=True)
    if args.worker:
        method, name = args.worker
        trial = next((t for t in trials(method) if t['name'] == name), None)
        trial = trial or combine(method, _done(rows_dir, method, args.budget_cpu_min))
        run_trial(args, method, trial, rows_dir, work)
        return
    if not args.table_only:
        pixel_floors(args, rows_dir, work)
        failed: List[str] = []
        for phase in ('single', COMBINED):
            todo = []
            for method in args.methods:
                done = _done(rows_dir, method, args.budget_cpu_min)
                candidates = trials(method) if phase == 'single' else [t for t in [combine(method, done)] if t]
                todo += [(method, t['name']) for t in candidates
                         if t['name'] not in done and (not args.trials or t['name'] in args.trials)]
            todo.sort(key=lambda mt: [t['name'] for t in trials(mt[0])].index(mt[1]) if mt[1] != COMBINED else 0)
            running: List[subprocess.Popen] = []
            for method, name in todo:  # sorted by trial, so the two methods' same trial run side by side
                while len(running) >= args.parallel:
                    running = _wait(running, failed)
                print(f'=== {method}: {name}', flush=True)
                running.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv,
                                                 '--worker', method, name]))
            while running:
                running = _wait(running, failed)
        if failed:
            raise SystemExit(f'{len(failed)} trial(s) failed: {failed}; rerun the same command to resume them')
    write_table(args, rows_dir, argv)


if __name__ == '__main__':
    from randsac_timm.train.config import run_cli

    sys.exit(run_cli('recipe_search.py', main))  # a missing data set or bad value: one line, exit 2
