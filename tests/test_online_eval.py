"""Online evaluation during pretraining (train/online_eval.py) and the training curves (train/curves.py), on real
Fashion-MNIST: eval records at the right steps with sane values, training bit-identical with evaluation on or off,
records continuing after a resume, the PNG and its command line, bad values refused in one line."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image

from randsac_timm.train import online_eval
from randsac_timm.train.checkpoint import load_checkpoint
from randsac_timm.train.config import parse_pretrain_args
from randsac_timm.train.curves import main as curves_main
from randsac_timm.train.curves import read_curves
from randsac_timm.train.engine import train
from randsac_timm.train.online_eval import OnlineEvaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 32
# 256 images / batch 32 = 8 steps per epoch; drop path on, so a model left in eval mode would train differently
TINY = ['--max-train-samples', '256', '--batch-size', str(BATCH), '--workers', '0', '--no-progress', '--vis-every', '0',
        '--save-every', '0', '--log-every', '1', '--drop-path', '0.1', '--eval-train-samples', '200',
        '--eval-test-samples', '100']
EVAL_KEYS = {'event', 'step', 'epoch', 'images_seen', 'wall_time_s', 'cpu_time_s', 'knn_top1', 'eval_s', 'eval_cpu_s'}


def _records(out_dir, event):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [r for r in map(json.loads, f) if r['event'] == event]


@pytest.fixture(scope='module')
def runs(tmp_path_factory, fashion_mnist_train):
    """The same 4 steps without and with evaluation (every 2 steps, with the L-BFGS readout), then the evaluated
    run resumed to step 8 with an evaluation after every step (by minutes)."""
    root = tmp_path_factory.mktemp('online_eval')
    off, on, resumed = str(root / 'off'), str(root / 'on'), str(root / 'resumed')
    train(parse_pretrain_args(TINY + ['--max-steps', '4', '--output-dir', off]))
    result = train(parse_pretrain_args(TINY + ['--max-steps', '4', '--output-dir', on, '--eval-every', '0.25',
                                               '--eval-lbfgs']))
    shutil.copytree(on, resumed)
    os.remove(os.path.join(resumed, 'training-curves.png'))
    train(parse_pretrain_args(TINY + ['--max-steps', '8', '--output-dir', resumed, '--eval-every-minutes', '1e-9']))
    return dict(off=off, on=on, resumed=resumed, result=result)


def test_eval_records_log_the_start_every_n_steps_and_beat_chance(runs):
    evals = _records(runs['on'], 'eval')
    assert [r['step'] for r in evals] == [0, 2, 4]  # step 0, then every 0.25 epoch (2 steps); 4 is also the last
    assert [r['epoch'] for r in evals] == [0.0, 0.25, 0.5]
    assert [r['images_seen'] for r in evals] == [0, 2 * BATCH, 4 * BATCH]
    for r in evals:
        assert set(r) == EVAL_KEYS | {'lbfgs_top1'} and r['eval_s'] > 0 and r['eval_cpu_s'] > 0
        # 10 classes: chance is 10 %; even the random-init encoder's features are far better than that
        assert 25 < r['knn_top1'] <= 100 and 25 < r['lbfgs_top1'] <= 100
    walls = [r['wall_time_s'] for r in evals]
    assert walls == sorted(walls)
    assert all('wall_time_s' in r and 'cpu_time_s' in r for r in _records(runs['on'], 'train'))
    assert not _records(runs['off'], 'eval')


def test_training_is_bit_identical_with_evaluation_on_or_off(runs):
    a = load_checkpoint(os.path.join(runs['off'], 'checkpoint-last.pth'))
    b = load_checkpoint(os.path.join(runs['on'], 'checkpoint-last.pth'))
    assert a['step'] == b['step'] == 4
    for name, value in a['model'].items():
        assert torch.equal(value, b['model'][name]), name
    for key, state in a['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b['optimizer']['state'][key][name]))
    assert torch.equal(a['rng']['torch'], b['rng']['torch'])
    assert [r['loss'] for r in _records(runs['off'], 'train')] == [r['loss'] for r in _records(runs['on'], 'train')]


def test_training_curves_png_is_written_at_the_end(runs):
    png = os.path.join(runs['on'], 'training-curves.png')
    assert runs['result'].curves == png
    with Image.open(png) as image:
        assert image.format == 'PNG' and image.width > 500 and image.height > 400
        image.verify()
    assert not os.path.exists(os.path.join(runs['off'], 'training-curves.png'))  # evaluation off: no curves


def test_resumed_run_continues_the_eval_records(runs):
    out = runs['resumed']
    assert [r['step'] for r in _records(out, 'resume')] == [4]
    evals = _records(out, 'eval')
    # before the resume: steps 0, 2, 4; after it: every step by the clock, no second starting point
    assert [r['step'] for r in evals] == [0, 2, 4, 5, 6, 7, 8]
    assert all(r['images_seen'] == r['step'] * BATCH for r in evals)
    assert 'lbfgs_top1' not in evals[-1]
    curves = read_curves(os.path.join(out, 'log.jsonl'))
    assert curves.eval_images == [r['images_seen'] for r in evals]
    assert curves.eval_wall_s == sorted(curves.eval_wall_s)  # the resumed segment's clock continues
    assert curves.train_images == [BATCH * s for s in range(1, 9)]
    assert os.path.exists(os.path.join(out, 'training-curves.png'))


def test_splits_too_large_to_cache_are_streamed_with_the_same_scores(monkeypatch, fashion_mnist_train):
    cfg = parse_pretrain_args(['--eval-every', '1', '--eval-train-samples', '120', '--eval-test-samples', '60',
                               '--batch-size', '32', '--workers', '0'])
    torch.manual_seed(0)
    encoder = timm.create_model('randsac_vit_micro_patch4_32', num_classes=0).train()
    cached = OnlineEvaluator(cfg, torch.device('cpu'))
    monkeypatch.setattr(online_eval, 'CACHE_BYTES', 0)
    streamed = OnlineEvaluator(cfg, torch.device('cpu'))
    assert cached.bank.cached is not None and streamed.bank.cached is None
    rng = torch.get_rng_state()
    a, b = cached.evaluate(encoder), streamed.evaluate(encoder)
    assert a['knn_top1'] == b['knn_top1'] and 15 < a['knn_top1'] <= 100
    assert encoder.training and torch.equal(torch.get_rng_state(), rng)  # mode and global RNG restored


def test_eval_seed_draws_the_same_subsets_for_runs_of_other_seeds(fashion_mnist_train):
    def evaluator(*flags):
        cfg = parse_pretrain_args(['--eval-every', '1', '--eval-train-samples', '50', '--eval-test-samples', '40',
                                   '--workers', '0', *flags])
        return OnlineEvaluator(cfg, torch.device('cpu'))

    seed0, seed1 = evaluator('--seed', '0'), evaluator('--seed', '1')
    fixed = evaluator('--seed', '1', '--eval-seed', '0')
    for split in ('bank', 'queries'):
        a, b, c = (getattr(e, split).dataset.indices for e in (seed0, seed1, fixed))
        assert list(a) != list(b) and list(a) == list(c)


def test_read_curves_drops_replayed_steps_and_leaves_evaluation_time_out(tmp_path):
    log = tmp_path / 'run' / 'log.jsonl'
    log.parent.mkdir()
    records = [
        dict(event='start', step=0, effective_batch=10),
        dict(event='eval', step=0, images_seen=0, wall_time_s=1.0, knn_top1=20.0, eval_s=4.0),
        dict(event='train', step=2, loss=3.0, wall_time_s=7.0),  # 2 s of training after the 4 s evaluation
        dict(event='train', step=4, loss=2.0, wall_time_s=9.0),
        dict(event='train', step=6, loss=1.5, wall_time_s=11.0),  # replayed after the resume from step 5
        dict(event='resume', step=5, epoch=0, checkpoint='checkpoint-last.pth'),  # written before its start record
        dict(event='start', step=5, effective_batch=10),
        dict(event='train', step=6, loss=1.4, wall_time_s=3.0),
        dict(event='eval', step=6, images_seen=60, wall_time_s=3.5, knn_top1=30.0, eval_s=1.0),
        dict(event='train', step=8, loss=1.2, images_per_s=20.0),  # an older log's record: timed from images/s
    ]
    log.write_text(''.join(json.dumps(r) + '\n' for r in records))
    curves = read_curves(str(log))
    assert curves.label == 'run'
    assert curves.train_images == [20, 40, 60, 80] and curves.loss == [3.0, 2.0, 1.4, 1.2]
    # first segment: minus the 4 s evaluation; the second continues from the first one's 6 s at step 5 (between
    # 5 s at step 4 and 7 s at step 6), its evaluation left out; its last record: 2 steps x 10 images at 20 images/s
    assert curves.train_wall_s == [3.0, 5.0, 6.0 + 3.0, 6.0 + 3.0 + 20 / 20.0]
    assert curves.eval_images == [0, 60] and curves.eval_wall_s == [1.0, 9.5] and curves.knn_top1 == [20.0, 30.0]


def test_read_curves_cpu_clock_leaves_evaluation_out_and_continues_across_a_resume(tmp_path):
    log = tmp_path / 'run' / 'log.jsonl'
    log.parent.mkdir()
    records = [
        dict(event='start', step=0, effective_batch=10),
        dict(event='eval', step=0, images_seen=0, wall_time_s=1.0, cpu_time_s=2.0, knn_top1=20.0, eval_s=4.0,
             eval_cpu_s=7.0),
        dict(event='train', step=2, loss=3.0, wall_time_s=7.0, cpu_time_s=13.0),  # 13 - 7 of eval: 6 CPU-s
        dict(event='train', step=4, loss=2.0, wall_time_s=9.0, cpu_time_s=17.0),
        dict(event='resume', step=3, epoch=0, checkpoint='checkpoint-last.pth'),
        dict(event='start', step=3, effective_batch=10),
        dict(event='eval', step=3, images_seen=30, wall_time_s=0.5, cpu_time_s=1.0, knn_top1=25.0, eval_s=1.0,
             eval_cpu_s=3.0),
        dict(event='train', step=4, loss=1.9, wall_time_s=2.5, cpu_time_s=5.0),
    ]
    log.write_text(''.join(json.dumps(r) + '\n' for r in records))
    curves = read_curves(str(log))
    # step 3 lies halfway between 6 and 10 CPU-s of training: the resumed segment continues from 8
    assert curves.train_cpu_s == [6.0, 8.0 + 5.0 - 3.0]
    assert curves.eval_cpu_s == [2.0, 8.0 + 1.0]
    assert curves.train_wall_s == [3.0, 4.0 + 2.5 - 1.0]
    old = [dict(r, cpu_time_s=None) if r['event'] == 'train' else r for r in records[:4]]
    log.write_text(''.join(json.dumps(r) + '\n' for r in old))
    assert read_curves(str(log)).train_cpu_s == [None, None]  # a log without CPU times has no CPU axis


def test_curves_command_line_draws_several_runs_and_refuses_a_missing_log(runs, tmp_path, capsys):
    png = str(tmp_path / 'both.png')
    logs = [os.path.join(runs[name], 'log.jsonl') for name in ('off', 'resumed')]
    assert curves_main(logs + ['--out', png, '--labels', 'eval off', 'eval on']) == 0
    assert capsys.readouterr().out.strip() == png
    with Image.open(png) as image:
        assert image.format == 'PNG'
        image.verify()
    proc = subprocess.run([sys.executable, '-m', 'randsac_timm.train.curves', str(tmp_path / 'missing.jsonl'), '--out',
                           png], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f'python -m randsac_timm.train.curves: error: log {tmp_path / "missing.jsonl"} does not exist']


def _train_pretrain_main():
    spec = importlib.util.spec_from_file_location('train_pretrain', os.path.join(REPO, 'train_pretrain.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize('flags, needle', [
    (['--eval-every', '-1'], '--eval-every -1.0 is not accepted: expected a number >= 0'),
    (['--eval-every-minutes', 'nan'], '--eval-every-minutes nan is not accepted: expected a number >= 0'),
    (['--eval-train-samples', '0', '--eval-every', '1'], '--eval-train-samples 0 is not accepted'),
    (['--eval-test-samples', '-5', '--eval-every', '1'], '--eval-test-samples -5 is not accepted'),
    (['--eval-lbfgs'], '--eval-lbfgs is part of the online evaluation, which is off'),
])
def test_bad_eval_values_are_refused_in_one_line(flags, needle, tmp_path, capsys):
    out = tmp_path / 'run'
    assert _train_pretrain_main()(['--output-dir', str(out), '--no-progress'] + flags) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('train_pretrain.py: error: ') and needle in lines[0], lines
    assert not out.exists()  # refused before anything is written


@pytest.mark.slow
def test_ddp_with_evaluation_waits_for_rank_zero_and_trains_as_without_it(tmp_path):
    common = ['--max-train-samples', '256', '--batch-size', '16', '--workers', '0', '--no-progress', '--max-steps', '3',
              '--vis-every', '0', '--save-every', '0', '--eval-train-samples', '200', '--eval-test-samples', '100']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    outs = {}
    for name, extra in (('off', []), ('on', ['--eval-every', '0.125'])):  # 8 steps per epoch: every step
        outs[name] = str(tmp_path / name)
        proc = subprocess.run(
            [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--master-port', '29541',
             'train_pretrain.py', *common, *extra, '--output-dir', outs[name]],
            cwd=REPO, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r['step'] for r in _records(outs['on'], 'eval')] == [0, 1, 2, 3]  # rank 1 waited at each, no hang
    a = load_checkpoint(os.path.join(outs['off'], 'checkpoint-last.pth'))
    b = load_checkpoint(os.path.join(outs['on'], 'checkpoint-last.pth'))
    assert b['world_size'] == 2
    for name, value in a['model'].items():
        assert torch.equal(value, b['model'][name]), name
