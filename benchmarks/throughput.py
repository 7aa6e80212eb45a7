"""Throughput of a RandSAC step next to the network it trains, in one process, side by side.

    python benchmarks/throughput.py                                   # CPU: micro and ViT-Tiny, 8x8 grid, fp32
    python benchmarks/throughput.py --json benchmarks/results/throughput_cpu.json
    python benchmarks/throughput.py --device cuda --encoders randsac_vit_base_patch16_224 --amp --batch-size 256 \
        --modes timm randsac randsac_sparse randsac_flex nomask mae
    python benchmarks/throughput.py --compile ...                     # the same with torch.compile on each step

For each encoder it times full training steps (forward, backward, AdamW) of the modes below, all built side by
side in one process and run in turns (a b c d, a b c d, ...) after `--warmup` untimed steps each, so that every
ratio compares steps taken under the same conditions:
  (a) timm  : the encoder as a supervised timm VisionTransformer (linear head, cross-entropy);
  (b) randsac: the RandSAC pretraining step (serialization + masks + encoder + decoder + loss), dense masks
      in raster order (`attn_impl='dense'`, the reference);
  (b') randsac_sparse / randsac_flex: the same step on the rank-sorted speed paths (`attn_impl='sparse'`:
      last segment dropped, block-sparse SDPA; `'flex'`: FlexAttention, CUDA only), same loss and gradients;
  (c) nomask: the same encoder-decoder step with every mask removed and no serialization;
  (d) mae   : the MAE step of the same encoder/decoder sizes (75% masking), when registered.
and reports images/s, peak memory, FLOPs per step (counted by torch.utils.flop_counter, which applies the
analytic formula of every matmul / attention op executed; we add the same formula for the CPU attention kernel,
which torch's counter skips: forward + backward; masked attention is counted
dense, as the kernels compute it; the sparse paths execute fewer FLOPs, so their FLOP/s ratio uses the dense
step's count, the model's FLOPs), achieved FLOP/s, the share of (b) spent sampling ranks and building
masks, and the ratios (b)/(c) step time, FLOP/s of (b) over (a), and peak memory (b)/(c); the same ratios of
the sparse path carry a `_sparse` suffix (`_flex` for FlexAttention).

Peak memory, FLOPs and the compile step are measured apart from the timing, one configuration at a time over
its first steps: CUDA's max_memory_allocated above what is allocated before them (weights, inputs); on CPU the
growth of the process's peak resident set from just before the first step to the end, each configuration in its
own subprocess so that earlier ones do not mask it. On CPU the timing runs in a subprocess too, `--repeats`
times; a step time is the median over every timed step of those runs.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

import randsac_timm  # noqa: F401
from randsac_timm.models.attention import sorted_plan
from randsac_timm.models.losses import masked_mse, pixel_target
from randsac_timm.models.masks import additive_mask, attention_dtype, build_masks
from randsac_timm.models.segments import sample_rank
from randsac_timm.train.distributed import select_attention_backends

MODES = ('timm', 'randsac', 'randsac_sparse', 'randsac_flex', 'nomask', 'mae')
DEFAULT_MODES = ('timm', 'randsac', 'randsac_sparse', 'nomask', 'mae')  # flex has no CPU backward
ATTN_IMPL = {'randsac': 'dense', 'randsac_sparse': 'sparse', 'randsac_flex': 'flex'}
EAGER = ':eager'  # key suffix of a compiled mode's eager step times


def _current_rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# torch's FLOP counter knows the CUDA attention kernels but not the CPU one, so on CPU it would count no attention
# at all; the same analytic formulas for the CPU kernel (masked attention counted dense, as the kernel computes it)
_aten = torch.ops.aten
CPU_ATTENTION_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v),
}


def _step_fn(mode: str, encoder_name: str, batch_size: int, device: torch.device, amp: bool, compile: bool,
             segments: Optional[str], img_size: Optional[int] = None) -> Callable[[], None]:
    """Build the model of `mode` and return a closure running one full training step."""
    torch.manual_seed(0)
    pretrain_name = encoder_name.replace('randsac_', 'randsac_pretrain_', 1)
    kwargs = {'segments': segments} if segments and mode in ATTN_IMPL else {}
    if mode in ATTN_IMPL:
        kwargs['attn_impl'] = ATTN_IMPL[mode]
    if img_size:
        kwargs['img_size'] = img_size
    if mode == 'timm':
        model = timm.create_model(encoder_name, num_classes=10, **kwargs)
    elif mode == 'mae':
        model = timm.create_model(encoder_name.replace('randsac_', 'mae_pretrain_', 1), **kwargs)
    else:
        model = timm.create_model(pretrain_name, **kwargs)
    model = model.to(device).train()
    cfg = model.pretrained_cfg
    in_chans = cfg['input_size'][0]
    size = (img_size, img_size) if img_size else tuple(cfg['input_size'][1:])
    images = torch.randn(batch_size, in_chans, *size, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)

    if mode == 'timm':
        def loss_fn():
            return F.cross_entropy(model(images), labels)
    elif mode == 'nomask':
        def loss_fn():
            # the RandSAC network with no serialization and no masks: every query sees every token
            _, hidden = model.encoder.forward_intermediates(images, output_fmt='NLC')
            queries = model._queries(model.grid_size, batch_size, hidden[-1])
            pred = model.decoder(queries, hidden, None, None)
            target = pixel_target(images, model.patch_size, norm_pix=model.norm_pix)
            return masked_mse(pred, target, torch.ones(pred.shape[:2], dtype=torch.bool, device=device))
    else:
        def loss_fn():
            return model(images, generator=generator).loss
    compiled_loss_fn = torch.compile(loss_fn) if compile else loss_fn

    def step(eager: bool = False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = (loss_fn if eager else compiled_loss_fn)()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step.model = model  # type: ignore[attr-defined]
    return step


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def profile_mode(mode: str, encoder_name: str, batch_size: int, device: torch.device, amp: bool, compile: bool,
                 segments: Optional[str], img_size: Optional[int] = None) -> Dict[str, Any]:
    """What one configuration costs apart from time: FLOPs, peak memory, the compile step, the masks' share.

    On CPU each configuration runs this in its own process, so that the peak resident set belongs to it alone.
    """
    step = _step_fn(mode, encoder_name, batch_size, device, amp, compile, segments, img_size)
    # CPU: peak RSS growth from here (model, optimizer and inputs exist; activations, gradients and optimizer
    # state of the first steps do not yet) to the end of the steps below
    rss_before_steps = _current_rss_bytes() if device.type != 'cuda' else 0
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    # counted eagerly: compiled graphs hide their ops from the counter
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        step(eager=True)
    flops = counter.get_total_flops()
    _sync(device)
    t0 = time.perf_counter()
    step()  # with --compile: the step that compiles
    _sync(device)
    first_step_s = time.perf_counter() - t0
    step()  # a steady-state step (optimizer state exists from the first one)
    _sync(device)
    peak = (torch.cuda.max_memory_allocated(device) - base if device.type == 'cuda'
            else _peak_rss_bytes() - rss_before_steps)
    model = step.model  # type: ignore[attr-defined]
    grid = tuple(model.grid_size) if hasattr(model, 'grid_size') else tuple(model.patch_embed.grid_size)
    result = dict(mode=mode, encoder=encoder_name, batch_size=batch_size, grid=list(grid), flops_per_step=flops,
                  peak_memory_mb=max(peak, 0) / 2**20, compile=compile, first_step_s=first_step_s)
    if mode in ATTN_IMPL:
        n = 50

        def masks_only():
            # what this mode's step builds: the dense masks and their additive biases (in the dtype attention
            # runs in), or the sorted layout and its kernels
            rank = sample_rank(model.segments, batch_size, model.grid_size, generator=torch.Generator(
                device=device).manual_seed(0), device=device)
            if model.attn_impl == 'dense':
                masks = build_masks(rank)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    dtype = attention_dtype(model.encoder.patch_embed.proj.weight)
                additive_mask(masks.causal, dtype)
                additive_mask(masks.memory, dtype)
            else:
                sorted_plan(rank, model.attn_impl, model.attn_block_size,
                            decoder_self_attention=model.decoder_kind != 'two_stream')

        masks_only()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            masks_only()
        _sync(device)
        result['masks_ms'] = (time.perf_counter() - t0) / n * 1e3
        result['segments'] = str(model.segments)
    return result


def time_modes(modes: List[str], encoder_name: str, batch_size: int, device: torch.device, amp: bool,
               compile: bool, warmup: int, steps: int, segments: Optional[str],
               img_size: Optional[int] = None) -> Dict[str, List[float]]:
    """Step times in milliseconds of every mode, built side by side in this process and run in turns.

    Every round runs each mode's step once (a b c d, a b c d, ...; with `compile`, each mode's eager step too),
    so a slow spell of a shared machine, or a process that happens to be slower as a whole (its memory placement,
    its cores), hits all modes alike: the ratios compare steps measured under the same conditions. (Run in
    separate processes, the same step on this 2-core machine varied by up to 15 % from one process to the next.)
    """
    fns = {mode: _step_fn(mode, encoder_name, batch_size, device, amp, compile, segments, img_size)
           for mode in modes}
    # with compile, each mode also runs its eager step in the same turns: the compile gain, measured alike
    runs = [(mode, False) for mode in modes] + ([(mode, True) for mode in modes] if compile else [])
    for mode, eager in runs:
        for _ in range(warmup):  # with --compile the first of these compiles
            fns[mode](eager=eager)
    times: Dict[str, List[float]] = {mode + (EAGER if eager else ''): [] for mode, eager in runs}
    for _ in range(steps):
        for mode, eager in runs:
            _sync(device)
            t0 = time.perf_counter()
            fns[mode](eager=eager)
            _sync(device)
            times[mode + (EAGER if eager else '')].append((time.perf_counter() - t0) * 1e3)
    return times


def _child(args: argparse.Namespace, extra: List[str]) -> Optional[Any]:
    """Run this script in a fresh process with the same settings; its last stdout line is JSON."""
    cmd = [sys.executable, os.path.abspath(__file__), '--encoders', args.encoders[0],
           '--batch-size', str(args.batch_size), '--device', args.device, '--warmup', str(args.warmup),
           '--steps', str(args.steps)] + extra
    cmd += ['--amp'] if args.amp else []
    cmd += ['--compile'] if args.compile else []
    cmd += ['--segments', args.segments] if args.segments else []
    cmd += ['--img-size', str(args.img_size)] if args.img_size else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f'  {" ".join(extra)} failed: '
              f'{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}')
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _available(mode: str, encoder: str) -> bool:
    return mode != 'mae' or encoder.replace('randsac_', 'mae_pretrain_', 1) in timm.list_models('mae_pretrain*')


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--encoders', nargs='+', default=['randsac_vit_micro_patch4_32', 'randsac_vit_tiny_patch4_32'])
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', action='store_true', help='bf16 autocast')
    parser.add_argument('--compile', action='store_true', help='torch.compile each step')
    parser.add_argument('--segments', default=None, help="RandSAC serialization (default: the model's)")
    parser.add_argument('--img-size', type=int, default=None,
                        help='input size for every model (grid = img-size / patch), e.g. 56 -> 14x14 with patch 4')
    parser.add_argument('--modes', nargs='+', default=list(DEFAULT_MODES), choices=MODES)
    parser.add_argument('--repeats', type=int, default=1,
                        help='timing processes (CPU) or passes (CUDA), each running every mode in turns; a step '
                             "time is the median over all of them")
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps of each mode before the timed rounds')
    parser.add_argument('--steps', type=int, default=5, help='timed rounds, each running every mode once')
    parser.add_argument('--json', default=None, help='write the figures here as JSON')
    parser.add_argument('--cudnn-attention', action='store_true',
                        help="allow PyTorch's cuDNN attention on CUDA (off, as in train_pretrain.py)")
    parser.add_argument('--_one', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--_timing', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    select_attention_backends(device, args.cudnn_attention)  # the kernels training uses

    if args._one:  # child process: one configuration's FLOPs and memory, JSON on the last line
        print(json.dumps(profile_mode(args._one, args.encoders[0], args.batch_size, device, args.amp, args.compile,
                                      args.segments, args.img_size)))
        return {}
    if args._timing:  # child process: every mode's step times, in turns
        print(json.dumps(time_modes(args.modes, args.encoders[0], args.batch_size, device, args.amp, args.compile,
                                    args.warmup, args.steps, args.segments, args.img_size)))
        return {}

    hardware = (torch.cuda.get_device_name(device) if device.type == 'cuda'
                else f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads')
    report: Dict[str, Any] = dict(device=str(device), hardware=hardware, torch=torch.__version__,
                                  timm=timm.__version__, amp=args.amp, compile=args.compile, img_size=args.img_size,
                                  cudnn_attention=args.cudnn_attention,
                                  batch_size=args.batch_size, repeats=args.repeats, steps=args.steps,
                                  flops='torch.utils.flop_counter (+ the CPU attention kernel), forward+backward',
                                  results={})
    for encoder in args.encoders:
        modes = [mode for mode in args.modes if _available(mode, encoder)]
        if device.type == 'cuda':
            profiles = {}
            for mode in modes:
                profiles[mode] = profile_mode(mode, encoder, args.batch_size, device, args.amp, args.compile,
                                              args.segments, args.img_size)
                torch.cuda.empty_cache()
        else:
            one = argparse.Namespace(**{**vars(args), 'encoders': [encoder]})
            profiles = {mode: _child(one, ['--_one', mode]) for mode in modes}
        modes = [mode for mode in modes if profiles[mode] is not None]  # e.g. flex has no CPU backward
        timings = []
        for _ in range(args.repeats):
            if device.type == 'cuda':
                timings.append(time_modes(modes, encoder, args.batch_size, device, args.amp, args.compile,
                                          args.warmup, args.steps, args.segments, args.img_size))
                torch.cuda.empty_cache()
            else:
                timing = _child(one, ['--_timing', '--modes', *modes])
                if timing is not None:
                    timings.append(timing)
        if not modes or not timings:
            continue
        rows = _rows(profiles, timings, args.batch_size)
        ratios = _ratios(rows)
        report['results'][encoder] = dict(rows=rows, **ratios)
        _print_table(encoder, rows, ratios, hardware)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
    return report


def _rows(profiles: Dict[str, Any], timings: List[Dict[str, List[float]]], batch_size: int) -> Dict[str, Any]:
    """One row per mode: its profile, and its median step time over every timed step of every timing run."""
    rows = {}
    for mode in profiles:
        if mode not in timings[0]:
            continue
        step_ms = statistics.median([ms for timing in timings for ms in timing[mode]])
        rows[mode] = dict(profiles[mode], step_ms=step_ms, images_per_s=batch_size / step_ms * 1e3,
                          achieved_tflops=profiles[mode]['flops_per_step'] / step_ms * 1e3 / 1e12,
                          step_ms_all=[round(ms, 2) for timing in timings for ms in timing[mode]])
        if mode + EAGER in timings[0]:  # compiled run: the same mode's eager steps, taken in the same turns
            rows[mode]['eager_step_ms'] = statistics.median([ms for t in timings for ms in t[mode + EAGER]])
            rows[mode]['compiled_over_eager_speed'] = rows[mode]['eager_step_ms'] / step_ms
    return rows


def _ratios(rows: Dict[str, Any]) -> Dict[str, float]:
    """The issue's ratios for (b) = dense RandSAC, and the same with a `_sparse` / `_flex` suffix for (b')."""
    ratios: Dict[str, float] = {}
    a, c, dense = rows.get('timm'), rows.get('nomask'), rows.get('randsac')
    for mode, suffix in (('randsac', ''), ('randsac_sparse', '_sparse'), ('randsac_flex', '_flex')):
        b = rows.get(mode)
        if not b:
            continue
        ratios['mask_share' + suffix] = b['masks_ms'] / b['step_ms']
        if c:
            ratios['masked_over_unmasked' + suffix] = b['step_ms'] / c['step_ms']
            ratios['memory_ratio' + suffix] = b['peak_memory_mb'] / max(c['peak_memory_mb'], 1e-9)
        if a:
            # model FLOPs (the dense count) per second: the sparse paths skip work, they do not shrink the model
            model_flops = (dense or b)['flops_per_step']
            ratios['flops_ratio_vs_timm' + suffix] = model_flops / b['step_ms'] * 1e3 / 1e12 / a['achieved_tflops']
            ratios['step_time_vs_timm' + suffix] = b['step_ms'] / a['step_ms']
        if dense and mode != 'randsac':
            ratios['step_time_vs_dense' + suffix] = b['step_ms'] / dense['step_ms']
    return ratios


def _print_table(encoder: str, rows: Dict[str, Any], ratios: Dict[str, float], hardware: str) -> None:
    grid = next((r['grid'] for r in rows.values() if r), None)
    print(f'\n{encoder}, grid {grid[0]}x{grid[1]}, on {hardware}' if grid else f'\n{encoder} on {hardware}')
    print(f'{"step":<15}{"img/s":>10}{"ms/step":>10}{"GFLOP/step":>12}{"TFLOP/s":>10}{"peak MB":>10}')
    for mode, r in rows.items():
        if r is None:
            continue
        print(f'{mode:<15}{r["images_per_s"]:>10.1f}{r["step_ms"]:>10.1f}{r["flops_per_step"] / 1e9:>12.1f}'
              f'{r["achieved_tflops"]:>10.3f}{r["peak_memory_mb"]:>10.0f}')
    for key, value in ratios.items():
        print(f'  {key:<22} {value:.4f}')


if __name__ == '__main__':
    main()
