"""Where a trained skip decoder reads its memory from: the learned `W: (L_dec, L_enc)` of each run's checkpoint.

    python benchmarks/skip_weights.py output/ablation/ablation_recipe/*/checkpoint-last.pth \
        --out benchmarks/results/skip_weights_recipe.json

The skip decoder (`models/decoder.py`) mixes every encoder block's output with `W`; `paper_last` starts from the
plain decoder (`W[l, last] = 1`, the rest 0). How far `W` has moved from that start says whether the skips can
matter at all: if the memory still comes almost entirely from the last block, skip and plain decoders are the same
network and should read out the same. Reported per decoder layer: `W` itself and the last block's share of it
(`|W[l, last]| / sum_k |W[l, k]|`). These are mixing coefficients, not contributions: a block whose outputs are
larger counts for more than its coefficient says (`paper`/`paper_last` mix raw block outputs). Checkpoints without
trainable skips (plain and two-stream decoders, MAE) are listed and skipped.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablation_grid import _write_row  # noqa: E402  (the benchmarks' atomic JSON writer, as in race.py)

from randsac_timm.train.checkpoint import CheckpointError, load_checkpoint  # noqa: E402

SKIP_WEIGHTS = 'decoder.memory.skip_weights'


def skip_weights_row(path: str) -> dict:
    """One checkpoint's learned skip weights, or a row saying it has none."""
    state = load_checkpoint(path)
    row = dict(checkpoint=path, run=os.path.basename(os.path.dirname(os.path.abspath(path))), step=state['step'],
               skip_memory=state['model_kwargs'].get('skip_memory'))
    weights = state['model'].get(SKIP_WEIGHTS)
    if weights is None:
        return dict(row, weights=None)
    magnitude = weights.abs()
    last_share = (magnitude[:, -1] / magnitude.sum(dim=1)).tolist()
    return dict(row, weights=[[round(w, 4) for w in layer] for layer in weights.tolist()],
                last_block_share=[round(s, 4) for s in last_share])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoints', nargs='+', help='pretraining checkpoints (checkpoint-last.pth of each run)')
    parser.add_argument('--out', default=None, help='also write the rows to this JSON file')
    args = parser.parse_args()
    rows = []
    for path in args.checkpoints:
        try:
            rows.append(skip_weights_row(path))
        except (FileNotFoundError, CheckpointError) as e:
            raise SystemExit(f'skip_weights.py: error: {e}') from None
    for row in rows:
        if row['weights'] is None:
            print(f'{row["run"]} (step {row["step"]}): no trainable skip weights')
            continue
        print(f'{row["run"]} (step {row["step"]}, skip memory {row["skip_memory"]}): last block\'s share per '
              f'decoder layer {row["last_block_share"]}')
        for layer, weights in enumerate(row['weights']):
            print(f'  W[{layer}] = {weights}')
    if args.out:
        _write_row(args.out, dict(command=' '.join(['python'] + sys.argv), rows=rows))


if __name__ == '__main__':
    main()
