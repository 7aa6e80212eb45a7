import pytest
import torch

from randsac_timm.eval.lars import Lars


def _lars_by_hand(w, gw, b, gb, lr, momentum, trust, wd, mu_w, mu_b):
    dw = gw + wd * w
    ratio = trust * w.norm() / dw.norm()
    mu_w = momentum * mu_w + ratio * dw
    mu_b = momentum * mu_b + gb  # 1-D: no decay, no trust ratio
    return w - lr * mu_w, b - lr * mu_b, mu_w, mu_b


@pytest.mark.parametrize('wd', [0.0, 0.1])
def test_lars_two_steps_match_hand_computation_and_skip_1d(wd):
    torch.manual_seed(0)
    w0, b0 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    grads = [(torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)) for _ in range(2)]
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = Lars([w, b], lr=0.7, weight_decay=wd, momentum=0.9, trust_coeff=0.001)
    ew, eb, mu_w, mu_b = w0.clone(), b0.clone(), torch.zeros_like(w0), torch.zeros_like(b0)
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        ew, eb, mu_w, mu_b = _lars_by_hand(ew, gw, eb, gb, 0.7, 0.9, 0.001, wd, mu_w, mu_b)
        torch.testing.assert_close(w.detach(), ew, rtol=0, atol=1e-12)
        torch.testing.assert_close(b.detach(), eb, rtol=0, atol=1e-12)


def test_lars_adapts_with_zero_weight_decay_unlike_plain_sgd():
    # timm.optim.Lars only adapts when weight_decay != 0; ours must scale the step by trust * |w| / |g|
    w = torch.full((2, 2), 2.0, requires_grad=True)  # |w| = 4
    w.grad = torch.full((2, 2), 100.0)  # |g| = 200
    Lars([w], lr=1.0, weight_decay=0.0, momentum=0.0, trust_coeff=0.001).step()
    expected_step = 0.001 * 4.0 / 200.0 * 100.0  # per element
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 2.0 - expected_step))


def test_lars_zero_weight_norm_falls_back_to_ratio_one():
    w = torch.zeros(2, 2, requires_grad=True)
    w.grad = torch.ones(2, 2)
    Lars([w], lr=0.5, momentum=0.0).step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.5))


def test_lars_rejects_bad_hyper_parameters():
    with pytest.raises(ValueError, match='trust_coeff'):
        Lars([torch.zeros(1, requires_grad=True)], lr=0.1, trust_coeff=0.0)


def _steps(make_opt, grads, w0, b0):
    """Final (w, b) after one optimizer step per (gw, gb) in `grads`, starting from (w0, b0)."""
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = make_opt([w, b])
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
    return w.detach(), b.detach()


def _problem():
    torch.manual_seed(0)
    w0, b0 = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    grads = [(torch.randn(8, 16, dtype=torch.float64), torch.randn(8, dtype=torch.float64)) for _ in range(3)]
    return w0, b0, grads


def test_timm_lars_with_the_same_options_is_plain_sgd_not_ours():
    # the linear-probe options (weight decay 0): timm's Lars does not adapt at all, so it is momentum SGD
    from timm.optim import Lars as TimmLars
    w0, b0, grads = _problem()
    opts = dict(lr=0.5, weight_decay=0.0, momentum=0.9, trust_coeff=0.001)
    ours = _steps(lambda p: Lars(p, **opts), grads, w0, b0)
    timm_ = _steps(lambda p: TimmLars(p, **opts), grads, w0, b0)
    sgd = _steps(lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9), grads, w0, b0)
    torch.testing.assert_close(timm_, sgd, rtol=0, atol=1e-12)
    assert not torch.allclose(ours[0], timm_[0], rtol=0, atol=1e-3)  # ours adapts the weight matrix
    torch.testing.assert_close(ours[1], timm_[1], rtol=0, atol=1e-12)  # and leaves the bias a plain SGD step


def test_timm_lars_always_adapt_matches_ours_only_without_1d_tensors_and_weight_decay():
    from timm.optim import Lars as TimmLars
    w0, b0, grads = _problem()
    opts = dict(lr=0.5, momentum=0.9, trust_coeff=0.001)
    # a group of 1-D tensors that timm leaves alone and eps=0 make the two agree: the comparison itself is sound
    ours = _steps(lambda p: Lars(p, weight_decay=0.0, **opts), grads, w0, b0)
    timm_split = _steps(lambda p: TimmLars(
        [dict(params=[p[0]], always_adapt=True, eps=0.0), dict(params=[p[1]])], weight_decay=0.0, **opts),
        grads, w0, b0)
    torch.testing.assert_close(ours, timm_split, rtol=0, atol=1e-12)
    # one group as ours takes it: timm adapts the bias too
    timm_one = _steps(lambda p: TimmLars(p, weight_decay=0.0, always_adapt=True, eps=0.0, **opts), grads, w0, b0)
    assert not torch.allclose(ours[1], timm_one[1], rtol=0, atol=1e-3)
    # with weight decay timm divides by |g| + wd |w| (an upper bound), ours by |g + wd w| (MoCo v3)
    ours_wd = _steps(lambda p: Lars(p, weight_decay=0.1, **opts), grads, w0, b0)
    timm_wd = _steps(lambda p: TimmLars(
        [dict(params=[p[0]], eps=0.0), dict(params=[p[1]], weight_decay=0.0)], weight_decay=0.1, **opts),
        grads, w0, b0)
    torch.testing.assert_close(ours_wd[1], timm_wd[1], rtol=0, atol=1e-12)
    assert not torch.allclose(ours_wd[0], timm_wd[0], rtol=0, atol=1e-6)
