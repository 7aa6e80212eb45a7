import pytest
import torch

from randsac_timm.lars import Lars


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
