"""The README's performance tables, printed as markdown from the JSON files `throughput.py` wrote.

    python benchmarks/perf_table.py                       # after bash benchmarks/cpu_perf.sh
    python benchmarks/perf_table.py --gpu-dir benchmarks/results/gpu

Nothing here measures; it only formats `benchmarks/results/*.json`, so every number in the README tables has a
file behind it.
"""
import argparse
import json
import os
from typing import Any, Dict, List, Optional

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
SHORT = {'randsac_vit_micro_patch4_32': 'micro (6 x 128d)', 'randsac_vit_tiny_patch4_32': 'ViT-Tiny/4 (12 x 192d)',
         'randsac_vit_base_patch16_224': 'ViT-B/16'}


def _load(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _ips(rows: Dict[str, Any], mode: str) -> str:
    return f'{rows[mode]["images_per_s"]:.1f}' if rows.get(mode) else '-'


def _ratio(res: Dict[str, Any], key: str, pct: bool = False) -> str:
    if key not in res:
        return '-'
    return f'{100 * res[key]:.2f} %' if pct else f'{res[key]:.2f}'


def step_cost_table(reports: List[Dict[str, Any]]) -> List[str]:
    lines = ['| encoder, grid, hardware | (a) timm | (b) RandSAC dense | (b\') RandSAC sparse | (c) no masks | (d) MAE '
             '| masks share of (b) | (b)/(c) time | (b\')/(c) time | FLOP/s (b)/(a) | peak mem (b)/(c) | (b\')/(c) |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for report in reports:
        for encoder, res in report['results'].items():
            rows = res['rows']
            grid = next((r['grid'] for r in rows.values() if r and 'grid' in r), None)  # older files lack it
            grid_txt = f'{grid[0]}x{grid[1]}' if grid else 'default grid'
            hw = report['hardware'] + (', bf16' if report.get('amp') else ', fp32')
            lines.append(
                f'| {SHORT.get(encoder, encoder)}, {grid_txt}, {hw}, batch {report["batch_size"]} '
                f'| {_ips(rows, "timm")} | {_ips(rows, "randsac")} | {_ips(rows, "randsac_sparse")} '
                f'| {_ips(rows, "nomask")} | {_ips(rows, "mae")} | {_ratio(res, "mask_share", pct=True)} '
                f'| {_ratio(res, "masked_over_unmasked")} | {_ratio(res, "masked_over_unmasked_sparse")} '
                f'| {_ratio(res, "flops_ratio_vs_timm")} | {_ratio(res, "memory_ratio")} '
                f'| {_ratio(res, "memory_ratio_sparse")} |')
    return lines


def compile_table(eager: Dict[str, Any], compiled: Dict[str, Any]) -> List[str]:
    """Compiled against eager; files from before the in-turn eager timing compare with the eager table's run."""
    lines = ['| step (micro, 8x8, CPU fp32, batch 128) | eager img/s | compiled img/s | compiled / eager | first '
             'compiled step (s) |', '|---|---|---|---|---|']
    for encoder, res in compiled['results'].items():
        base = eager['results'].get(encoder, {}).get('rows', {})
        for mode, row in res['rows'].items():
            if not row:
                continue
            if 'eager_step_ms' in row:  # eager steps timed in the same turns as the compiled ones
                eager_ips = row['batch_size'] / row['eager_step_ms'] * 1e3
            elif base.get(mode):
                eager_ips = base[mode]['images_per_s']
            else:
                lines.append(f'| {mode} | - | {row["images_per_s"]:.1f} | - | {row["first_step_s"]:.0f} |')
                continue
            lines.append(f'| {mode} | {eager_ips:.1f} | {row["images_per_s"]:.1f} '
                         f'| {row["images_per_s"] / eager_ips:.2f} | {row["first_step_s"]:.0f} |')
    return lines


def grid_table(reports: List[Dict[str, Any]]) -> List[str]:
    lines = ['| grid (tokens) | (a) timm img/s | (b) dense img/s | (b\') sparse img/s | (c) no masks img/s '
             '| GFLOP/step (b) | FLOP/s (b)/(a) | (b)/(c) time | (b\')/(c) time | peak mem (b)/(c) | (b\')/(c) |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for report in reports:
        for res in report['results'].values():
            rows = res['rows']
            g = rows['randsac']['grid']
            lines.append(
                f'| {g[0]}x{g[1]} ({g[0] * g[1]}) | {_ips(rows, "timm")} | {_ips(rows, "randsac")} '
                f'| {_ips(rows, "randsac_sparse")} | {_ips(rows, "nomask")} '
                f'| {rows["randsac"]["flops_per_step"] / 1e9:.1f} | {_ratio(res, "flops_ratio_vs_timm")} '
                f'| {_ratio(res, "masked_over_unmasked")} | {_ratio(res, "masked_over_unmasked_sparse")} '
                f'| {_ratio(res, "memory_ratio")} | {_ratio(res, "memory_ratio_sparse")} |')
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--results', default=RESULTS)
    parser.add_argument('--gpu-dir', default=None, help='folder with throughput_gpu*.json from gpu_perf.sh')
    args = parser.parse_args()
    cpu = _load(os.path.join(args.results, 'throughput_cpu.json'))
    reports = [r for r in [cpu] if r]
    if args.gpu_dir:
        reports += [r for r in [_load(os.path.join(args.gpu_dir, 'throughput_gpu.json'))] if r]
    print('\n'.join(step_cost_table(reports)))
    compiled = _load(os.path.join(args.results, 'throughput_cpu_compile.json'))
    if cpu and compiled:
        print()
        print('\n'.join(compile_table(cpu, compiled)))
    scaling = [r for r in (_load(os.path.join(args.results, f'grid_scaling_{s}.json')) for s in (32, 56, 64)) if r]
    if scaling:
        print()
        print('\n'.join(grid_table(scaling)))


if __name__ == '__main__':
    main()
