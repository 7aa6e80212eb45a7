"""The race's reading of curves (benchmarks/race.py): time to a threshold is the first evaluation at or above it."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
from race import _stats, budget_epochs, time_to  # noqa: E402


def test_time_to_is_the_first_evaluation_at_or_above_the_threshold():
    cpu_min, accuracy = [0.0, 5.0, 10.0, 15.0], [60.0, 80.0, 79.0, 85.0]
    assert time_to(cpu_min, accuracy, 80.0) == 5.0  # reached at 5, dipped after: still 5
    assert time_to(cpu_min, accuracy, 84.6) == 15.0
    assert time_to(cpu_min, accuracy, 90.0) is None
    assert time_to(cpu_min, [None, 81.0, None, None], 80.0) == 5.0  # evaluations without this readout are skipped


def test_stats_say_which_seeds_never_got_there():
    assert _stats([4.0, 6.0]) == '5.0 ± 1.4'
    assert _stats([None, None]) == 'never'
    assert _stats([4.0, None]) == '4.0, never (not all seeds)'


def test_budget_epochs_spend_the_budget_not_a_whole_number_of_epochs():
    # 15 CPU-min at 4 CPU-s per step is 225 steps: 1.44 epochs of 156 steps, which whole epochs would round to 1
    # (156 steps, 10.4 CPU-min) while a 3.18 s/step recipe would round 1.81 up to 2 (16.5 CPU-min)
    epochs = budget_epochs(15, 4.0, 156)
    assert round(epochs * 156) == 225 and 1.4 < epochs < 1.5
    assert round(budget_epochs(15, 3.18, 156) * 156) == 283
    assert budget_epochs(0.001, 4.0, 156) * 156 == 1  # at least one step


def _args(**kw):
    import argparse

    values = dict(train_samples=60000, batch_size=128, blr=1.5e-3, data_dir=None, eval_train_samples=5000,
                  eval_test_samples=2000, calibration_steps=12, budget_cpu_min=60.0, evals=8)
    return argparse.Namespace(**dict(values, **kw))


def test_calibration_is_measured_again_when_a_flag_changes_the_cost_per_step(tmp_path, monkeypatch):
    """A calibration kept for batch 128 must not give a batch-256 run its rate (twice the steps, twice the budget)."""
    import json

    import race
    import torch

    key = f'MAE@{torch.get_num_threads()}threads'
    recipes = {'MAE': race.RECIPES['MAE']}
    settings = {k: v for k, v in race._values(_args(), 'MAE', recipes, 0, '').items()
                if k not in ('seed', 'output_dir', 'data_dir')}
    path = tmp_path / 'calibration.json'
    path.write_text(json.dumps({key: dict(cpu_s_per_step=0.5, recipe=recipes['MAE'],
                                          settings=json.loads(json.dumps(settings)))}))
    trained = []
    monkeypatch.setattr(race, '_train', lambda values: trained.append(values) or (_ for _ in ()).throw(
        RuntimeError('calibrating')))
    assert race.calibrate(_args(), recipes, str(path), str(tmp_path))[key]['cpu_s_per_step'] == 0.5
    assert not trained
    with pytest.raises(RuntimeError, match='calibrating'):
        race.calibrate(_args(batch_size=256), recipes, str(path), str(tmp_path))
    assert trained[0]['batch_size'] == 256


def test_a_finished_run_from_other_settings_is_refused_not_reused(tmp_path):
    import json

    from race import check_reusable

    values = dict(model='mae_pretrain_vit_micro_patch4_32', batch_size=128, epochs=3.5, data_dir='/a')
    path = tmp_path / 'MAE-seed0.json'
    assert not check_reusable(str(path), values)
    path.write_text(json.dumps(dict(config=dict(values, data_dir='/b'))))  # the same data elsewhere: fine
    assert check_reusable(str(path), values)
    with pytest.raises(SystemExit, match='batch_size'):
        check_reusable(str(path), dict(values, batch_size=256))


def test_a_recipe_race_gets_its_own_tag_unless_one_is_given():
    import race

    assert race.parse_args([]).tag == 'race'
    assert race.parse_args(['--recipes', 'best.json']).tag == 'race_recipe'
    assert race.parse_args(['--recipes', 'best.json', '--tag', 'mine']).tag == 'mine'


def test_a_worker_calibrates_its_own_method_in_its_own_file(tmp_path, monkeypatch):
    """The two methods' first workers calibrate at the same time (side by side, as they then train): each measures
    only its own method and writes only its own file, so neither overwrites the other's rate."""
    import race

    seen = []
    monkeypatch.setattr(race, 'calibrate', lambda args, recipes, path, work: seen.append((list(recipes), path)) or (
        _ for _ in ()).throw(RuntimeError('calibrated')))
    with pytest.raises(RuntimeError, match='calibrated'):
        race.run_one(_args(), dict(race.RECIPES), 'MAE', 1, str(tmp_path), str(tmp_path / 'work'))
    assert seen == [(['MAE'], str(tmp_path / 'calibration' / 'MAE.json'))]


def test_a_finished_run_is_checked_at_the_rate_kept_beside_it(tmp_path):
    import json

    import race
    import torch

    recipes, args = {'MAE': race.RECIPES['MAE']}, _args()
    key = f'MAE@{torch.get_num_threads()}threads'
    assert not race.finished(args, recipes, 'MAE', 0, str(tmp_path), 'work')  # no row file: still to run
    calibration = {key: dict(cpu_s_per_step=0.5)}
    values = race.run_values(args, recipes, 'MAE', 0, 'work', calibration)
    (tmp_path / 'MAE-seed0.json').write_text(json.dumps(dict(config=values)))
    with pytest.raises(SystemExit, match='no calibration'):
        race.finished(args, recipes, 'MAE', 0, str(tmp_path), 'work')
    (tmp_path / 'calibration').mkdir()
    (tmp_path / 'calibration' / 'MAE.json').write_text(json.dumps(calibration))
    assert race.finished(args, recipes, 'MAE', 0, str(tmp_path), 'work')
    (tmp_path / 'calibration' / 'MAE.json').write_text(json.dumps({key: dict(cpu_s_per_step=0.4)}))
    with pytest.raises(SystemExit, match='epochs'):  # another rate buys other epochs: not this run
        race.finished(args, recipes, 'MAE', 0, str(tmp_path), 'work')


def test_the_table_reads_run_files_beside_the_calibration_folder(tmp_path, capsys):
    import race

    (tmp_path / 'calibration').mkdir()  # a folder among the row files: skipped, not opened as one
    race.write_table(_args(), str(tmp_path), 'race_test', [])
    assert 'no finished runs yet' in capsys.readouterr().out


def _schedule(tmp_path, monkeypatch, calibrated_at, fails_at=None):
    """Run race.main with --parallel 4 (more processes than methods) over fake runs on a fake clock: run i of the
    launch order ends at tick 20 (or `fails_at[i]`, with an error), a method's first run writes its calibration at
    tick `calibrated_at[method]`. The tick each (method, seed) started at, and main's SystemExit or None."""
    import json
    import time

    import race
    import torch

    clock, started, runs = [0], {}, []
    rows_dir = tmp_path / 'race'
    (rows_dir / 'calibration').mkdir(parents=True)
    argv = ['--parallel', '4', '--seeds', '2', '--threads', str(torch.get_num_threads())]
    args = race.parse_args(argv)
    recipes = dict(race.RECIPES)

    class FakeRun:
        def __init__(self, cmd):
            self.args, self.index = cmd, len(runs)
            started[(cmd[-2], int(cmd[-1]))] = clock[0]
            runs.append(self)

        def poll(self):
            end = (fails_at or {}).get(self.index)
            if end is not None and clock[0] >= end:
                return 1
            return 0 if clock[0] >= 20 else None

    def tick(_seconds):
        clock[0] += 1
        for method, at in calibrated_at.items():
            if clock[0] == at:  # what the method's first worker writes once its calibration run is measured
                (rows_dir / 'calibration' / f'{method}.json').write_text(json.dumps(
                    {race._calibration_key(method): dict(cpu_s_per_step=0.5, settings=race._calibration_settings(
                        args, method, recipes))}))

    monkeypatch.setattr(race, 'RESULTS', str(tmp_path))
    monkeypatch.setattr(race, 'pixel_floors', lambda *a: None)
    monkeypatch.setattr(race, 'finished', lambda *a: False)
    monkeypatch.setattr(race, 'write_table', lambda *a: None)
    monkeypatch.setattr(race.subprocess, 'Popen', FakeRun)
    monkeypatch.setattr(time, 'sleep', tick)
    try:
        race.main(argv + ['--tag', 'race'])
    except SystemExit as e:
        return started, e
    return started, None


def test_a_methods_second_run_waits_until_its_first_run_has_calibrated_it(tmp_path, monkeypatch):
    """Two runs of one method never calibrate at once (they would measure two rates and get two step counts): with
    --parallel 4 the seed-0 runs start together, and each method's seed-1 run waits for its own method's rate."""
    started, error = _schedule(tmp_path, monkeypatch, calibrated_at={'RandSAC': 5, 'MAE': 3})
    assert error is None
    assert started[('RandSAC', 0)] == started[('MAE', 0)] == 0
    assert started[('RandSAC', 1)] >= 5  # the launch order is seed-major: MAE seed 1 queues behind it
    assert started[('MAE', 1)] >= started[('RandSAC', 1)]


def test_a_first_run_that_dies_before_calibrating_hands_the_calibration_to_the_next(tmp_path, monkeypatch):
    """No deadlock: when a method's first run fails before writing its rate, the next run of that method starts
    (and calibrates), and the failure is reported."""
    started, error = _schedule(tmp_path, monkeypatch, calibrated_at={'MAE': 3}, fails_at={0: 7})  # run 0: RandSAC 0
    assert started[('RandSAC', 1)] >= 7
    assert error is not None and 'RandSAC 0' in str(error)
