"""The rows of docs/bad_inputs.md: each bad input run through the root scripts, with what the user sees.

    python benchmarks/bad_inputs.py            # prints a markdown table (about a minute on 2 CPU cores)

A one-step run in a temporary folder gives a real checkpoint to point the commands at (`RUN/`); each command must
exit non-zero and leave that checkpoint's bytes and mtime as they were (the last column).
"""
import contextlib
import importlib.util
import io
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ['--max-train-samples', '64', '--batch-size', '16', '--workers', '0', '--no-progress', '--max-steps', '1',
         '--vis-every', '0']

# (what, script, arguments as typed after the script name); RUN is the finished run's folder, TMP its parent
CASES = [
    ('segment count 0', 'train_pretrain', ['--segments', 'blob:0']),
    ('square count that tiles no grid', 'train_pretrain', ['--segments', 'square:7']),
    ('unknown segment strategy', 'train_pretrain', ['--segments', 'nonsense']),
    ('unknown model', 'train_pretrain', ['--model', 'vit_nope']),
    ('unknown preset', 'train_pretrain', ['--config', 'no_such_preset']),
    ('YAML preset with a misspelt key', 'train_pretrain', ['--config', 'TMP/misspelt.yaml']),
    ('YAML preset that is not a mapping', 'train_pretrain', ['--config', 'TMP/list.yaml']),
    ('YAML number read as a string (`blr: 1e-4`)', 'train_pretrain', ['--config', 'TMP/string.yaml']),
    ('negative online-evaluation interval', 'train_pretrain', ['--eval-every', '-1']),
    ('truncated checkpoint for --resume', 'train_pretrain', ['--resume', 'TMP/truncated.pth']),
    ('missing image folder', 'train_pretrain', ['--dataset', 'imagefolder', '--data-dir', 'TMP/no_images']),
    ('mistyped Fashion-MNIST folder', 'train_pretrain', ['--data-dir', 'TMP/no_fmnist']),
    ('batch size 0', 'train_pretrain', ['--batch-size', '0']),
    ('negative epochs', 'train_pretrain', ['--epochs', '-1']),
    ('NaN learning rate', 'train_pretrain', ['--blr', 'nan']),
    ('image size not a multiple of the patch (4)', 'train_pretrain', ['--img-size', '30']),
    ('not a number', 'train_pretrain', ['--batch-size', 'abc']),
    ('truncated checkpoint', 'eval_linear', ['--checkpoint', 'TMP/truncated.pth', '--fast']),
    ('truncated encoder.safetensors', 'eval_linear', ['--checkpoint', 'TMP/truncated.safetensors', '--fast']),
    ('missing checkpoint', 'eval_linear', ['--checkpoint', 'TMP/missing.pth', '--fast']),
]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fingerprint(folder):
    return {n: (open(os.path.join(folder, n), 'rb').read(), os.stat(os.path.join(folder, n)).st_mtime_ns)
            for n in sorted(os.listdir(folder))}


def main() -> None:
    sys.path.insert(0, REPO)
    from randsac_timm.train.config import parse_pretrain_args
    from randsac_timm.train.engine import train

    tmp = tempfile.mkdtemp(prefix='bad_inputs-')
    run = os.path.join(tmp, 'run')
    with contextlib.redirect_stdout(io.StringIO()):
        train(parse_pretrain_args(SHORT + ['--output-dir', run]))
    for name, target in (('checkpoint-last.pth', 'truncated.pth'), ('encoder.safetensors', 'truncated.safetensors')):
        blob = open(os.path.join(run, name), 'rb').read()
        open(os.path.join(tmp, target), 'wb').write(blob[: len(blob) // 2])
    open(os.path.join(tmp, 'misspelt.yaml'), 'w').write('batchsize: 3\n')
    open(os.path.join(tmp, 'list.yaml'), 'w').write('- batch_size: 3\n')
    open(os.path.join(tmp, 'string.yaml'), 'w').write('blr: 1e-4\n')

    print('| input | command | exit | what the user sees (stderr) | checkpoint kept |')
    print('|---|---|---|---|---|')
    for what, script, args in CASES:
        argv = [a.replace('TMP/', tmp + '/') for a in args]
        extra = SHORT + ['--output-dir', run] if script == 'train_pretrain' else ['--output-dir', tmp + '/linear']
        before = _fingerprint(run)
        err = io.StringIO()
        sys.argv[0] = f'{script}.py'  # argparse names the program from it
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = _script(script).main(extra + argv)
            except SystemExit as e:  # argparse's own errors
                code = e.code
        text = err.getvalue().strip().replace(tmp + '/', '')
        shown = text.splitlines()[-1] if text else '(nothing)'
        if 'Traceback' in text:
            shown = 'TRACEBACK: ' + shown
        kept = 'yes' if _fingerprint(run) == before else 'NO'
        command = f'`{script}.py {" ".join(args).replace("TMP/", "")}`'
        print(f'| {what} | {command} | {code} | {shown.replace("|", "/")} | {kept} |')


if __name__ == '__main__':
    main()
