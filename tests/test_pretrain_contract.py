"""timm's model contract, swept over every registered pretraining wrapper (RandSAC and MAE, every size and tag).

timm's `tests/test_models.py` assumes a classifier (logits, `reset_classifier`, features), so the parts of it that
apply to a non-classifier are checked here, as timm checks them: create, forward, backward (every trainable
parameter gets a gradient), `set_grad_checkpointing` leaving outputs unchanged (timm's tolerances), and
`no_weight_decay()` naming only real parameters.
"""
import pytest
import timm
import torch

import randsac_timm  # noqa: F401  (registers the models)

WRAPPERS = timm.list_models(['randsac_pretrain_*', 'mae_pretrain_*'], include_tags=True)
FAST = [name for name in WRAPPERS if '_micro_' in name]  # the CPU-sized ones run by default, the rest with -m slow
SLOW = [name for name in WRAPPERS if name not in FAST]
DECODER_VARIANTS = [
    dict(decoder='skip'), dict(decoder='plain'), dict(skip_connections=False), dict(decoder='two_stream'),
    dict(skip_memory='paper'), dict(skip_memory='paper_last'),
]


def _assert_no_weight_decay_names_parameters(model: torch.nn.Module) -> None:
    params = {name for name, _ in model.named_parameters()}
    names = model.no_weight_decay()
    assert names <= params, f'no_weight_decay() names {sorted(names - params)}, which are not parameters'


@pytest.mark.parametrize('kwargs', DECODER_VARIANTS, ids=lambda kw: '-'.join(f'{k}={v}' for k, v in kw.items()))
def test_no_weight_decay_names_only_parameters_for_every_decoder(kwargs):
    _assert_no_weight_decay_names_parameters(timm.create_model('randsac_pretrain_vit_micro_patch4_32', **kwargs))


def _wrapper_runs(model_name: str):
    """Create `model_name`, check `no_weight_decay()`, and run forward + backward without and with gradient
    checkpointing (each checked: every trainable parameter gets a gradient, a finite loss); the two runs'
    (loss, gradients)."""
    torch.manual_seed(0)
    model = timm.create_model(model_name).train()
    _assert_no_weight_decay_names_parameters(model)
    images = torch.randn(2, *model.pretrained_cfg['input_size'])
    runs = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        out = model(images, generator=torch.Generator().manual_seed(0))  # the same segments / mask both times
        out.loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f'no gradient for {missing[:5]}'
        assert torch.isfinite(out.loss) and out.pred.shape == out.target.shape
        runs.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    return runs


def _assert_checkpointing_changes_nothing(runs) -> None:
    (loss, grads), (loss_ckpt, grads_ckpt) = runs
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-4, atol=1e-5)  # timm's grad-checkpointing tolerance
    torch.testing.assert_close(grads_ckpt, grads, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', FAST)
def test_wrapper_forward_backward_checkpointing_and_no_weight_decay(model_name):
    runs = _wrapper_runs(model_name)
    assert len(runs) == 2 and runs[0][1].keys() == runs[1][1].keys()  # the same parameters got gradients both times
    _assert_checkpointing_changes_nothing(runs)


@pytest.mark.slow
@pytest.mark.parametrize('model_name', SLOW)
def test_larger_wrapper_forward_backward_checkpointing_and_no_weight_decay(model_name):
    runs = _wrapper_runs(model_name)
    assert len(runs) == 2 and runs[0][1].keys() == runs[1][1].keys()  # the same parameters got gradients both times
    _assert_checkpointing_changes_nothing(runs)
