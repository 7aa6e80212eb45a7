"""The paper's ablations at small scale on Fashion-MNIST, RandSAC next to MAE, at one fixed budget.

    python benchmarks/ablation_grid.py --quick          # reduced grid, under 30 minutes on 2 CPU cores
    python benchmarks/ablation_grid.py                  # full grid, 2 seeds: a few hours on 2 CPU cores
    python benchmarks/ablation_grid.py --device cuda --train-samples 60000 --epochs 20 --tag gpu-long

Every row pretrains `randsac_vit_micro_patch4_32` (Fashion-MNIST 28 -> 32, 8x8 grid) with the same epochs,
batch, optimizer and data, then runs the fast linear probe and the weighted kNN (k=20, T=0.07) on the official
test split. Random-init and raw-pixel rows use the same probe. Each finished row is a JSON file under
`benchmarks/results/<tag>/`; a killed grid continues where it stopped (finished rows are skipped, an
unfinished pretraining resumes from its checkpoint). The equal-time rows give MAE the wall-clock RandSAC took.
At the end the command writes `benchmarks/results/<tag>.json` and `benchmarks/results/<tag>.md` (the table).
"""
import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

import torch

from randsac_timm.checkpoint import atomic_write
from randsac_timm.config import PretrainConfig, make_config
from randsac_timm.engine import train
from randsac_timm.eval_config import LinearProbeConfig
from randsac_timm.linear_probe import run_linear_probe

ENCODER = 'randsac_vit_micro_patch4_32'
RANDSAC = 'randsac_pretrain_vit_micro_patch4_32'
MAE = 'mae_pretrain_vit_micro_patch4_32'

# (row name, pretraining overrides); None = no pretraining
ROWS: List[Dict[str, Any]] = [
    dict(name='random init', pretrain=None),
    dict(name='patch-raster', pretrain=dict(model=RANDSAC, segments='raster')),
    dict(name='patch-random', pretrain=dict(model=RANDSAC, segments='random')),
    dict(name='square(2) = square:16', pretrain=dict(model=RANDSAC, segments='square:16')),
    dict(name='blob(7)', pretrain=dict(model=RANDSAC, segments='blob:7')),
    dict(name='shuffle(7)', pretrain=dict(model=RANDSAC, segments='shuffle:7')),
    dict(name='blob 11->5 (skips)', pretrain=dict(model=RANDSAC, segments='blob:11-5')),
    dict(name='square 16->4', pretrain=dict(model=RANDSAC, segments='square:16-4')),
    dict(name='blob 11->5 plain decoder', pretrain=dict(model=RANDSAC, segments='blob:11-5', decoder='plain')),
    dict(name='blob 11->5 two-stream', pretrain=dict(model=RANDSAC, segments='blob:11-5', decoder='two_stream')),
    dict(name='MAE 75%', pretrain=dict(model=MAE, norm_pix_loss=True)),
    dict(name='MAE 75%, RandSAC wall-clock', pretrain=dict(model=MAE, norm_pix_loss=True), equal_time=True),
]
QUICK_ROWS = ['random init', 'patch-raster', 'patch-random', 'blob(7)', 'blob 11->5 (skips)', 'MAE 75%']

# the paper's CIFAR-10 linear-probe numbers for the same rows (Tables 1-9), for the side-by-side table
PAPER_CIFAR10 = {'patch-raster': '55.5 (T1)', 'patch-random': '75.5 (T2)', 'square(2) = square:16': '81.4 (T4)',
                 'blob(7)': '82.5 (T5)', 'blob 11->5 (skips)': '83.2 (T7); 89.5 with skips (T8)',
                 'blob 11->5 plain decoder': '88.0 (T8)', 'blob 11->5 two-stream': '84.4 (T8)'}


def _slug(name: str) -> str:
    return ''.join(c if c.isalnum() else '_' for c in name).strip('_').lower()


def _pretrain(row: Dict[str, Any], seed: int, args, out_dir: str, max_steps: Optional[int] = None) -> Dict[str, Any]:
    values = dict(
        dataset='fashion_mnist', img_size=32, max_train_samples=args.train_samples, epochs=args.epochs,
        batch_size=args.batch_size, blr=args.blr, min_lr=1e-5, warmup_epochs=min(0.5, args.epochs / 4),
        weight_decay=0.05, betas=(0.9, 0.95), workers=args.workers, device=args.device, amp=args.amp,
        seed=seed, output_dir=out_dir, save_every=200, log_every=20, vis_every=0, progress=False,
        max_steps=max_steps, data_dir=args.data_dir)
    values.update(row['pretrain'])
    result = train(make_config(PretrainConfig, values))
    with open(result.log) as f:
        records = [json.loads(line) for line in f]
    train_time = sum(r['wall_time_s'] for r in records if r['event'] == 'end')
    ips = [r['images_per_s'] for r in records if r['event'] == 'train'][1:]
    return dict(checkpoint=result.checkpoint, steps=result.step, final_loss=result.last_loss,
                pretrain_wall_s=train_time, images_per_s=statistics.mean(ips) if ips else None)


def _probe(checkpoint: Optional[str], seed: int, args, out_dir: str, pixels: bool) -> Dict[str, Any]:
    cfg = LinearProbeConfig(
        checkpoint=checkpoint, model=None if checkpoint else ENCODER, pretrained=False, dataset='fashion_mnist',
        data_dir=args.data_dir, fast=True, epochs=args.probe_epochs, warmup_epochs=args.probe_epochs / 10,
        max_train_samples=args.probe_train_samples, seed=seed, device=args.device,
        output_dir=out_dir, pixel_baselines=pixels, progress=False, workers=args.workers)
    return run_linear_probe(cfg)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='reduced grid, 1 seed, smaller budget (< 30 min CPU)')
    parser.add_argument('--seeds', type=int, default=None, help='seeds per row (default 2, quick 1)')
    parser.add_argument('--train-samples', type=int, default=None, help='images (default 20000, quick 8000)')
    parser.add_argument('--epochs', type=int, default=None, help='pretraining epochs (default 2, quick 1)')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--blr', type=float, default=1.5e-3)
    parser.add_argument('--probe-train-samples', type=int, default=None, help='probe training images (default: all)')
    parser.add_argument('--probe-epochs', type=int, default=None, help='head epochs on cached features')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--rows', nargs='*', default=None, help='only these row names')
    parser.add_argument('--all-rows', action='store_true', help='every row, also with --quick (its small budget)')
    parser.add_argument('--tag', default=None, help='results name (default ablation_quick / ablation_full)')
    parser.add_argument('--table-only', action='store_true',
                        help='run nothing: write the table from the rows finished so far (a grid stopped midway)')
    args = parser.parse_args(argv)
    # the command that produced the rows (a --table-only call only re-tabulates them)
    args.argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != '--table-only']
    quick = args.quick
    args.seeds = args.seeds or (1 if quick else 2)
    args.train_samples = args.train_samples or (8000 if quick else 20000)
    args.epochs = args.epochs or (1 if quick else 2)
    # the probe is the paper's (LARS, batch 4096, 90 epochs) on all 60k training images in both modes: with
    # fewer images or epochs LARS barely moves the head and every row looks alike
    args.probe_epochs = args.probe_epochs or 90
    tag = args.tag or ('ablation_quick' if quick else 'ablation_full')
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
    rows_dir = os.path.join(root, tag)
    work = os.path.join('output', 'ablation', tag)
    os.makedirs(rows_dir, exist_ok=True)
    # --rows picks rows by name (also beyond the quick set); otherwise --quick runs QUICK_ROWS
    selected = [r for r in ROWS if (r['name'] in args.rows if args.rows else
                                    (args.all_rows or not quick or r['name'] in QUICK_ROWS))]
    unknown = set(args.rows or ()) - {r['name'] for r in ROWS}
    if unknown:
        raise SystemExit(f'unknown rows {sorted(unknown)}; rows: {[r["name"] for r in ROWS]}')

    for seed in range(0 if args.table_only else args.seeds):
        randsac_time: Optional[float] = None
        for row in selected:
            path = os.path.join(rows_dir, f'{_slug(row["name"])}-seed{seed}.json')
            if os.path.exists(path):  # finished earlier: resumable row by row
                with open(path) as f:
                    done = json.load(f)
                if row['name'].startswith('blob 11->5 (skips)'):
                    randsac_time = done.get('pretrain_wall_s')
                continue
            print(f'=== {row["name"]} (seed {seed})', flush=True)
            start = time.time()
            record: Dict[str, Any] = dict(row=row['name'], seed=seed, pretrain=row['pretrain'])
            run_dir = os.path.join(work, f'{_slug(row["name"])}-seed{seed}')
            checkpoint = None
            if row['pretrain'] is not None:
                max_steps = None
                if row.get('equal_time'):
                    mae_row = os.path.join(rows_dir, f'{_slug("MAE 75%")}-seed{seed}.json')
                    randsac_row = os.path.join(rows_dir, f'{_slug("blob 11->5 (skips)")}-seed{seed}.json')
                    if randsac_time is None and os.path.exists(randsac_row):  # finished in an earlier invocation
                        with open(randsac_row) as f:
                            randsac_time = json.load(f).get('pretrain_wall_s')
                    if randsac_time is None or not os.path.exists(mae_row):
                        print('  skipped: needs the RandSAC blob 11->5 and MAE rows first')
                        continue
                    with open(mae_row) as f:
                        mae_ips = json.load(f)['images_per_s']
                    # as many MAE steps as fit in RandSAC's pretraining time, on a schedule sized for them
                    max_steps = int(randsac_time * mae_ips / args.batch_size)
                    row = dict(row, pretrain=dict(row['pretrain'], epochs=max(
                        1, -(-max_steps * args.batch_size // args.train_samples))))
                record.update(_pretrain(row, seed, args, run_dir, max_steps=max_steps))
                checkpoint = record['checkpoint']
                if row['name'].startswith('blob 11->5 (skips)'):
                    randsac_time = record['pretrain_wall_s']
            probe = _probe(checkpoint, seed, args, os.path.join(run_dir, 'probe'), pixels=row['name'] == 'random init')
            record.update(top1=probe['top1'], knn_top1=probe.get('knn_top1'),
                          pixel_linear_top1=probe.get('pixel_linear_top1'), pixel_knn_top1=probe.get('pixel_knn_top1'),
                          probe_wall_s=probe.get('wall_time_s'), row_wall_s=time.time() - start)
            text = json.dumps(record, indent=2)
            atomic_write(path, lambda tmp, text=text: open(tmp, 'w').write(text))
            print(f'  linear {record["top1"]:.2f}  kNN {record["knn_top1"]:.2f}  ({record["row_wall_s"]:.0f} s)',
                  flush=True)

    _write_table(root, tag, rows_dir, selected, args)


def _stats(values: List[float]) -> str:
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.1f}'
    return f'{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}'


def _write_table(root: str, tag: str, rows_dir: str, selected: List[Dict[str, Any]], args) -> None:
    records = []
    for name in sorted(os.listdir(rows_dir)):
        with open(os.path.join(rows_dir, name)) as f:
            records.append(json.load(f))
    hardware = (torch.cuda.get_device_name() if args.device.startswith('cuda')
                else f'{platform.machine()} CPU, {torch.get_num_threads()} threads')
    lines = [
        f'Fashion-MNIST (28 -> 32, 8x8 grid), `{ENCODER}`, {args.train_samples} pretraining images x '
        f'{args.epochs} epoch(s), batch {args.batch_size}, blr {args.blr}; fast linear probe ({args.probe_epochs} '
        f'epochs, LARS) and weighted kNN on the official 10k test split; {hardware}. '
        f'Command: `python benchmarks/ablation_grid.py {" ".join(shlex.quote(a) for a in args.argv)}`.',
        '',
        '| row | linear top-1 | kNN top-1 | seeds | pretrain img/s | pretrain wall-clock (s) | paper CIFAR-10 LIN |',
        '|---|---|---|---|---|---|---|',
    ]
    summary = []
    for row in selected:
        rs = [r for r in records if r['row'] == row['name']]
        if not rs:
            continue
        ips = [r['images_per_s'] for r in rs if r.get('images_per_s')]
        wall = [r['pretrain_wall_s'] for r in rs if r.get('pretrain_wall_s')]
        entry = dict(row=row['name'], top1=[r['top1'] for r in rs], knn_top1=[r['knn_top1'] for r in rs],
                     images_per_s=ips, pretrain_wall_s=wall, paper_cifar10=PAPER_CIFAR10.get(row['name']))
        summary.append(entry)
        lines.append(f'| {row["name"]} | {_stats(entry["top1"])} | {_stats(entry["knn_top1"])} | {len(rs)} | '
                     f'{_stats(ips)} | {_stats(wall)} | {PAPER_CIFAR10.get(row["name"], "-")} |')
        if row['name'] == 'random init':
            px = [r['pixel_linear_top1'] for r in rs if r.get('pixel_linear_top1') is not None]
            pk = [r['pixel_knn_top1'] for r in rs if r.get('pixel_knn_top1') is not None]
            summary.append(dict(row='raw pixels', top1=px, knn_top1=pk))
            lines.append(f'| raw pixels | {_stats(px)} | {_stats(pk)} | {len(px)} | - | - | - |')
    with open(os.path.join(root, f'{tag}.json'), 'w') as f:
        json.dump(dict(tag=tag, hardware=hardware, args=vars(args), rows=summary), f, indent=2)
    with open(os.path.join(root, f'{tag}.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
