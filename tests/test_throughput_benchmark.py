"""benchmarks/throughput.py: the modes are timed in turns in one process and the ratios come from those times."""
import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def throughput():
    spec = importlib.util.spec_from_file_location('throughput', os.path.join(ROOT, 'benchmarks', 'throughput.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_modes_runs_every_mode_in_turns(throughput, monkeypatch):
    order = []
    real_step_fn = throughput._step_fn

    def recording_step_fn(mode, *args, **kwargs):
        step = real_step_fn(mode, *args, **kwargs)

        def recorded(*a, **k):
            order.append(mode)
            return step(*a, **k)
        return recorded
    monkeypatch.setattr(throughput, '_step_fn', recording_step_fn)
    modes = ['timm', 'randsac', 'nomask']
    times = throughput.time_modes(modes, 'randsac_vit_micro_patch4_32', 2, torch.device('cpu'), False, False,
                                  warmup=1, steps=3, segments=None)
    assert {mode: len(t) for mode, t in times.items()} == {mode: 3 for mode in modes}
    assert all(ms > 0 for t in times.values() for ms in t)
    # warm-up of each mode, then three rounds a b c, a b c, a b c
    assert order == modes + modes * 3


def test_rows_and_ratios_follow_the_timed_steps(throughput):
    profiles = {mode: throughput.profile_mode(mode, 'randsac_vit_micro_patch4_32', 2, torch.device('cpu'), False,
                                              False, None) for mode in ('timm', 'randsac', 'nomask')}
    assert all(p['flops_per_step'] > 0 for p in profiles.values())
    assert profiles['randsac']['flops_per_step'] == profiles['nomask']['flops_per_step']  # the same network
    assert 'masks_ms' in profiles['randsac'] and 'masks_ms' not in profiles['nomask']
    # two timing runs: the step time is the median over all their steps
    timings = [{'timm': [1.0, 9.0], 'randsac': [3.0, 4.0], 'nomask': [2.0, 2.0]},
               {'timm': [2.0, 2.0], 'randsac': [5.0, 6.0], 'nomask': [4.0, 4.0]}]
    rows = throughput._rows(profiles, timings, batch_size=2)
    assert rows['randsac']['step_ms'] == 4.5 and rows['nomask']['step_ms'] == 3.0 and rows['timm']['step_ms'] == 2.0
    assert rows['randsac']['step_ms_all'] == [3.0, 4.0, 5.0, 6.0]
    ratios = throughput._ratios(rows)
    assert ratios['masked_over_unmasked'] == pytest.approx(1.5)
    assert ratios['mask_share'] == pytest.approx(profiles['randsac']['masks_ms'] / 4.5)
    assert ratios['flops_ratio_vs_timm'] == pytest.approx(
        profiles['randsac']['flops_per_step'] / 4.5 / (profiles['timm']['flops_per_step'] / 2.0))


def test_compiled_rows_carry_their_eager_steps(throughput):
    profiles = {'randsac': dict(flops_per_step=10.0, masks_ms=0.1, first_step_s=5.0)}
    timings = [{'randsac': [2.0, 2.0, 4.0], 'randsac' + throughput.EAGER: [3.0, 3.0, 1.0]}]
    row = throughput._rows(profiles, timings, batch_size=4)['randsac']
    assert row['step_ms'] == 2.0 and row['eager_step_ms'] == 3.0
    assert row['compiled_over_eager_speed'] == pytest.approx(1.5)
