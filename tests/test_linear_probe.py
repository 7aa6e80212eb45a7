import json

import pytest
import torch
import torch.nn.functional as F

from randsac_timm.config import parse_pretrain_args
from randsac_timm.eval_config import LinearProbeConfig, parse_linear_args
from randsac_timm.linear_probe import (
    cached_batches,
    evaluate_head,
    knn_scores,
    run_linear_probe,
    topk_accuracy,
    train_linear_heads,
)
from randsac_timm.results import RESULT_KEYS

ENCODER = 'randsac_vit_micro_patch4_32'
# short-schedule settings: LARS moves weights by ~lr * trust per step, so few steps need a larger lr
QUICK = ['--fast', '--max-train-samples', '1000', '--max-eval-samples', '500', '--epochs', '30', '--warmup-epochs',
         '2', '--batch-size', '100', '--lr', '30', '--workers', '0', '--feature-batch-size', '500', '--no-progress']


def _pixels(ds, n=None):
    """(N, 1024) normalised, 28 -> 32 padded pixels, as the eval transform makes them."""
    x = ds.data[:n].float() / 255
    return ((F.pad(x, (2, 2, 2, 2)) - 0.2860) / 0.3530).flatten(1), ds.targets[:n]


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """A briefly pretrained encoder: 3 real RandSAC steps on Fashion-MNIST."""
    from randsac_timm.engine import train

    out = tmp_path_factory.mktemp('pretrain')
    cfg = parse_pretrain_args(['--max-steps', '3', '--max-train-samples', '256', '--batch-size', '16', '--workers',
                               '0', '--no-progress', '--vis-every', '0', '--output-dir', str(out)])
    return train(cfg)


def _check_results(results, out_dir):
    on_disk = json.loads((out_dir / 'results.json').read_text())
    assert all(k in on_disk for k in RESULT_KEYS)
    for key in RESULT_KEYS:  # sane: well above the 10% of chance, and percentages
        assert 25.0 < on_disk[key] <= 100.0, (key, on_disk[key])
    assert on_disk['hyperparameters']['trust_coeff'] == 0.001 and on_disk['protocol']['mode'] == 'fast'
    assert on_disk['dataset']['eval_split'].startswith('val') and on_disk['dataset']['pad_to'] == 32
    assert on_disk['wall_time_s'] > 0 and on_disk['hardware']['cpu_threads'] >= 1
    return on_disk


def test_random_init_probe_and_pixel_baselines_write_results(tmp_path, capsys):
    results = run_linear_probe(parse_linear_args(['--model', ENCODER, '--output-dir', str(tmp_path), *QUICK]))
    on_disk = _check_results(results, tmp_path)
    assert on_disk['encoder']['kind'] == 'random_init' and on_disk['encoder']['sha256'] is None
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith('linear probe (fast)')]
    assert len(line) == 1 and 'pixels linear' in line[0] and f'{results["top1"]:.2f}' in line[0]


def test_briefly_pretrained_encoder_probe_is_sane_and_identifies_the_checkpoint(pretrained, tmp_path):
    cfg = parse_linear_args(['--checkpoint', pretrained.checkpoint, '--output-dir', str(tmp_path), *QUICK])
    on_disk = _check_results(run_linear_probe(cfg), tmp_path)
    assert on_disk['encoder']['kind'] == 'pretrain_checkpoint'
    assert on_disk['encoder']['path'] == pretrained.checkpoint and len(on_disk['encoder']['sha256']) == 64


def test_paper_mode_is_bit_reproducible(pretrained, tmp_path):
    """Augmented crops through the frozen encoder each epoch: same seed, same numbers."""
    args = ['--checkpoint', pretrained.encoder, '--max-train-samples', '128', '--max-eval-samples', '128',
            '--epochs', '2', '--warmup-epochs', '1', '--batch-size', '64', '--workers', '0', '--no-knn',
            '--no-progress']
    a = run_linear_probe(parse_linear_args([*args, '--output-dir', str(tmp_path / 'a')]))
    b = run_linear_probe(parse_linear_args([*args, '--output-dir', str(tmp_path / 'b')]))
    assert a['protocol']['mode'] == 'paper' and a['encoder']['kind'] == 'encoder_safetensors'
    assert (a['top1'], a['pixel_linear_top1']) == (b['top1'], b['pixel_linear_top1'])
    assert a['knn_top1'] is None  # --no-knn: key kept, value None


def test_head_training_is_bit_identical_with_the_same_seed(fashion_mnist_train, fashion_mnist_test):
    x, y = _pixels(fashion_mnist_train, 2000)
    xt, yt = _pixels(fashion_mnist_test, 1000)

    def train(seed):
        batches, steps = cached_batches({'p': x}, y, 200, seed)
        return train_linear_heads(batches, steps, {'p': 1024}, 10, epochs=5, warmup_epochs=1, lr=30.0, seed=seed)['p']

    h1, h2, h3 = train(0), train(0), train(1)
    assert all(torch.equal(a, b) for a, b in zip(h1.state_dict().values(), h2.state_dict().values()))
    assert not torch.equal(h1.fc.weight, h3.fc.weight)
    assert evaluate_head(h1, xt, yt)[1] > 60.0


def test_weighted_knn_votes_by_exp_cosine_over_t():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scores = knn_scores(train, labels, torch.tensor([[0.6, 0.8]]), num_classes=2, k=2, t=0.5)
    cos = F.normalize(train, dim=1) @ F.normalize(torch.tensor([0.6, 0.8]), dim=0)
    top = cos.topk(2)
    expected = torch.zeros(2).index_add_(0, labels[top.indices], (top.values / 0.5).exp())
    torch.testing.assert_close(scores[0], expected)
    assert topk_accuracy(scores, torch.tensor([1]))[1] == 100.0


def test_missing_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match='--checkpoint PATH'):
        run_linear_probe(LinearProbeConfig(output_dir=str(tmp_path)))


@pytest.mark.slow
def test_raw_pixel_linear_baseline_on_full_fashion_mnist_reaches_84(fashion_mnist_train, fashion_mnist_test):
    """The paper's probe recipe (batch 4096, lr 1.6, 90 epochs, LARS) on the 60k cached pixel vectors."""
    x, y = _pixels(fashion_mnist_train)
    xt, yt = _pixels(fashion_mnist_test)
    batches, steps = cached_batches({'p': x}, y, 4096, 0)
    head = train_linear_heads(batches, steps, {'p': 1024}, 10, epochs=90, warmup_epochs=10, lr=0.1 * 4096 / 256)['p']
    assert 83.0 < evaluate_head(head, xt, yt)[1] < 87.0
