"""train_pretrain.py end to end on real Fashion-MNIST: outputs, exact resume after SIGKILL, DDP, bad input."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import timm
import torch
from safetensors.torch import load_file

import randsac_timm  # noqa: F401
from randsac_timm.train import data as data_module
from randsac_timm.train.checkpoint import CheckpointError, load_checkpoint
from randsac_timm.train.config import (
    PretrainConfig,
    list_presets,
    load_yaml_config,
    parse_pretrain_args,
    resolve_pretrain_config,
    resolve_preset,
)
from randsac_timm.train.distributed import select_attention_backends
from randsac_timm.train.engine import NonFiniteLossError, train
from randsac_timm.train.task import PretrainTask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the default preset, shortened: a small seeded subset and batch so each step takes ~0.1 s
SHORT = ['--max-train-samples', '256', '--batch-size', '16', '--workers', '0', '--no-progress']


def _records(out_dir, event='train'):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [r for r in map(json.loads, f) if r['event'] == event]


def test_default_command_writes_checkpoint_log_picture_and_encoder(tmp_path):
    out = str(tmp_path / 'run')
    cfg = parse_pretrain_args(SHORT + ['--max-steps', '4', '--output-dir', out, '--save-every', '2',
                                       '--vis-every', '2', '--log-every', '2'])
    assert cfg.model == 'randsac_pretrain_vit_micro_patch4_32' and cfg.dataset == 'fashion_mnist'  # the preset
    result = train(cfg)

    state = torch.load(result.checkpoint, map_location='cpu', weights_only=True)  # plain dicts only
    assert state['step'] == 4 and state['format'] == 'randsac-timm/pretrain/v1'
    for key in ('model', 'optimizer', 'scheduler', 'rng', 'config', 'epoch', 'batch_in_epoch'):
        assert key in state
    assert state['config']['max_train_samples'] == 256 and state['model_kwargs']['segments'] == 'blob:11-5'
    assert os.path.exists(os.path.join(out, 'checkpoint-2.pth'))

    records = _records(out)
    assert [r['step'] for r in records] == [2, 4]
    for r in records:
        assert {'step', 'epoch', 'loss', 'lr', 'images_per_s'} <= set(r) and r['images_per_s'] > 0
    assert any(p.endswith('reconstruction-step0000002.png') for p in result.pictures)
    assert os.path.getsize(os.path.join(out, 'reconstruction-final.png')) > 0

    weights = load_file(result.encoder)
    assert not any(k.startswith(('encoder.', 'decoder.')) for k in weights)
    encoder = timm.create_model('randsac_vit_micro_patch4_32', num_classes=0)
    encoder.load_state_dict(weights, strict=True)
    wrapper = timm.create_model(state['model_name'], **state['model_kwargs'])
    wrapper.load_state_dict(state['model'])
    torch.testing.assert_close(encoder.blocks[0].mlp.fc1.weight, wrapper.encoder.blocks[0].mlp.fc1.weight)


def test_epoch_records_and_lr_follow_warmup_then_cosine(tmp_path):
    out = str(tmp_path / 'run')
    # 128 images / batch 16 = 8 steps per epoch, 2 epochs, warm-up 0.5 epoch = 4 steps
    cfg = parse_pretrain_args(SHORT + ['--max-train-samples', '128', '--epochs', '2', '--warmup-epochs', '0.5',
                                       '--blr', '0.0256', '--min-lr', '0', '--log-every', '1',
                                       '--output-dir', out, '--vis-every', '0'])
    train(cfg)
    lrs = [r['lr'] for r in _records(out)]
    peak = 0.0256 * 16 / 256
    assert len(lrs) == 16
    torch.testing.assert_close(torch.tensor(lrs[:5]), torch.tensor([0, 0.25, 0.5, 0.75, 1.0]) * peak)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # cosine decay after warm-up
    # the lr of the last update is the last cosine point before min_lr (0): one of the 12 post-warm-up updates
    torch.testing.assert_close(torch.tensor(lrs[-1]), torch.tensor(peak * (1 + math.cos(math.pi * 11 / 12)) / 2))
    epochs = _records(out, 'epoch')
    assert [r['epoch'] for r in epochs] == [0, 1] and all(r['loss'] > 0 for r in epochs)


def test_fractional_epochs_end_mid_epoch_with_the_whole_schedule_and_a_rerun_keeps_the_loss(tmp_path):
    out = str(tmp_path / 'run')
    # 8 steps per epoch, 1.5 epochs = 12 steps: the cosine reaches its end at step 12, inside the second epoch
    argv = SHORT + ['--max-train-samples', '128', '--epochs', '1.5', '--warmup-epochs', '0.5', '--blr', '0.0256',
                    '--min-lr', '0', '--log-every', '1', '--output-dir', out, '--vis-every', '0']
    result = train(parse_pretrain_args(argv))
    lrs = [r['lr'] for r in _records(out)]
    peak = 0.0256 * 16 / 256
    assert result.step == 12 and len(lrs) == 12
    torch.testing.assert_close(torch.tensor(lrs[-1]), torch.tensor(peak * (1 + math.cos(math.pi * 7 / 8)) / 2))
    assert [r['epoch'] for r in _records(out, 'epoch')] == [0]  # the second epoch did not run to its end
    # the same command again resumes at the end: no step runs, and the loss reported is the one reached, not NaN
    again = train(parse_pretrain_args(argv))
    assert again.step == 12 and len(_records(out)) == 12
    assert again.last_loss == result.last_loss == _records(out)[-1]['loss']


def test_each_start_record_names_the_thread_count_and_cpu_kernels_it_ran_at(tmp_path):
    # float results of a CPU run depend on both (benchmarks/rerun_rounding.py): a run resumed at another thread
    # count says so in its own log, not only in a note
    out = str(tmp_path / 'run')
    argv = SHORT + ['--output-dir', out, '--vis-every', '0', '--save-every', '2']
    threads = torch.get_num_threads()
    try:
        for n, steps in ((1, 2), (2, 4)):
            torch.set_num_threads(n)
            train(parse_pretrain_args(argv + ['--max-steps', str(steps)]))
    finally:
        torch.set_num_threads(threads)
    starts = _records(out, 'start')
    assert [(r['step'], r['cpu_threads']) for r in starts] == [(0, 1), (2, 2)]
    assert all(r['cpu_capability'] == torch.backends.cpu.get_cpu_capability() for r in starts)


def _command(out_dir, steps, model=()):
    return [sys.executable, 'train_pretrain.py', *SHORT, *model, '--max-steps', str(steps), '--log-every', '1',
            '--save-every', '3', '--vis-every', '0', '--output-dir', out_dir]


# the default RandSAC wrapper, and MAE as the race ran it (its random masks must replay after a resume too)
@pytest.mark.parametrize('model', [(), ('--model', 'mae_pretrain_vit_micro_patch4_28', '--img-size', '28',
                                        '--mask-ratio', '0.85')], ids=['randsac', 'mae'])
def test_sigkill_then_same_command_resumes_with_identical_losses(tmp_path, model):
    steps = 12
    ref_dir, run_dir = str(tmp_path / 'ref'), str(tmp_path / 'run')
    subprocess.run(_command(ref_dir, steps, model), cwd=REPO, check=True, capture_output=True)
    reference = {r['step']: r['loss'] for r in _records(ref_dir)}
    assert sorted(reference) == list(range(1, steps + 1))

    proc = subprocess.Popen(_command(run_dir, steps, model), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = os.path.join(run_dir, 'log.jsonl')
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.exists(log) and any(r['step'] >= 7 for r in _records(run_dir)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, 'the run finished before it could be killed'
    killed_at = max(r['step'] for r in _records(run_dir))
    assert killed_at < steps

    subprocess.run(_command(run_dir, steps, model), cwd=REPO, check=True, capture_output=True)
    resumed = _records(run_dir, 'resume')
    assert len(resumed) == 1 and 0 < resumed[0]['step'] <= killed_at
    # every logged loss (before the kill, and replayed after the resume) equals the uninterrupted run
    for record in _records(run_dir):
        assert record['loss'] == reference[record['step']], record['step']
    assert max(r['step'] for r in _records(run_dir)) == steps


# train_pretrain.py, killed (SIGKILL) inside the second write of checkpoint-last.pth: after the new checkpoint is
# complete in its temporary file, before the rename that would replace the previous one
_KILL_BEFORE_SECOND_RENAME = """
import os, runpy, signal, sys
real_replace, renames = os.replace, []
def replace(src, dst, *args, **kwargs):
    if os.path.basename(dst) == 'checkpoint-last.pth':
        renames.append(dst)
        if len(renames) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = ['train_pretrain.py'] + sys.argv[1:]
runpy.run_path('train_pretrain.py', run_name='__main__')
"""


def test_sigkill_between_checkpoint_write_and_rename_keeps_the_last_one_and_resumes(tmp_path):
    run_dir = str(tmp_path / 'run')
    proc = subprocess.run([sys.executable, '-c', _KILL_BEFORE_SECOND_RENAME, *_command(run_dir, 8)[2:]], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    before_kill = {r['step']: r['loss'] for r in _records(run_dir)}
    assert max(before_kill) == 6  # killed while saving step 6 (--save-every 3)
    leftovers = [f for f in os.listdir(run_dir) if f.startswith('.checkpoint-last.pth.tmp-')]
    assert len(leftovers) == 1  # the complete, never renamed step-6 checkpoint
    assert load_checkpoint(os.path.join(run_dir, 'checkpoint-last.pth'))['step'] == 3  # intact, the previous one

    subprocess.run(_command(run_dir, 8), cwd=REPO, check=True, capture_output=True)
    assert [r['step'] for r in _records(run_dir, 'resume')] == [3]
    resumed = _records(run_dir)[len(before_kill):]
    assert [r['step'] for r in resumed] == [4, 5, 6, 7, 8]
    assert all(r['loss'] == before_kill[r['step']] for r in resumed if r['step'] in before_kill)
    assert load_checkpoint(os.path.join(run_dir, 'checkpoint-last.pth'))['step'] == 8
    assert not [f for f in os.listdir(run_dir) if '.tmp-' in f]  # the next write removed the dead run's temp file


def test_two_process_gloo_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    common = ['--max-train-samples', '256', '--workers', '0', '--no-progress', '--max-steps', '3',
              '--segments', 'raster', '--vis-every', '0', '--save-every', '0', '--blr', '0.01']
    single, ddp = str(tmp_path / 'single'), str(tmp_path / 'ddp')
    subprocess.run([sys.executable, 'train_pretrain.py', *common, '--batch-size', '16', '--output-dir', single],
                   cwd=REPO, check=True, capture_output=True)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--master-port', '29533',
         'train_pretrain.py', *common, '--batch-size', '8', '--output-dir', ddp],
        cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(os.path.join(single, 'checkpoint-last.pth'))
    b = load_checkpoint(os.path.join(ddp, 'checkpoint-last.pth'))
    assert b['world_size'] == 2 and a['world_size'] == 1 and a['step'] == b['step'] == 3
    start = timm.create_model(a['model_name'], **a['model_kwargs']).state_dict()
    moved = 0
    for name, value in a['model'].items():
        ddp_value = b['model'][name]
        moved += int(value.dim() > 1 and not torch.equal(value, start[name]))
        # A key bias shifts every attention logit of a query equally, so its true gradient is 0 and what
        # remains is rounding noise, which Adam scales up to +-lr with an arbitrary sign: compare the rest.
        if name.endswith('qkv.bias'):
            dim = value.shape[0] // 3
            keep = torch.cat([torch.arange(dim), torch.arange(2 * dim, 3 * dim)])
            value, ddp_value = value[keep], ddp_value[keep]
        elif name.endswith('kv.bias'):
            value, ddp_value = value[value.shape[0] // 2:], ddp_value[value.shape[0] // 2:]
        torch.testing.assert_close(ddp_value, value, rtol=1e-4, atol=1e-5, msg=name)
    assert moved > 10  # the weights really trained
    assert a['optimizer']['param_groups'][0]['lr'] == b['optimizer']['param_groups'][0]['lr']


def test_corrupt_checkpoint_raises_and_is_not_overwritten(tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    last = out / 'checkpoint-last.pth'
    last.write_bytes(b'PK\x03\x04 truncated zip')
    cfg = parse_pretrain_args(SHORT + ['--max-steps', '2', '--output-dir', str(out)])
    with pytest.raises(CheckpointError, match='corrupt or truncated') as err:
        train(cfg)
    assert str(last) in str(err.value)
    assert last.read_bytes() == b'PK\x03\x04 truncated zip'


def test_truncated_real_checkpoint_is_reported(tmp_path):
    out = str(tmp_path / 'run')
    train(parse_pretrain_args(SHORT + ['--max-steps', '1', '--output-dir', out, '--vis-every', '0']))
    last = os.path.join(out, 'checkpoint-last.pth')
    blob = open(last, 'rb').read()
    with open(last, 'wb') as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        load_checkpoint(last)


def test_missing_dataset_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, 'DEFAULT_FASHION_MNIST_DIRS', ())
    cfg = parse_pretrain_args(SHORT + ['--data-dir', str(tmp_path / 'nowhere'), '--output-dir', str(tmp_path / 'o')])
    with pytest.raises(FileNotFoundError, match='apt-get install -y dataset-fashion-mnist'):
        train(cfg)


def test_nan_loss_is_skipped_counted_and_stops_after_a_run(tmp_path, monkeypatch):
    original = PretrainTask.forward
    calls = {'n': 0}
    poisoned = set()

    def forward(self, input, target=None):
        result = original(self, input, target)
        calls['n'] += 1
        if calls['n'] in poisoned:
            result['loss'] = result['loss'] * float('nan')
        return result

    monkeypatch.setattr(PretrainTask, 'forward', forward)
    out = str(tmp_path / 'run')
    poisoned.update({2, 3})
    result = train(parse_pretrain_args(SHORT + ['--max-steps', '5', '--log-every', '1', '--output-dir', out,
                                                '--vis-every', '0', '--save-every', '1']))
    assert result.nonfinite_skipped == 2 and result.step == 5
    assert [r['step'] for r in _records(out, 'nonfinite')] == [1, 2]
    assert all(r['loss'] == r['loss'] for r in _records(out))  # logged losses stay finite

    # from now on every loss is NaN: it stops after --max-nonfinite in a row and keeps the last good checkpoint
    good = load_checkpoint(os.path.join(out, 'checkpoint-last.pth'))
    poisoned.update(range(calls['n'] + 1, calls['n'] + 100))
    with pytest.raises(NonFiniteLossError, match='non-finite losses or gradients in a row'):
        train(parse_pretrain_args(SHORT + ['--max-steps', '20', '--output-dir', out, '--max-nonfinite', '3',
                                           '--vis-every', '0', '--save-every', '0']))
    kept = load_checkpoint(os.path.join(out, 'checkpoint-last.pth'))
    assert kept['step'] == good['step'] == 5
    assert all(torch.equal(kept['model'][k], v) for k, v in good['model'].items())


def test_cli_overrides_yaml_and_accepts_mae_spellings(tmp_path):
    preset = tmp_path / 'p.yaml'
    preset.write_text('model: randsac_pretrain_vit_tiny_patch4_32\nbatch_size: 64\nblr: 0.002\nnorm_pix_loss: true\n')
    cfg = parse_pretrain_args(['--config', str(preset), '--batch_size', '32', '--warmup_epochs', '3',
                               '--data_path', '/x', '--segments', 'square:16-4', '--betas', '0.9', '0.999'])
    assert (cfg.model, cfg.batch_size, cfg.blr, cfg.norm_pix_loss) == ('randsac_pretrain_vit_tiny_patch4_32', 32,
                                                                       0.002, True)
    assert (cfg.warmup_epochs, cfg.data_dir, cfg.segments, cfg.betas) == (3.0, '/x', 'square:16-4', (0.9, 0.999))
    bad = tmp_path / 'bad.yaml'
    bad.write_text('batchsize: 3\n')
    with pytest.raises(ValueError, match="unknown option 'batchsize'"):
        parse_pretrain_args(['--config', str(bad)])


@pytest.mark.parametrize('preset', list_presets())
def test_every_preset_loads_and_names_a_registered_model(preset):
    values = load_yaml_config(resolve_preset(preset), PretrainConfig)
    cfg = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    cfg = resolve_pretrain_config(cfg)
    assert cfg.model in timm.list_models('randsac_pretrain*')
    model = timm.create_model(cfg.model, img_size=cfg.img_size, **({'segments': cfg.segments} if cfg.segments else {}))
    model.segments.validate(model.grid_size)
    assert cfg.img_size == timm.create_model(cfg.model).encoder.patch_embed.img_size[0]  # presets keep the model's size


@pytest.mark.parametrize('model, img_size, expected', [
    ('randsac_pretrain_vit_micro_patch4_32', None, 32), ('randsac_pretrain_vit_micro_patch4_28', None, 28),
    ('mae_pretrain_vit_micro_patch4_28', None, 28), ('randsac_pretrain_vit_micro_patch4_28', 32, 32),
])
def test_default_img_size_is_the_models_own(model, img_size, expected):
    # the default preset names _32; picking the _28 model must not leave a 32x32 input behind (nor override a flag)
    argv = ['--model', model] + ([] if img_size is None else ['--img-size', str(img_size)])
    assert resolve_pretrain_config(parse_pretrain_args(argv)).img_size == expected


def test_cudnn_attention_stays_off_for_masked_cuda_training_unless_asked():
    # the flag is global process state; the CPU never touches it (no GPU needed to check the switch itself)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        assert select_attention_backends(torch.device('cuda'), cudnn_attention=False) is False
        assert select_attention_backends(torch.device('cuda'), cudnn_attention=True) is True
        torch.backends.cuda.enable_cudnn_sdp(False)
        assert select_attention_backends(torch.device('cpu'), cudnn_attention=True) is False
        assert parse_pretrain_args(['--cudnn-attention']).cudnn_attention
        assert not parse_pretrain_args([]).cudnn_attention
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
