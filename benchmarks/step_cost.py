"""CPU-s per optimizer step of each invocation of a run, from its `log.jsonl` (a killed and resumed run has several).

    python benchmarks/step_cost.py benchmarks/results/recipe_search/logs/RandSAC-batch_64.jsonl ...

Shows whether a run's cost per step changed between invocations (another process sharing the cores raises it),
and the CPU time the log holds, which for a resumed run counts the steps between its last checkpoint and the kill
twice. Each invocation's rate is taken between its first and last timed train records.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablation_grid import invocations, run_time, timed_span  # noqa: E402

from randsac_timm.train.run_log import read_log  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('logs', nargs='+')
    for path in parser.parse_args().logs:
        if not os.path.isfile(path):
            raise SystemExit(f'step_cost.py: error: {path} does not exist: give a run\'s log.jsonl')
        records = read_log(path)
        for i, invocation in enumerate(invocations(records)):
            span = timed_span(invocation)
            if span is None:
                continue
            first, last = span
            rate = (last['cpu_time_s'] - first['cpu_time_s']) / (last['step'] - first['step'])
            print(f'{path}: invocation {i} steps {first["step"]}-{last["step"]}: {rate:.3f} CPU-s per step '
                  f'(ended with {invocation[-1]["event"]!r})')
        wall, cpu, complete = run_time(records)
        print(f'{path}: logged {cpu / 60:.1f} CPU-min, {wall / 60:.1f} wall-min, complete: {complete}')


if __name__ == '__main__':
    main()
