import json

import pytest
import torch
import torch.nn.functional as F

from randsac_timm.eval.config import LinearProbeConfig, parse_linear_args
from randsac_timm.eval.converged_probe import fit_logistic_regression, logistic_objective, pca_basis, readout_top1
from randsac_timm.eval.linear_probe import (
    block_mean_features,
    cached_batches,
    evaluate_head,
    knn_scores,
    mean_token_features,
    run_linear_probe,
    topk_accuracy,
    train_linear_heads,
)
from randsac_timm.eval.results import RESULT_KEYS
from randsac_timm.train.config import parse_pretrain_args

ENCODER = 'randsac_vit_micro_patch4_32'
# short-schedule settings: LARS moves weights by ~lr * trust per step, so few steps need a larger lr
# (the converged readouts are checked on the paper-mode run's smaller split: 7 L-BFGS fits on 1000 samples cost more
# than the rest of a run)
QUICK = ['--fast', '--max-train-samples', '1000', '--max-eval-samples', '500', '--epochs', '30', '--warmup-epochs',
         '2', '--batch-size', '100', '--lr', '30', '--workers', '0', '--feature-batch-size', '500', '--no-progress',
         '--no-lbfgs']


def _pixels(ds, n=None):
    """(N, 1024) normalised, 28 -> 32 padded pixels, as the eval transform makes them."""
    x = ds.data[:n].float() / 255
    return ((F.pad(x, (2, 2, 2, 2)) - 0.2860) / 0.3530).flatten(1), ds.targets[:n]


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """A briefly pretrained encoder: 3 real RandSAC steps on Fashion-MNIST."""
    from randsac_timm.train.engine import train

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
    # --no-lbfgs: keys kept, values None
    assert on_disk['lbfgs_top1'] is None and on_disk['per_block_top1'] is None
    assert on_disk['protocol']['converged_readout'] is None
    assert on_disk['encoder']['path'] == pretrained.checkpoint and len(on_disk['encoder']['sha256']) == 64


def test_paper_mode_is_bit_reproducible(pretrained, tmp_path, capsys):
    """Augmented crops through the frozen encoder each epoch: same seed, same numbers."""
    args = ['--checkpoint', pretrained.encoder, '--max-train-samples', '128', '--max-eval-samples', '128',
            '--epochs', '2', '--warmup-epochs', '1', '--batch-size', '64', '--workers', '0', '--no-knn',
            '--no-progress']
    a = run_linear_probe(parse_linear_args([*args, '--output-dir', str(tmp_path / 'a')]))
    b = run_linear_probe(parse_linear_args([*args, '--output-dir', str(tmp_path / 'b')]))
    assert a['protocol']['mode'] == 'paper' and a['encoder']['kind'] == 'encoder_safetensors'
    assert (a['top1'], a['pixel_linear_top1']) == (b['top1'], b['pixel_linear_top1'])
    # the converged readouts run in paper mode too, on the un-augmented features: every key, one entry per block
    # (the last is the encoder's feature), all converged, and in the summary line
    assert a['per_block_top1'] == b['per_block_top1'] and a['pixel_pca_linear_top1'] == b['pixel_pca_linear_top1']
    on_disk = json.loads((tmp_path / 'a' / 'results.json').read_text())
    blocks = on_disk['per_block_top1']
    assert len(blocks) == 6 and blocks[-1] == on_disk['lbfgs_top1']
    for value in [*blocks, on_disk['pixel_lbfgs_top1'], on_disk['pixel_pca_linear_top1']]:
        assert 15.0 < value <= 100.0, on_disk
    fits = on_disk['converged_readouts']
    assert all(fit['converged'] for fit in [*fits['blocks'], fits['pixels'], fits['pixels_pca']])
    assert fits['pixels_pca']['dim'] == 128 and fits['pixels']['dim'] == 1024
    assert on_disk['protocol']['converged_readout']['l2'] > 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith('linear probe (paper)')][0]
    assert f'L-BFGS {a["lbfgs_top1"]:.2f}' in line and f'[{blocks[0]:.1f} ' in line
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


def _newton_reference(z, y, num_classes, l2, steps=30):
    """Independent solution of the same objective: damped Newton with the exact Hessian (quadratic convergence).

    theta = [W | b] (C, D + 1) acts on a = [z, 1]; the Hessian is mean_i (diag(p_i) - p_i p_i^T) (x) a_i a_i^T + l2
    on W's entries; the gradient comes from autograd through `logistic_objective`.
    """
    n, d = z.shape
    a = torch.cat([z, torch.ones(n, 1, dtype=z.dtype)], 1)  # (N, D + 1)
    decay = torch.cat([torch.full((d,), l2, dtype=z.dtype), torch.zeros(1, dtype=z.dtype)]).repeat(num_classes)

    def objective(theta):
        return logistic_objective(z, y, theta[:, :d], theta[:, d], l2)

    theta = torch.zeros(num_classes, d + 1, dtype=torch.float64)
    for _ in range(steps):
        t = theta.clone().requires_grad_(True)
        loss = objective(t)
        (grad,) = torch.autograd.grad(loss, t)
        if grad.abs().max() < 1e-14:
            break
        p = torch.softmax(a @ theta.T, 1)  # (N, C)
        curvature = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, C, C)
        hess = torch.einsum('ncd,nj,nk->cjdk', curvature, a, a).reshape(grad.numel(), grad.numel()) / n
        hess += torch.diag(decay)
        # the bias is unregularised and softmax is shift-invariant: lstsq handles the rank-deficient Hessian
        step = torch.linalg.lstsq(hess, grad.reshape(-1, 1)).solution.view_as(theta)
        size = 1.0
        while objective(theta - size * step) > loss.detach() and size > 1e-8:
            size /= 2
        theta = theta - size * step
    return theta[:, :d], theta[:, d], objective(theta)


def _hard_problem(n=400, d=8, num_classes=4, seed=0):
    """Overlapping classes with correlated, badly scaled features (the regime where LARS underfits)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    centres = torch.randn(num_classes, d, generator=g)
    mix = torch.randn(d, d, generator=g) + 3.0 * torch.ones(d, d)  # strongly correlated columns
    x = (centres[y] + 1.5 * torch.randn(n, d, generator=g)) @ mix
    return x * torch.logspace(-3, 3, d), y


def test_lbfgs_readout_matches_a_newton_reference_solution():
    x, y = _hard_problem()
    l2, tol = 1e-3, 1e-8
    fit = fit_logistic_regression(x, y, 4, l2=l2, tol=tol, dtype=torch.float64)
    assert fit.converged and fit.grad_max <= tol and fit.iterations > 5
    # standardised with the training statistics, then the same optimum as an independent solver
    torch.testing.assert_close(fit.mean, x.double().mean(0))
    torch.testing.assert_close(fit.std, x.double().std(0))
    z = (x.double() - x.double().mean(0)) / x.double().std(0)
    weight, bias, loss = _newton_reference(z, y, 4, l2)
    # l2-strong convexity: distance to the optimum <= |gradient|_2 / l2 <= sqrt(#params) * tol / l2
    atol = (weight.numel() + bias.numel()) ** 0.5 * tol / l2
    torch.testing.assert_close(fit.weight, weight, atol=atol, rtol=0)
    # the bias is defined up to a constant shift across classes (softmax); compare it centred
    torch.testing.assert_close(fit.bias - fit.bias.mean(), bias - bias.mean(), atol=atol, rtol=0)
    assert -1e-12 < fit.loss - loss.item() < 1e-10
    assert torch.equal(fit.logits(x).argmax(1), (z @ weight.T + bias).argmax(1))
    # a fit stopped early says so, and is measurably away from the optimum
    early = fit_logistic_regression(x, y, 4, l2=l2, tol=tol, max_iter=30, dtype=torch.float64)
    assert not early.converged and early.iterations == 30 and (early.weight - weight).abs().max() > 100 * atol
    # the default (float32, the protocol's tolerance) reaches the same optimum to within its tolerance
    fast = fit_logistic_regression(x, y, 4, l2=l2)
    assert fast.converged and fast.weight.dtype == torch.float32 and -1e-6 < fast.loss - loss.item() < 1e-5
    assert (fast.logits(x).argmax(1) == (z @ weight.T + bias).argmax(1)).float().mean() > 0.99


def test_lbfgs_readout_is_deterministic_and_scores_held_out_data():
    x, y = _hard_problem(n=800)
    a = fit_logistic_regression(x[:600], y[:600], 4)
    b = fit_logistic_regression(x[:600], y[:600], 4)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and a.iterations == b.iterations
    top1, info = readout_top1(x[:600], y[:600], x[600:], y[600:], 4)
    expected = 100.0 * (a.logits(x[600:]).argmax(1) == y[600:]).double().mean().item()
    assert top1 == expected and info['converged'] and 25.0 < top1 <= 100.0


def test_pca_basis_spans_the_top_principal_directions():
    g = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(12, 12, generator=g))[0]
    x = torch.randn(500, 12, generator=g) * torch.linspace(5, 0.1, 12) @ rotation  # distinct variances
    mean, comps = pca_basis(x, 4)
    xc = x.double() - x.double().mean(0)
    top = torch.linalg.svd(xc, full_matrices=False).Vh[:4].T  # (12, 4)
    torch.testing.assert_close(mean, x.double().mean(0))
    torch.testing.assert_close(comps.abs(), top.abs(), atol=1e-8, rtol=0)  # each direction up to its sign
    assert comps.shape == (12, 4)


def test_last_block_mean_is_the_probe_feature(fmnist_batch):
    import timm

    encoder = timm.create_model(ENCODER, num_classes=0).eval()
    with torch.no_grad():
        blocks = block_mean_features(encoder)(fmnist_batch)
        final = mean_token_features(encoder)(fmnist_batch)
    assert blocks.shape == (64, 6, 128)
    torch.testing.assert_close(blocks[:, -1], final, atol=0, rtol=0)
    assert not torch.allclose(blocks[:, -2], final, atol=1e-3)  # earlier blocks are different features


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
