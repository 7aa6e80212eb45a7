import json

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from randsac_timm.eval.config import parse_finetune_args
from randsac_timm.eval.finetune import build_finetune_transforms, build_optimizer_and_scheduler, run_finetune
from randsac_timm.eval.results import RESULT_KEYS
from randsac_timm.train.checkpoint import export_encoder

NAME = 'randsac_vit_micro_patch4_32'


def test_finetune_transforms_keep_one_channel_and_fashion_mnist_stats(fashion_mnist_train):
    train_tf, eval_tf = build_finetune_transforms('fashion_mnist', 32)
    assert 'RandAugment' in repr(train_tf) and 'PadTo' in repr(train_tf) and '0.2860' in repr(train_tf)
    torch.manual_seed(0)
    for i in range(64):  # many RandAugment draws on real 'L' images (fills, rotations, posterize, ...)
        image = Image.fromarray(fashion_mnist_train.data[i].numpy())
        assert train_tf(image).shape == (1, 32, 32)
    posterize = next(op for op in train_tf.transforms[3].ops if op.name == 'PosterizeIncreasing')
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 10, 0  # bits 0: Pillow >= 12 would raise
    assert posterize(Image.fromarray(fashion_mnist_train.data[0].numpy())).getextrema() == (0, 0)
    x = eval_tf(Image.fromarray(fashion_mnist_train.data[0].numpy()))
    assert x.shape == (1, 32, 32)
    torch.testing.assert_close(x[0, 0, 0], torch.tensor((0.0 - 0.2860) / 0.3530))  # zero padding, normalised


def test_layer_decay_groups_cover_every_parameter_once_and_the_scheduler_applies_lr_scale():
    model = timm.create_model(NAME, num_classes=10)
    depth = len(model.blocks)
    optimizer, scheduler = build_optimizer_and_scheduler(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999),
                                                         layer_decay=0.65, total_steps=100, warmup_steps=10)
    ids = [id(p) for g in optimizer.param_groups for p in g['params']]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group['params']:
            name = names[id(p)]
            # timm: stem = layer 0, blocks.i = layer i + 1, the rest (norm, head) = layer depth + 1
            layer = 0 if name.startswith('patch_embed') else int(name.split('.')[1]) + 1 \
                if name.startswith('blocks.') else depth + 1
            assert group['lr_scale'] == pytest.approx(0.65 ** (depth + 1 - layer)), name
            assert group['weight_decay'] == (0.0 if p.ndim <= 1 else 0.05), name
    scheduler.step_update(50)  # past warm-up
    lrs = {g['lr'] / g['lr_scale'] for g in optimizer.param_groups}
    assert len({round(v, 12) for v in lrs}) == 1 and 0 < lrs.pop() < 1e-3
    head = next(g for g in optimizer.param_groups if any(names[id(p)] == 'head.weight' for p in g['params']))
    stem = next(g for g in optimizer.param_groups if any(names[id(p)].startswith('patch_embed') for p in g['params']))
    assert stem['lr'] == pytest.approx(head['lr'] * 0.65 ** (depth + 1))


def test_a_few_finetuning_steps_change_the_encoder_and_write_results(tmp_path, capsys):
    torch.manual_seed(7)
    encoder = timm.create_model(NAME, num_classes=0)
    path = str(tmp_path / 'encoder.safetensors')
    export_encoder(encoder, path, NAME, dict(img_size=32, in_chans=1))
    out = tmp_path / 'ft'
    cfg = parse_finetune_args(['--checkpoint', path, '--max-train-samples', '64', '--max-eval-samples', '64',
                               '--batch-size', '16', '--max-steps', '3', '--epochs', '2', '--warmup-epochs', '0',
                               '--workers', '0', '--no-progress', '--model-ema', '--output-dir', str(out)])
    results = run_finetune(cfg)
    on_disk = json.loads((out / 'results.json').read_text())
    assert all(k in on_disk for k in RESULT_KEYS) and 0.0 <= on_disk['top1'] <= 100.0
    assert on_disk['hyperparameters']['layer_decay'] == 0.65 and on_disk['hyperparameters']['steps_run'] == 3
    assert on_disk['encoder']['sha256'] and on_disk['top1_ema'] is not None
    tuned = load_file(str(out / 'model.safetensors'))
    before = encoder.state_dict()
    for key in ('patch_embed.proj.weight', 'blocks.0.attn.qkv.weight', 'blocks.5.mlp.fc2.weight'):
        assert not torch.equal(tuned[key], before[key]), key
    assert tuned['head.weight'].shape == (10, 128)
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith('finetune ')]
    assert len(line) == 1 and f'top1 {results["top1"]:.2f}' in line[0]
