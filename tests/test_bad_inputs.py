"""Bad input as a new user types it (docs/bad_inputs.md): one line naming the value and what is accepted,
exit status 2, no traceback, and an existing checkpoint left as it was.

Most cases call the root scripts' `main` in this process (a python start costs seconds); two run the real
command line, so what `sys.exit(main())` prints is checked too.
"""
import importlib.util
import os
import stat
import subprocess
import sys

import pytest

from randsac_timm.train.config import parse_pretrain_args
from randsac_timm.train.engine import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_benchmark():
    # docs/bad_inputs.md's generator: its run settings and helpers serve the tests too, so the two cannot drift apart
    spec = importlib.util.spec_from_file_location('bad_inputs', os.path.join(REPO, 'benchmarks', 'bad_inputs.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_bench = _load_benchmark()
SHORT = _bench.SHORT
_script = _bench._script  # a root script (train_pretrain, eval_linear, ...) loaded as a module
_fingerprint = _bench._fingerprint  # bytes and mtime of every file a run left: nothing may be rewritten


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A finished one-step run (checkpoint-last.pth, encoder.safetensors) and truncated copies of both."""
    root = tmp_path_factory.mktemp('bad_inputs')
    out = str(root / 'run')
    train(parse_pretrain_args(SHORT + ['--output-dir', out]))
    for name, target in (('checkpoint-last.pth', 'truncated.pth'), ('encoder.safetensors', 'truncated.safetensors')):
        with open(os.path.join(out, name), 'rb') as f:
            blob = f.read()
        with open(root / target, 'wb') as f:
            f.write(blob[: len(blob) // 2])
    (root / 'misspelt.yaml').write_text('batchsize: 3\n')
    (root / 'list.yaml').write_text('- batch_size: 3\n')
    (root / 'string.yaml').write_text('blr: 1e-4\n')  # YAML 1.1 reads 1e-4 as a string
    return root


def _check_one_line(err, prog, *needles):
    lines = err.strip().splitlines()
    assert 'Traceback' not in err, err
    assert len(lines) == 1 and lines[0].startswith(f'{prog}: error: '), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# (extra flags, text the error line must contain); {root} is the fixture's folder
PRETRAIN_CASES = {
    'segments blob:0': (['--segments', 'blob:0'], ["'blob:0'", 'accepted forms']),
    'segments square:7': (['--segments', 'square:7'], ["'square:7'", 'valid square counts']),
    'segments nonsense': (['--segments', 'nonsense'], ["'nonsense'", 'accepted forms']),
    'unknown model': (['--model', 'vit_nope'], ["'vit_nope'", 'randsac_pretrain_vit_micro_patch4_32']),
    'unknown config': (['--config', 'no_such_preset'], ["'no_such_preset'", 'fmnist_micro_cpu']),
    'misspelt yaml key': (['--config', '{root}/misspelt.yaml'], ["'batchsize'", 'batch_size']),
    'yaml not a mapping': (['--config', '{root}/list.yaml'], ['list.yaml', 'expected a mapping']),
    'yaml number read as a string': (['--config', '{root}/string.yaml'], ["--blr '1e-4'", 'a number > 0']),
    'batch size 0': (['--batch-size', '0'], ['--batch-size 0', '>= 1']),
    'epochs -1': (['--epochs', '-1'], ['--epochs -1', '> 0']),
    'blr nan': (['--blr', 'nan'], ['--blr nan', '> 0']),
    'img size 30 patch 4': (['--img-size', '30'], ['30', 'multiple of the patch size']),
    'missing image folder': (['--dataset', 'imagefolder', '--data-dir', '{root}/no_images'], ['no_images']),
    # the installed Debian copy exists on this machine: a mistyped folder must still stop the run, not fall back
    'mistyped fashion-mnist folder': (['--data-dir', '{root}/no_fmnist'], ['no_fmnist', 'drop --data-dir']),
    'truncated --resume': (['--resume', '{root}/truncated.pth'], ['truncated.pth', 'corrupt or truncated']),
}


@pytest.mark.parametrize('case', sorted(PRETRAIN_CASES))
def test_train_pretrain_refuses_bad_input_in_one_line_and_keeps_the_checkpoint(run, case, capsys):
    flags, needles = PRETRAIN_CASES[case]
    out = str(run / 'run')
    before = _fingerprint(out)
    flags = [f.format(root=run) for f in flags]
    code = _script('train_pretrain').main(SHORT + ['--output-dir', out] + flags)
    assert code == 2
    _check_one_line(capsys.readouterr().err, 'train_pretrain.py', *needles)
    assert _fingerprint(out) == before


@pytest.mark.parametrize('source', ['truncated.pth', 'truncated.safetensors', 'missing.pth'])
def test_eval_linear_refuses_an_unreadable_checkpoint_in_one_line(run, source, capsys):
    code = _script('eval_linear').main(['--checkpoint', str(run / source), '--fast', '--output-dir',
                                        str(run / 'linear')])
    assert code == 2
    _check_one_line(capsys.readouterr().err, 'eval_linear.py', source)
    assert not (run / 'linear' / 'results.json').exists()


def test_the_command_line_itself_prints_one_line_and_exits_2(run):
    """The real entry points (`sys.exit(main())`), with nothing in-process to soften what a user sees."""
    out = str(run / 'run')
    before = _fingerprint(out)
    pretrain = subprocess.run([sys.executable, 'train_pretrain.py', *SHORT, '--output-dir', out, '--epochs', '-1'],
                              cwd=REPO, capture_output=True, text=True)
    assert pretrain.returncode == 2
    _check_one_line(pretrain.stderr, 'train_pretrain.py', '--epochs -1')
    linear = subprocess.run([sys.executable, 'eval_linear.py', '--checkpoint', str(run / 'truncated.pth'), '--fast'],
                            cwd=REPO, capture_output=True, text=True)
    assert linear.returncode == 2
    _check_one_line(linear.stderr, 'eval_linear.py', 'truncated.pth', 'corrupt or truncated')
    assert _fingerprint(out) == before


def test_outputs_get_the_umask_mode_not_the_temp_files(run):
    # safetensors creates its file 0600; an exported encoder must stay readable by other users / container uids
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ('checkpoint-last.pth', 'encoder.safetensors', 'log.jsonl'):
        assert stat.S_IMODE(os.stat(run / 'run' / name).st_mode) == 0o666 & ~umask, name
