import os
import sys

import pytest
import timm
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
from skip_weights import skip_weights_row  # noqa: E402

from randsac_timm.train.checkpoint import CHECKPOINT_FORMAT, CheckpointError  # noqa: E402

NAME = 'randsac_pretrain_vit_micro_patch4_32'


def _checkpoint(path, model=None, **kwargs):
    model = timm.create_model(NAME, **kwargs) if model is None else model
    torch.save(dict(format=CHECKPOINT_FORMAT, model=model.state_dict(), model_name=NAME, model_kwargs=kwargs,
                    step=7), path)


def test_the_skip_report_reads_the_learned_mix_and_the_last_blocks_share(tmp_path):
    path = tmp_path / 'skips' / 'checkpoint-last.pth'
    path.parent.mkdir()
    kwargs = dict(img_size=28, in_chans=1, skip_memory='paper_last')
    model = timm.create_model(NAME, **kwargs)
    weights = model.decoder.memory.skip_weights
    assert weights[:, -1].eq(1).all() and weights[:, :-1].eq(0).all()  # paper_last starts as the plain decoder
    with torch.no_grad():
        weights.zero_()
        weights[0, 0], weights[0, -1] = -0.25, 0.75  # the share counts magnitudes: 0.75 / (0.25 + 0.75)
        weights[1, -1] = 2.0
    _checkpoint(path, model, **kwargs)
    row = skip_weights_row(str(path))
    assert row['run'] == 'skips' and row['step'] == 7 and row['skip_memory'] == 'paper_last'
    assert row['weights'][0][0] == -0.25 and row['weights'][0][-1] == 0.75
    assert row['last_block_share'] == [0.75, 1.0]


def test_a_decoder_without_skips_is_reported_as_such_and_a_bad_file_is_named(tmp_path):
    _checkpoint(tmp_path / 'plain.pth', img_size=28, in_chans=1, decoder='plain')
    assert skip_weights_row(str(tmp_path / 'plain.pth'))['weights'] is None
    (tmp_path / 'bad.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='bad.pth'):
        skip_weights_row(str(tmp_path / 'bad.pth'))
