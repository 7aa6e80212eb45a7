"""The paper's ablations at small scale on Fashion-MNIST, RandSAC next to MAE, at one fixed budget, fairly.

    python benchmarks/ablation_grid.py                  # every row, 2 seeds: many CPU-hours on 2 cores, resumable
    python benchmarks/ablation_grid.py --rows 'MAE 75%' --seeds 1
    python benchmarks/ablation_grid.py --device cuda --train-samples 60000 --epochs 20 --tag gpu-long
    python benchmarks/ablation_grid.py --recipes benchmarks/results/recipe_search-best.json --train-samples 60000 \
        --epochs 6 --threads 1 --tag ablation_recipe       # the claim rows at a real budget, with the searched recipe

Every row pretrains `randsac_vit_micro_patch4_32` (Fashion-MNIST 28 -> 32, 8x8 grid, unless the row says otherwise)
with the same epochs, batch, optimizer (AdamW, betas (0.9, 0.999) as the paper's CIFAR recipe, Table 12), data and
initialisation (xavier, `initialization.py`, for RandSAC and MAE alike), then probes the encoder on the official test
split: the paper's LARS probe (fast mode), the converged L-BFGS readout and the weighted kNN (k=20, T=0.07).
Random-init and raw-pixel rows use the same probes.

Targets follow the paper. Its serialization tables (1-6) train on raw pixels; its hierarchy table (7), its
RandSAC-vs-MAE comparison and our decoder rows (Table 8) on normalised pixels. So rows are grouped, and a
comparison is only made inside a group, where everything but the named difference is shared:
- `T1-6`  serialization rows, raw-pixel target;
- `T7`    flat vs hierarchical blobs (7 vs 7->3, 11 vs 11->5, 16 vs 16->4; the paper's Table 7 is all blobs) and
          square 16->4 (ours), normalised-pixel target;
- `T8`    the blob 11->5 decoders (skips, plain, two-stream) and the skip-memory forms, normalised-pixel target;
- `MAE`   MAE 75 % against RandSAC blob 11->5 (skips), normalised-pixel target, at equal epochs and at equal CPU
          time (the process's user + system time, so a busy machine does not tilt the race);
- `input` blob 11->5 with the native 28x28 input (7x7 grid) and with a milder crop, normalised-pixel target.

Rows run in the order listed (the comparisons that decide the most first), each seed of a row before the next
row. Each finished row is a JSON file under `benchmarks/results/<tag>/`; a killed grid continues where it stopped
(finished rows are skipped, an unfinished pretraining resumes from its checkpoint). Data loading runs in the
training process (`workers=0`) so that its CPU time is counted. At the end the command writes
`benchmarks/results/<tag>.json` and `benchmarks/results/<tag>.md` (the table).

With `--recipes FILE` (`{"RandSAC": {...}, "MAE": {...}}`, as `recipe_search.py` writes it) the grid runs only the
rows that carry one of the paper's claims (`CLAIM_ROWS`), each with its method's searched recipe (input, crop, target,
lr, batch, decoder size, MAE's mask ratio) and only what the row tests taken from the row (`ROW_KEYS`: the wrapper,
segments, decoder kind, skip memory). Every RandSAC row then shares one target, so the groups merge into one.
"""
import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from randsac_timm.eval.config import LinearProbeConfig
from randsac_timm.eval.linear_probe import run_linear_probe
from randsac_timm.train.checkpoint import atomic_write
from randsac_timm.train.config import PretrainConfig, make_config
from randsac_timm.train.engine import train
from randsac_timm.train.run_log import read_log

ENCODER = 'randsac_vit_micro_patch4_32'
RANDSAC = 'randsac_pretrain_vit_micro_patch4_32'
MAE = 'mae_pretrain_vit_micro_patch4_32'
RAW, NORM = dict(norm_pix_loss=False), dict(norm_pix_loss=True)
# each method's fair default (the grid's setting), which a recipe file's entries override (race, recipe search, grid)
RECIPES: Dict[str, Dict[str, Any]] = {
    'RandSAC': dict(model=RANDSAC, segments='blob:11-5', **NORM),
    'MAE': dict(model=MAE, mask_ratio=0.75, **NORM),
}


def _randsac(segments: str, target: Dict[str, bool], **kwargs: Any) -> Dict[str, Any]:
    return dict(model=RANDSAC, segments=segments, **target, **kwargs)


# name, group, pretraining overrides (None = no pretraining); the reference row of an equal-time row
ROWS: List[Dict[str, Any]] = [
    dict(name='random init', group='-', pretrain=None),
    dict(name='blob 11->5 (skips)', group='T7/T8/MAE', pretrain=_randsac('blob:11-5', NORM)),
    dict(name='MAE 75%', group='MAE', pretrain=dict(model=MAE, **NORM)),
    dict(name='MAE 75%, RandSAC CPU time', group='MAE', pretrain=dict(model=MAE, **NORM), equal_time=True),
    dict(name='blob 11->5, skip memory paper', group='T8',
         pretrain=_randsac('blob:11-5', NORM, skip_memory='paper')),
    dict(name='blob 11->5, skip memory paper_last', group='T8',
         pretrain=_randsac('blob:11-5', NORM, skip_memory='paper_last')),
    dict(name='blob 11->5 plain decoder', group='T8', pretrain=_randsac('blob:11-5', NORM, decoder='plain')),
    dict(name='blob 11->5, 28x28 native', group='input', pretrain=_randsac('blob:11-5', NORM, img_size=28)),
    dict(name='blob 11->5, crop scale 0.5-1', group='input',
         pretrain=_randsac('blob:11-5', NORM, crop_scale=(0.5, 1.0))),
    dict(name='blob(11), norm-pix', group='T7', pretrain=_randsac('blob:11', NORM)),
    dict(name='blob(7), norm-pix', group='T7', pretrain=_randsac('blob:7', NORM)),
    dict(name='blob 7->3', group='T7', pretrain=_randsac('blob:7-3', NORM)),
    dict(name='blob(16), norm-pix', group='T7', pretrain=_randsac('blob:16', NORM)),
    dict(name='blob 16->4', group='T7', pretrain=_randsac('blob:16-4', NORM)),
    dict(name='blob 11->5 two-stream', group='T8', pretrain=_randsac('blob:11-5', NORM, decoder='two_stream')),
    dict(name='square 16->4 (ours)', group='T7', pretrain=_randsac('square:16-4', NORM)),
    dict(name='patch-raster', group='T1-6', pretrain=_randsac('raster', RAW)),
    dict(name='patch-random', group='T1-6', pretrain=_randsac('random', RAW)),
    dict(name='square(2) = square:16', group='T1-6', pretrain=_randsac('square:16', RAW)),
    dict(name='blob(7)', group='T1-6', pretrain=_randsac('blob:7', RAW)),
    dict(name='shuffle(7)', group='T1-6', pretrain=_randsac('shuffle:7', RAW)),
]
# the rows that test a claim of the paper, run at a real budget with the searched recipe (`--recipes`)
CLAIM_ROWS = ('random init', 'blob 11->5 (skips)', 'MAE 75%', 'MAE 75%, RandSAC CPU time', 'blob 11->5 plain decoder',
              'blob 11->5 two-stream', 'blob(11), norm-pix', 'blob(7), norm-pix', 'blob 7->3', 'blob(16), norm-pix',
              'blob 16->4', 'patch-random')
ROW_KEYS = ('model', 'segments', 'decoder', 'skip_memory')  # what a row tests; a recipe sets everything else
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
EQUAL_TIME_REFERENCE = 'blob 11->5 (skips)'  # RandSAC row whose CPU time the equal-time MAE row gets
EQUAL_TIME_RATE = 'MAE 75%'  # MAE row that measures MAE's CPU time per step

# the paper's CIFAR-10 linear-probe numbers for the same rows (Tables 1-8), for the side-by-side table
PAPER_CIFAR10 = {'patch-raster': '55.5 (T1)', 'patch-random': '75.5 (T2)', 'square(2) = square:16': '81.4 (T4)',
                 'blob(7)': '82.5 (T5)', 'blob(7), norm-pix': '82.5 (T7)', 'blob 7->3': '82.7 (T7)',
                 'blob(11), norm-pix': '82.0 (T7)', 'blob 11->5 (skips)': '83.2 (T7); 89.5 (T8)',
                 'blob(16), norm-pix': '81.0 (T7)', 'blob 16->4': '82.6 (T7)',
                 'blob 11->5 plain decoder': '88.0 (T8)', 'blob 11->5 two-stream': '84.4 (T8)'}

# the paper's claims the claim rows test: (claim, the row it says is better, the row it says is worse, the paper's
# numbers); the table says for each whether it holds here, seed by seed (the same seed: the same initialisation
# and data order, so the difference is paired)
CLAIMS = (
    ('hierarchy beats flat: 7 -> 3 over 7 segments', 'blob 7->3', 'blob(7), norm-pix', 'T7: 82.7 vs 82.5'),
    ('hierarchy beats flat: 11 -> 5 over 11 segments', 'blob 11->5 (skips)', 'blob(11), norm-pix',
     'T7: 83.2 vs 82.0'),
    ('hierarchy beats flat: 16 -> 4 over 16 segments', 'blob 16->4', 'blob(16), norm-pix', 'T7: 82.6 vs 81.0'),
    ('random blobs beat random patches', 'blob(7), norm-pix', 'patch-random', 'T5 vs T2: 82.5 vs 75.5'),
    ('the skip decoder beats the plain one', 'blob 11->5 (skips)', 'blob 11->5 plain decoder', 'T8: 89.5 vs 88.0'),
    ('the skip decoder beats two-stream', 'blob 11->5 (skips)', 'blob 11->5 two-stream', 'T8: 89.5 vs 84.4'),
    ('RandSAC beats MAE at equal epochs', 'blob 11->5 (skips)', 'MAE 75%',
     'T9 (ViT-S, 1600 epochs): 93.9 vs 87.3'),
    ('RandSAC beats MAE at equal CPU time', 'blob 11->5 (skips)', 'MAE 75%, RandSAC CPU time', 'not claimed'),
)


def claim_verdict(better: List[Dict[str, Any]], worse: List[Dict[str, Any]], key: str) -> Dict[str, Any]:
    """Whether the row claimed `better` beats the one claimed `worse` under readout `key`, paired by seed: it
    holds (or is reversed) when every seed agrees and the mean gap exceeds both rows' seed std; agreeing seeds
    with a smaller gap only lean one way. Fewer than two shared seeds give no verdict yet."""
    by_seed = [{r['seed']: r[key] for r in rows if r.get(key) is not None} for rows in (better, worse)]
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    diffs = [by_seed[0][s] - by_seed[1][s] for s in seeds]
    result: Dict[str, Any] = dict(seeds=seeds, diffs=diffs, mean=statistics.mean(diffs) if diffs else None)
    if len(seeds) < 2:
        result['verdict'] = 'waiting for both rows' if not seeds else 'one seed so far'
        return result
    spread = max(statistics.stdev([side[s] for s in seeds]) for side in by_seed)
    if all(d > 0 for d in diffs) or all(d < 0 for d in diffs):
        clear = abs(result['mean']) > spread
        if diffs[0] > 0:
            result['verdict'] = 'holds' if clear else 'leans (within the seed spread)'
        else:
            result['verdict'] = 'reversed' if clear else 'leans reversed (within the seed spread)'
    else:
        result['verdict'] = 'seeds disagree'
    return result


def _gap_text(verdict: Dict[str, Any]) -> str:
    if not verdict['diffs']:
        return '-'
    each = ', '.join(f'{d:+.1f}' for d in verdict['diffs'])
    return f'{verdict["mean"]:+.1f} ({each})' if len(verdict['diffs']) > 1 else each


def _claim_lines(records: List[Dict[str, Any]]) -> Tuple[List[str], List[Dict[str, Any]]]:
    """The claims table's markdown lines and its JSON entries."""
    lines = ['', 'The paper\'s claims at this budget: the gap is the first row\'s top-1 minus the second\'s, mean '
             '(then seed by seed, the same seed on both sides). A claim holds when every seed agrees and the mean gap '
             'is larger than both rows\' seed std (it leans when every seed agrees but the gap is smaller); two '
             'seeds are weak evidence either way.', '',
             '| claim | rows | paper CIFAR-10 LIN | seeds | converged gap | converged | LARS gap | LARS |',
             '|---|---|---|---|---|---|---|---|']
    entries = []
    for claim, better, worse, paper in CLAIMS:
        sides = [[r for r in records if r['row'] == name] for name in (better, worse)]
        converged, lars = (claim_verdict(*sides, key) for key in ('lbfgs_top1', 'top1'))
        entries.append(dict(claim=claim, better=better, worse=worse, paper=paper, converged=converged, lars=lars))
        seeds = ', '.join(map(str, converged['seeds'])) or '-'
        lines.append(f'| {claim} | {better} vs {worse} | {paper} | {seeds} | {_gap_text(converged)} | '
                     f'{converged["verdict"]} | {_gap_text(lars)} | {lars["verdict"]} |')
    return lines, entries


def _slug(name: str) -> str:
    return ''.join(c if c.isalnum() else '_' for c in name).strip('_').lower()


def _with_recipe(row: Dict[str, Any], recipes: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """`row` pretrained with its method's recipe, keeping from the row only what it tests (`ROW_KEYS`)."""
    if row['pretrain'] is None:
        return row
    method = 'MAE' if row['pretrain']['model'] == MAE else 'RandSAC'
    pretrain = dict(recipes[method], **{k: v for k, v in row['pretrain'].items() if k in ROW_KEYS})
    if method == 'RandSAC':
        pretrain['decoder'] = row['pretrain'].get('decoder', 'skip')  # the row's decoder, never the recipe's
        if pretrain['decoder'] != 'skip':
            pretrain.pop('skip_memory', None)  # a recipe's skip memory mixes the skip decoder's levels only
    return dict(row, pretrain=pretrain)


def load_recipes(path: str) -> Dict[str, Dict[str, Any]]:
    """{method: recipe} from a JSON file (recipe_search.py's -best.json), each entry over the method's default
    (`RECIPES`), checked: known methods, `PretrainConfig` fields only, a wrapper of the method's own objective."""
    if not os.path.isfile(path):
        raise SystemExit(f'--recipes {path}: no such file; give a JSON file {{method: {{field: value}}}} '
                         f'(the -best.json that benchmarks/recipe_search.py writes)')
    try:
        with open(path) as f:
            given = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f'--recipes {path}: cannot read it ({e}); give a JSON file {{method: {{field: value}}}}')
    if not isinstance(given, dict):
        raise SystemExit(f'--recipes {path}: expected a JSON object {{method: {{field: value}}}}')
    fields = set(PretrainConfig.__dataclass_fields__)
    recipes = dict(RECIPES)
    for method, recipe in given.items():
        unknown = sorted(set(recipe) - fields) if isinstance(recipe, dict) else ['(not an object)']
        if method not in RECIPES or unknown:
            raise SystemExit(f'--recipes {path}: {method!r} {unknown or ""}: methods are {list(RECIPES)}, fields are '
                             f'train_pretrain.py options (PretrainConfig)')
        merged = dict(RECIPES[method], **recipe)
        if merged['model'].startswith('mae_') != (method == 'MAE'):
            wanted = 'mae_pretrain_*' if method == 'MAE' else 'randsac_pretrain_*'
            raise SystemExit(f'--recipes {path}: the {method} recipe names {merged["model"]!r}, a wrapper of the '
                             f'other objective; give a {wanted} wrapper')
        recipes[method] = merged
    return recipes


def same_settings(stored: Dict[str, Any], expected: Dict[str, Any], ignore: Sequence[str] = ()) -> List[str]:
    """The keys present in both whose values differ (as JSON keeps them: tuples become lists), `ignore` left out.
    A result file written with other settings must not be reused under the same name."""
    stored, expected = json.loads(json.dumps(stored)), json.loads(json.dumps(expected))
    return sorted(k for k in set(stored) & set(expected) if k not in ignore and stored[k] != expected[k])


def _row_values(row: Dict[str, Any], seed: int, args, out_dir: str, max_steps: Optional[int] = None) -> Dict[str, Any]:
    """The trainer values of one row's pretraining: the grid's shared settings, then the row's own."""
    values = dict(
        dataset='fashion_mnist', img_size=32, max_train_samples=args.train_samples, epochs=args.epochs,
        batch_size=args.batch_size, blr=args.blr, min_lr=1e-5, warmup_epochs=min(0.5, args.epochs / 4),
        weight_decay=0.05, betas=(0.9, 0.999), workers=0, device=args.device, amp=args.amp,
        seed=seed, output_dir=out_dir, save_every=100, log_every=20, vis_every=0, progress=False,
        max_steps=max_steps, data_dir=args.data_dir)
    values.update(row['pretrain'])
    return values


def _pretrain(row: Dict[str, Any], seed: int, args, out_dir: str, max_steps: Optional[int] = None) -> Dict[str, Any]:
    values = _row_values(row, seed, args, out_dir, max_steps)
    result = train(make_config(PretrainConfig, values))
    records = read_log(result.log)
    ips = [r['images_per_s'] for r in records if r['event'] == 'train'][1:]
    wall, cpu, complete = run_time(records)
    # a killed and resumed run's logged time is no measure; its estimate is kept apart, so nothing takes it for one
    estimate = None if complete else estimated_cpu_s(records, result.step)
    return dict(checkpoint=result.checkpoint, steps=result.step, final_loss=result.last_loss,
                pretrain_wall_s=wall, pretrain_cpu_s=cpu if complete else None, pretrain_time_complete=complete,
                pretrain_cpu_s_estimated=estimate, images_per_s=statistics.mean(ips) if ips else None, config=values)


def invocations(records: List[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
    """A run's log split by process invocation: each opens with `start`, or with `resume` (written just before
    its `start`); a killed and resumed run has several."""
    found: List[List[Dict[str, Any]]] = []
    previous = None
    for record in records:
        if not found or record['event'] == 'resume' or (record['event'] == 'start' and previous != 'resume'):
            found.append([])
        previous = record['event']
        found[-1].append(record)
    return found


def run_time(records: List[Dict[str, Any]]) -> Tuple[float, float, bool]:
    """(wall-clock s, CPU s, complete) of a run's log, summed over its invocations (a resumed row has several).

    An invocation that was killed has no `end` record: the time after its last logged record is unknown, so the
    sums are then lower bounds and `complete` is False (an equal-CPU-time comparison must not use them). An
    invocation that starts at step 0 after others (a run killed before its first checkpoint, started again)
    replaces them: their steps were thrown away.
    """
    wall = cpu = 0.0
    complete = True
    for invocation in invocations(records):
        if invocation[0]['event'] == 'start' and invocation[0].get('step') == 0:
            wall, cpu, complete = 0.0, 0.0, True  # started again from scratch (killed before a checkpoint)
        timed = [r for r in invocation if r.get('cpu_time_s') is not None]
        last = invocation[-1] if invocation[-1]['event'] == 'end' else (timed[-1] if timed else None)
        complete = complete and invocation[-1]['event'] == 'end'
        if last is not None:
            wall, cpu = wall + last['wall_time_s'], cpu + last['cpu_time_s']
    return wall, cpu, complete


def timed_span(invocation: List[Dict[str, Any]]) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """The first and last train records of one invocation that carry a CPU time (None with fewer than two steps
    between them): the span over which its CPU-s per step is measured, startup and shutdown left out."""
    timed = [r for r in invocation if r['event'] == 'train' and r.get('cpu_time_s') is not None]
    if len(timed) < 2 or timed[-1]['step'] <= timed[0]['step']:
        return None
    return timed[0], timed[-1]


def estimated_cpu_s(records: List[Dict[str, Any]], steps: int) -> Optional[float]:
    """A killed and resumed run's CPU time, estimated as its `steps` x the CPU-s per step its invocations logged
    (each between its first and last timed train records). Its logged sum is no measure: it counts the steps
    between the last checkpoint and the kill twice and misses the time after the kill's last record. None when no
    invocation has a span to measure."""
    spans = [span for span in map(timed_span, invocations(records)) if span]
    done = sum(last['step'] - first['step'] for first, last in spans)
    spent = sum(last['cpu_time_s'] - first['cpu_time_s'] for first, last in spans)
    return steps * spent / done if done else None


def _initial_encoder(seed: int, out_dir: str, img_size: int = 32) -> str:
    """The encoder every pretraining row starts from (the wrapper's xavier init, this seed), as a file to probe."""
    import timm

    from randsac_timm.train.checkpoint import export_encoder

    torch.manual_seed(seed)
    model = timm.create_model(RANDSAC, in_chans=1, img_size=img_size)
    path = os.path.join(out_dir, 'encoder-init.safetensors')
    os.makedirs(out_dir, exist_ok=True)
    export_encoder(model.encoder, path, ENCODER, dict(img_size=img_size, in_chans=1))
    return path


def _probe(checkpoint: Optional[str], seed: int, args, out_dir: str, pixels: bool) -> Dict[str, Any]:
    cfg = LinearProbeConfig(
        checkpoint=checkpoint, model=None, pretrained=False, dataset='fashion_mnist',
        data_dir=args.data_dir, fast=True, epochs=args.probe_epochs, warmup_epochs=args.probe_epochs / 10,
        max_train_samples=args.probe_train_samples, seed=seed, device=args.device,
        output_dir=out_dir, pixel_baselines=pixels, progress=False, workers=0)
    return run_linear_probe(cfg)


def _read(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _row_cpu_s(record: Dict[str, Any]) -> Tuple[Optional[float], bool]:
    """(a finished row's pretraining CPU time, whether it is an estimate): the logged time of an unbroken run, else
    the `estimated_cpu_s` of a killed and resumed run, as its row file records it or from the log beside its
    checkpoint; (None, False) without either."""
    if record.get('pretrain_cpu_s'):
        return record['pretrain_cpu_s'], False
    if record.get('pretrain_cpu_s_estimated'):
        return record['pretrain_cpu_s_estimated'], True
    log = os.path.join(os.path.dirname(record.get('checkpoint') or ''), 'log.jsonl')
    if not record.get('checkpoint') or not record.get('steps') or not os.path.isfile(log):
        return None, False
    estimate = estimated_cpu_s(read_log(log), record['steps'])
    return estimate, estimate is not None


def _equal_time_budget(rows_dir: str, seed: int) -> Optional[Dict[str, Any]]:
    """The equal-time MAE row's budget as it records it: `steps`, the MAE steps that fit in the reference RandSAC
    row's CPU time at MAE's measured CPU time per step, and where both times came from; None until both rows have
    a CPU time."""
    ref = _read(os.path.join(rows_dir, f'{_slug(EQUAL_TIME_REFERENCE)}-seed{seed}.json'))
    rate = _read(os.path.join(rows_dir, f'{_slug(EQUAL_TIME_RATE)}-seed{seed}.json'))
    if not ref or not rate:
        return None
    if ref.get('torch_threads') != rate.get('torch_threads'):
        # CPU time per step depends on the thread count (a second thread adds spin-wait time): compare like with like
        print(f'  skipped: {EQUAL_TIME_REFERENCE!r} and {EQUAL_TIME_RATE!r} (seed {seed}) ran with different thread '
              f'counts ({ref.get("torch_threads")} and {rate.get("torch_threads")}): their CPU times do not compare; '
              f'pretrain both with the same --threads')
        return None
    (ref_cpu, ref_estimated), (rate_cpu, rate_estimated) = _row_cpu_s(ref), _row_cpu_s(rate)
    if not ref_cpu or not rate_cpu:
        print(f'  skipped: the equal-CPU-time row needs the CPU times of {EQUAL_TIME_REFERENCE!r} and '
              f'{EQUAL_TIME_RATE!r} (seed {seed}); one was pretrained partly by a killed run and its log.jsonl, which '
              f'would give an estimate, is not beside its checkpoint: delete its row file and its output folder to '
              f'pretrain it again')
        return None
    for name, cpu, estimated in ((EQUAL_TIME_REFERENCE, ref_cpu, ref_estimated),
                                 (EQUAL_TIME_RATE, rate_cpu, rate_estimated)):
        if estimated:
            print(f'  {name!r} (seed {seed}) was killed and resumed: its CPU time, {cpu / 60:.1f} min, is estimated '
                  f'as its steps x the CPU-s per step its log recorded')
    return dict(steps=int(ref_cpu / (rate_cpu / rate['steps'])), reference_cpu_s=ref_cpu,
                reference_estimated=ref_estimated, rate_cpu_s_per_step=rate_cpu / rate['steps'],
                rate_estimated=rate_estimated)


PROBE_KEYS = ('top1', 'lbfgs_top1', 'knn_top1', 'per_block_top1', 'pixel_linear_top1', 'pixel_lbfgs_top1',
              'pixel_pca_linear_top1', 'pixel_knn_top1')


def _probed(record: Dict[str, Any], checkpoint: str, seed: int, args, row: Dict[str, Any],
            start: float) -> Dict[str, Any]:
    """`record` with the probes of `checkpoint` (every key of `PROBE_KEYS`) and the row's wall-clock."""
    out_dir = os.path.join(os.path.dirname(checkpoint), 'probe')
    probe = _probe(checkpoint, seed, args, out_dir, pixels=row['pretrain'] is None)
    record = dict(record, **{k: probe.get(k) for k in PROBE_KEYS})
    record.update(probe_wall_s=probe.get('wall_time_s'), row_wall_s=time.time() - start)
    print(f'  LARS {record["top1"]:.2f}  converged {_fmt(record["lbfgs_top1"])}  '
          f'kNN {record["knn_top1"]:.2f}  ({record["row_wall_s"]:.0f} s)', flush=True)
    return record


def _write_row(path: str, record: Dict[str, Any]) -> None:
    text = json.dumps(record, indent=2)

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)

    atomic_write(path, write)


# flags that pick which rows and seeds one invocation runs: every invocation tabulates the whole grid, so the table's
# command leaves them out
SELECTION_FLAGS = ('--rows', '--only-seeds')


def grid_command(argv: Sequence[str]) -> List[str]:
    """`argv` without the selection flags and their values ('--rows a b' or '--rows=a'): the grid's own command."""
    kept: List[str] = []
    dropping = False
    for arg in argv:
        if arg.startswith('--'):
            dropping = arg in SELECTION_FLAGS
            if dropping or arg.split('=', 1)[0] in SELECTION_FLAGS:
                continue
        if not dropping:
            kept.append(arg)
    return kept


def main(argv: Optional[List[str]] = None) -> None:
    # allow_abbrev=False: grid_command must recognise --rows and --only-seeds by their full names
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--seeds', type=int, default=2, help='seeds per row')
    parser.add_argument('--only-seeds', type=int, nargs='+', default=None,
                        help='run only these of the rows\' seeds (0 to --seeds - 1), e.g. to split the last rows\' '
                             'seeds between two processes; the table still covers every seed finished')
    parser.add_argument('--train-samples', type=int, default=20000, help='pretraining images (a seeded subset)')
    parser.add_argument('--epochs', type=float, default=2, help='pretraining epochs (fractions allowed)')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--blr', type=float, default=1.5e-3)
    parser.add_argument('--probe-train-samples', type=int, default=None, help='probe training images (default: all)')
    parser.add_argument('--probe-epochs', type=int, default=90, help='LARS head epochs on cached features')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s own, one per core). Two grids with --threads 1 and '
                             'disjoint --rows use 2 cores about 1.4x better than one grid with 2 threads '
                             '(benchmarks/cpu_threads.py); each row records its thread count')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--rows', nargs='*', default=None, help='only these row names')
    parser.add_argument('--recipes', default=None,
                        help='a {method: recipe} JSON (recipe_search.py\'s -best.json): run the claim rows with it')
    parser.add_argument('--tag', default=None, help='results name (default: ablation_fair; with --recipes, '
                        'ablation_recipe)')
    parser.add_argument('--pretrain-only', action='store_true',
                        help='pretrain the rows, probe nothing, write no row file (a later run without it probes them: '
                             'the finished pretraining is only reloaded, which adds a few CPU-seconds to its time)')
    parser.add_argument('--reprobe', action='store_true',
                        help='probe finished rows again from their checkpoint where they lack the converged readout')
    parser.add_argument('--table-only', action='store_true',
                        help='run nothing: write the table from the rows finished so far (a grid stopped midway)')
    args = parser.parse_args(argv)
    if args.tag is None:  # a recipe grid never reuses (or overwrites) the fair grid's row files
        args.tag = 'ablation_recipe' if args.recipes else 'ablation_fair'
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f'--threads {args.threads}: give 1 or more CPU threads')
        torch.set_num_threads(args.threads)
    bad_seeds = sorted(set(args.only_seeds or ()) - set(range(args.seeds)))
    if bad_seeds:
        raise SystemExit(f'--only-seeds {bad_seeds}: give seeds from 0 to {args.seeds - 1} (--seeds {args.seeds})')
    # the grid's command, the one the table names (a --table-only call only re-tabulates its rows)
    not_rows = ('--table-only', '--reprobe', '--pretrain-only')  # flags that change what runs, not the rows' settings
    args.argv = grid_command([a for a in (sys.argv[1:] if argv is None else argv) if a not in not_rows])
    root = RESULTS
    rows_dir = os.path.join(root, args.tag)
    work = os.path.join('output', 'ablation', args.tag)
    os.makedirs(rows_dir, exist_ok=True)
    unknown = set(args.rows or ()) - {r['name'] for r in ROWS}
    if unknown:
        raise SystemExit(f'unknown rows {sorted(unknown)}; rows: {[r["name"] for r in ROWS]}')
    recipes = load_recipes(args.recipes) if args.recipes else None
    grid = [_with_recipe(r, recipes) for r in ROWS if r['name'] in CLAIM_ROWS] if recipes else ROWS
    selected = [r for r in grid if not args.rows or r['name'] in args.rows]
    # random init and raw pixels are probed at the RandSAC rows' input size (a recipe may use the native 28x28)
    args.random_init_size = recipes['RandSAC'].get('img_size', 32) if recipes else 32

    for row in [] if args.table_only else selected:
        for seed in args.only_seeds if args.only_seeds is not None else range(args.seeds):
            path = os.path.join(rows_dir, f'{_slug(row["name"])}-seed{seed}.json')
            done = _read(path)
            if done and same_settings(dict(pretrain=done.get('pretrain')), dict(pretrain=row['pretrain'])):
                raise SystemExit(f'{path} was pretrained with other settings than row {row["name"]!r} has now: '
                                 f'give another --tag, or delete the file to run the row again')
            if done and args.reprobe and done.get('lbfgs_top1') is None:
                _write_row(path, _probed(done, done['checkpoint'], seed, args, row, time.time()))
            if done:  # finished earlier: resumable row by row
                continue
            print(f'=== {row["name"]} (seed {seed})', flush=True)
            start = time.time()
            record: Dict[str, Any] = dict(row=row['name'], group=row['group'], seed=seed, pretrain=row['pretrain'],
                                          torch_threads=torch.get_num_threads())
            run_dir = os.path.join(work, f'{_slug(row["name"])}-seed{seed}')
            if row['pretrain'] is None:
                if args.pretrain_only:
                    continue
                checkpoint = _initial_encoder(seed, run_dir, img_size=args.random_init_size)
                record['img_size'] = args.random_init_size
            else:
                max_steps = None
                if row.get('equal_time'):
                    budget = _equal_time_budget(rows_dir, seed)
                    if budget is None:
                        print(f'  skipped: needs the {EQUAL_TIME_REFERENCE!r} and {EQUAL_TIME_RATE!r} rows first, '
                              f'with their CPU times')
                        continue
                    record['equal_time_budget'] = budget
                    max_steps = budget['steps']
                    # as many MAE steps as fit in RandSAC's CPU time, on a schedule sized for them
                    batch = row['pretrain'].get('batch_size', args.batch_size)
                    row = dict(row, pretrain=dict(row['pretrain'], epochs=max_steps / (args.train_samples // batch)))
                record.update(_pretrain(row, seed, args, run_dir, max_steps=max_steps))
                checkpoint = record['checkpoint']
                if args.pretrain_only:
                    continue
            record['checkpoint'] = checkpoint
            _write_row(path, _probed(record, checkpoint, seed, args, row, start))

    # the whole grid, not just this invocation's rows: two processes on disjoint rows must not leave a partial table
    _write_table(root, args.tag, rows_dir, grid, args)


def _fmt(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.2f}'


def _stats(values: List[Optional[float]]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.1f}'
    return f'{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}'


def _best_block(records: List[Dict[str, Any]]) -> str:
    """The block whose converged readout is best, averaged over seeds, e.g. '4: 82.1'."""
    per_block = [r['per_block_top1'] for r in records if r.get('per_block_top1')]
    if not per_block:
        return '-'
    means = [statistics.mean(block) for block in zip(*per_block)]
    best = max(range(len(means)), key=means.__getitem__)
    return f'{best + 1}: {means[best]:.1f}'


def _target(row: Dict[str, Any]) -> str:
    if row['pretrain'] is None:
        return '-'
    return 'norm-pix' if row['pretrain'].get('norm_pix_loss') else 'raw'


def _trained_with(row: Dict[str, Any]) -> str:
    """What the row's pretraining ran (under a recipe a row's name is the paper grid's, e.g. 'MAE 75%', while its
    mask ratio is the recipe's), e.g. 'mask 0.85' or 'blob:11-5, skip decoder (paper_last)'."""
    pretrain = row['pretrain']
    if pretrain is None:
        return '-'
    if pretrain['model'].startswith('mae_'):
        return f'mask {pretrain.get("mask_ratio", 0.75):g}'  # 0.75: the MAE wrapper's default
    decoder = pretrain.get('decoder', 'skip')
    memory = f' ({pretrain["skip_memory"]})' if decoder == 'skip' and pretrain.get('skip_memory') else ''
    return f'{pretrain.get("segments", "default")}, {decoder} decoder{memory}'


def _input_text(img_size: int) -> str:
    grid = img_size // 4  # the micro encoder's 4x4 patches
    source = 'native' if img_size == 28 else '28 -> 32 padded' if img_size == 32 else f'28 -> {img_size}'
    return f'{img_size}x{img_size} input ({source}), {grid}x{grid} grid'


def _recipe_text(args) -> str:
    if not args.recipes:
        return ''
    recipes = {m: {k: v for k, v in r.items() if k != 'model'} for m, r in load_recipes(args.recipes).items()}
    return (f'; every row with its method\'s searched recipe (`{args.recipes}`, which overrides the batch and blr '
            f'above: {json.dumps(recipes)}), each row setting only what it tests (wrapper, segments, decoder, skip '
            f'memory): a row keeps the paper grid\'s name, but its target and MAE\'s mask ratio are the recipe\'s '
            f'(columns target and trained with)')


def _write_table(root: str, tag: str, rows_dir: str, grid: List[Dict[str, Any]], args) -> None:
    """Tabulate every row of `grid` with a finished row file in `rows_dir`, whichever rows this invocation ran."""
    records = []
    for name in sorted(os.listdir(rows_dir)):
        with open(os.path.join(rows_dir, name)) as f:
            records.append(json.load(f))
    hardware = (torch.cuda.get_device_name() if args.device.startswith('cuda')
                else f'{platform.machine()} CPU, {os.cpu_count()} cores, threads per row in the table (rows written '
                     f'before threads were recorded ran with torch\'s default, one per core)')
    lines = [
        f'Fashion-MNIST, the micro encoder ({_input_text(args.random_init_size)}), xavier init, '
        f'{args.train_samples} pretraining images x {args.epochs:g} epoch(s), batch {args.batch_size}, blr {args.blr}, '
        f'AdamW betas (0.9, 0.999){_recipe_text(args)}; probes on the official 10k test split: LARS = the paper\'s '
        f'linear probe (fast '
        f'mode, {args.probe_epochs} epochs), converged = L-BFGS logistic regression on the same features, best '
        f'block = the block with the best converged readout; {hardware}. Mean ± std over the seeds. '
        f'Command: `{" ".join(["python", "benchmarks/ablation_grid.py"] + [shlex.quote(a) for a in args.argv])}`.',
        '',
        '| row | group | target | trained with | LARS top-1 | converged top-1 | kNN top-1 | best block | seeds '
        '| pretrain img/s | pretrain CPU-min | threads | paper CIFAR-10 LIN |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    summary = []
    for row in grid:
        rs = [r for r in records if r['row'] == row['name']]
        if not rs:
            continue
        ips = [r.get('images_per_s') for r in rs]
        cpu = [(r['seed'], *_row_cpu_s(r)) for r in rs]
        cpu_min = [seconds / 60 for _, seconds, _ in cpu if seconds]
        estimated = [seed for seed, seconds, is_estimate in cpu if seconds and is_estimate]
        cpu_text = _stats(cpu_min) + (f' (seed {", ".join(map(str, estimated))}: estimated)' if estimated else '')
        entry = dict(row=row['name'], group=row['group'], target=_target(row), seeds=[r['seed'] for r in rs],
                     top1=[r['top1'] for r in rs], lbfgs_top1=[r.get('lbfgs_top1') for r in rs],
                     knn_top1=[r['knn_top1'] for r in rs], per_block_top1=[r.get('per_block_top1') for r in rs],
                     images_per_s=ips, pretrain_cpu_min=cpu_min, pretrain_cpu_estimated_seeds=estimated,
                     paper_cifar10=PAPER_CIFAR10.get(row['name']),
                     torch_threads=[r.get('torch_threads') for r in rs])
        threads = ', '.join('default' if t is None else str(t) for t in entry['torch_threads'])
        summary.append(entry)
        entry['trained_with'] = _trained_with(row)
        lines.append(f'| {row["name"]} | {row["group"]} | {entry["target"]} | {entry["trained_with"]} | '
                     f'{_stats(entry["top1"])} | '
                     f'{_stats(entry["lbfgs_top1"])} | {_stats(entry["knn_top1"])} | {_best_block(rs)} | {len(rs)} | '
                     f'{_stats(ips)} | {cpu_text} | {threads} | {PAPER_CIFAR10.get(row["name"], "-")} |')
        if row['pretrain'] is None:
            pixels = dict(row='raw pixels', top1=[r.get('pixel_linear_top1') for r in rs],
                          lbfgs_top1=[r.get('pixel_lbfgs_top1') for r in rs],
                          knn_top1=[r.get('pixel_knn_top1') for r in rs],
                          pca_lbfgs_top1=[r.get('pixel_pca_linear_top1') for r in rs])
            summary.append(pixels)
            size = rs[0].get('img_size', 32)
            lines.append(f'| raw pixels (the probe\'s {size}x{size} input) | - | - | - | {_stats(pixels["top1"])} | '
                         f'{_stats(pixels["lbfgs_top1"])} | {_stats(pixels["knn_top1"])} | - | {len(rs)} | '
                         f'- | - | - | - |')
            lines.append(f'| raw pixels, PCA to the encoder width (128) | - | - | - | - | '
                         f'{_stats(pixels["pca_lbfgs_top1"])} | - | - | {len(rs)} | - | - | - | - |')
    claims: List[Dict[str, Any]] = []
    if args.recipes:  # the claim rows ran: say which of the paper's claims hold
        claim_lines, claims = _claim_lines(records)
        lines += claim_lines
    with open(os.path.join(root, f'{tag}.json'), 'w') as f:
        # the grid's settings, not this call's selection
        settings = {k: v for k, v in vars(args).items() if k not in ('rows', 'only_seeds')}
        json.dump(dict(tag=tag, hardware=hardware, args=settings, rows=summary, claims=claims), f, indent=2)
    with open(os.path.join(root, f'{tag}.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    from randsac_timm.train.config import run_cli

    sys.exit(run_cli('ablation_grid.py', main))  # a missing data set or bad value: one line, exit 2
