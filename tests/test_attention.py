"""The rank-sorted speed paths (`attn_impl='sparse'` / `'flex'`) against the dense reference.

Each path must give the same loss and gradients as the dense masked path on the same sample, keep the
segment causality on its own (checked directly, not only through equality with the dense path), and actually
skip work: the last segment leaves the encoder input and fully masked key blocks are not computed.
"""
import json
import warnings

import pytest
import timm
import torch
from test_randsac_pretrain import STRATEGIES, TINY, _check_segment_causality
from timm.models.vision_transformer import Block

import randsac_timm  # noqa: F401  (registers the models)
from randsac_timm.models.attention import (
    BlockSparseAttention,
    DenseAttention,
    SortedSegments,
    attention_forward,
    block_forward,
    segment_kernel,
)
from randsac_timm.models.masks import causal_segment_mask, memory_mask
from randsac_timm.models.segments import sample_rank
from randsac_timm.train.config import parse_pretrain_args
from randsac_timm.train.engine import train

DECODERS = ['skip', 'plain', 'two_stream']


def _model(impl: str, spec: str, decoder: str = 'skip', dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model('randsac_pretrain_vit_micro_patch4_32', segments=spec, attn_impl=impl, decoder=decoder,
                              **dict(TINY, **kwargs))
    return model.to(dtype)


def _loss_pred_grads(model, images, rank):
    out = model(images, rank=rank)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


@pytest.mark.parametrize('decoder', DECODERS)
@pytest.mark.parametrize('spec', ['raster', 'random', 'square:16-4', 'blob:11-5', 'blob:11-7-3', 'shuffle:7'])
def test_sparse_path_gives_the_dense_loss_and_gradients(spec, decoder, fmnist_batch):
    images = fmnist_batch[:6].double()
    rank = sample_rank(spec, 6, (8, 8), generator=torch.Generator().manual_seed(1))
    ref, ref_grads = _loss_pred_grads(_model('dense', spec, decoder).train(), images, rank)
    out, grads = _loss_pred_grads(_model('sparse', spec, decoder, attn_block_size=16).train(), images, rank)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.pred, ref.pred, rtol=1e-10, atol=1e-12)
    assert torch.equal(out.loss_mask, ref.loss_mask)
    for name, grad in ref_grads.items():
        assert grad is not None and grads[name] is not None, name
        torch.testing.assert_close(grads[name], grad, rtol=1e-9, atol=1e-12, msg=name)


def test_sparse_path_in_float32_with_grad_checkpointing_and_dropout_free_defaults(fmnist_batch):
    images = fmnist_batch[:4]
    rank = sample_rank('blob:11-5', 4, (8, 8), generator=torch.Generator().manual_seed(2))
    ref, ref_grads = _loss_pred_grads(_model('dense', 'blob:11-5', dtype=torch.float32), images, rank)
    model = _model('sparse', 'blob:11-5', dtype=torch.float32)
    model.set_grad_checkpointing(True)
    out, grads = _loss_pred_grads(model, images, rank)
    torch.testing.assert_close(out.loss, ref.loss)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize('spec', STRATEGIES)
def test_sparse_path_keeps_segment_causality(spec, fmnist_batch):
    model = _model('sparse', spec, dtype=torch.float32, attn_block_size=8).eval()
    rank = sample_rank(spec, 2, (8, 8), generator=torch.Generator().manual_seed(3))
    assert _check_segment_causality(model, fmnist_batch[:2], rank) >= 3


def test_sparse_path_keeps_causality_on_a_non_square_grid(fmnist_batch):
    model = _model('sparse', 'blob:11-5', dtype=torch.float32, img_size=(24, 40)).eval()
    images = torch.nn.functional.interpolate(fmnist_batch[:2], size=(24, 40))
    rank = sample_rank('blob:11-5', 2, (6, 10), generator=torch.Generator().manual_seed(0))
    assert _check_segment_causality(model, images, rank) >= 3


@pytest.mark.parametrize('decoder', ['skip', 'two_stream'])
def test_flex_path_forward_matches_dense_and_refuses_cpu_training(decoder, fmnist_batch):
    images = fmnist_batch[:4].double()
    rank = sample_rank('blob:11-5', 4, (8, 8), generator=torch.Generator().manual_seed(4))
    flex = _model('flex', 'blob:11-5', decoder, attn_block_size=16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # eager FlexAttention warns that it is unfused
        ref = _model('dense', 'blob:11-5', decoder)(images, rank=rank)
        out = flex(images, rank=rank)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.pred, ref.pred, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match='attn_impl="sparse"'):
        flex(images, rank=rank)


def test_last_segment_leaves_the_encoder_input(fmnist_batch):
    rank = sample_rank('square:16', 3, (8, 8), generator=torch.Generator().manual_seed(0))  # 16 segments of 4
    model = _model('sparse', 'square:16', dtype=torch.float32)
    seen = []
    model.encoder.blocks[0].mlp.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    model(fmnist_batch[:3], rank=rank)
    assert seen == [60]  # 64 tokens minus the 4 of the last square, in every sample
    # a batch whose shortest last segment is 1 token drops 1; a single-segment sample drops nothing
    ragged = torch.tensor([[0] * 32 + [1] * 31 + [2], [0] * 32 + [1] * 32])
    assert SortedSegments(ragged).keep_tokens == 63
    assert SortedSegments(torch.zeros(2, 64, dtype=torch.long)).keep_tokens == 64


def test_sorted_layout_round_trips_and_is_stable():
    rank = sample_rank('blob:11-5', 4, (8, 8), generator=torch.Generator().manual_seed(5))
    order = SortedSegments(rank)
    x = torch.randn(4, 64, 3)
    assert torch.equal(order.scatter(order.gather(x)), x)
    assert torch.all(order.rank[:, 1:] >= order.rank[:, :-1])
    same = order.rank[:, 1:] == order.rank[:, :-1]
    assert torch.all(order.order[:, 1:][same] > order.order[:, :-1][same])  # raster order inside a segment


@pytest.mark.parametrize('strict', [False, True])
@pytest.mark.parametrize('block_size', [1, 7, 16, 64, 300])
def test_block_sparse_kernel_equals_dense_kernel_and_skips_blocks(strict, block_size):
    gen = torch.Generator().manual_seed(6)
    rank = SortedSegments(sample_rank('blob:11-5', 3, (16, 16), generator=gen)).rank
    key_rank = rank[:, :240]
    mask = (memory_mask if strict else causal_segment_mask)(rank, key_rank)
    q = torch.randn(3, 2, 256, 8, generator=gen, dtype=torch.float64)
    k, v = torch.randn(2, 3, 2, 240, 8, generator=gen, dtype=torch.float64)
    kernel = BlockSparseAttention(mask, rank, key_rank, block_size)
    torch.testing.assert_close(kernel(q, k, v), DenseAttention(mask)(q, k, v), rtol=1e-12, atol=1e-12)
    for s, e, b, rect in kernel.blocks:
        # every key a query of the block may read lies inside its rectangle, and no row in it is empty
        assert not mask[:, :, s:e, b:].any()
        assert (rect if rect is not None else mask[:, :, s:e, :b]).any(-1).all()
    if block_size <= 64:
        assert kernel.visited_fraction() < 0.75  # a block lower-triangular plan, not the dense square


def test_timm_block_with_a_kernel_equals_timm_block_with_the_mask():
    torch.manual_seed(0)
    blk = Block(32, 4, qkv_bias=True, init_values=0.1).eval()
    rank = sample_rank('blob:7', 2, (8, 8), generator=torch.Generator().manual_seed(0))
    mask = causal_segment_mask(rank)
    x = torch.randn(2, 64, 32)
    assert torch.equal(block_forward(blk, x, DenseAttention(mask)), blk(x, attn_mask=mask))
    assert torch.equal(attention_forward(blk.attn, x, DenseAttention(mask)), blk.attn(x, attn_mask=mask))


def test_bad_attention_options_raise_clear_errors():
    with pytest.raises(ValueError, match="attn_impl='blocky' is not one of"):
        _model('blocky', 'blob:7')
    with pytest.raises(ValueError, match='patch_drop_rate=0'):
        _model('sparse', 'blob:7', patch_drop_rate=0.5)
    with pytest.raises(ValueError, match='attn_block_size must be >= 1'):
        _model('sparse', 'blob:7', attn_block_size=0)
    with pytest.raises(ValueError, match='block_size must be >= 1'):
        segment_kernel('sparse', torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long),
                       strict=False, block_size=0)


def test_train_pretrain_with_sparse_attention_logs_the_dense_losses(tmp_path):
    short = ['--max-train-samples', '64', '--batch-size', '16', '--workers', '0', '--no-progress', '--max-steps', '3',
             '--log-every', '1', '--vis-every', '0']
    losses = {}
    for impl in ('dense', 'sparse'):
        out = str(tmp_path / impl)
        train(parse_pretrain_args(short + ['--attn-impl', impl, '--output-dir', out]))
        with open(f'{out}/log.jsonl') as f:
            losses[impl] = [r['loss'] for r in map(json.loads, f) if r['event'] == 'train']
        state = torch.load(f'{out}/checkpoint-last.pth', map_location='cpu', weights_only=True)
        assert state['config']['attn_impl'] == impl
    assert len(losses['dense']) == 3
    torch.testing.assert_close(torch.tensor(losses['sparse']), torch.tensor(losses['dense']), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('impl', ['dense', 'sparse'])
def test_compiled_pretraining_step_matches_eager(impl, fmnist_batch):
    # aot_eager traces the whole step (graphs, graph breaks, autograd) without a C++ compiler run: fast enough for
    # the default test run; inductor itself runs in the slow test below and in benchmarks/throughput.py --compile
    torch._dynamo.reset()
    model = _model(impl, 'blob:11-5', dtype=torch.float32)
    compiled = torch.compile(model, backend='aot_eager')
    for seed in range(3):  # new plans (prefix lengths, kept tokens) every step: no recompile storm, same numbers
        rank = sample_rank('blob:11-5', 4, (8, 8), generator=torch.Generator().manual_seed(seed))
        ref, ref_grads = _loss_pred_grads(model, fmnist_batch[:4], rank)
        ref_grads = {n: g.clone() for n, g in ref_grads.items()}
        model.zero_grad(set_to_none=True)
        out = compiled(fmnist_batch[:4], rank=rank)
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        torch.testing.assert_close(out.loss, ref.loss)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        model.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_train_pretrain_compile_option_runs_inductor(tmp_path):
    out = str(tmp_path / 'compiled')
    cfg = parse_pretrain_args(['--max-train-samples', '64', '--batch-size', '16', '--workers', '0', '--no-progress',
                               '--max-steps', '3', '--log-every', '1', '--vis-every', '0', '--compile',
                               '--attn-impl', 'sparse', '--output-dir', out])
    result = train(cfg)
    assert result.step == 3 and all(torch.isfinite(torch.tensor(r)) for r in [result.last_loss])
