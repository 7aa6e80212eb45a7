"""`benchmarks/race_continue.py`: run 2 starts from run 1's last weights with a new data order and the same step
count, finished stages are not rerun, and the result file holds what each stage measured."""
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import race_continue  # noqa: E402

from randsac_timm.train.run_log import read_log  # noqa: E402


def _tiny(monkeypatch):
    """The race's committed MAE config, shrunk to two steps per run on 128 real images; the probe stubbed (it returns
    the checkpoint it was given)."""
    real = race_continue.race_config

    def tiny_config(method, seed=0):
        race = real(method, seed)
        race['config'].update(max_train_samples=128, epochs=1, warmup_epochs=0.5, eval_every=1,
                              eval_train_samples=100, eval_test_samples=50)
        return race

    monkeypatch.setattr(race_continue, 'race_config', tiny_config)
    monkeypatch.setattr(race_continue, 'probe',
                        lambda checkpoint, out, data_dir: dict(top1=50.0, checkpoint=checkpoint))


@pytest.mark.parametrize('seed', [0, 1])
def test_second_run_continues_the_first_and_finished_stages_are_kept(tmp_path, monkeypatch, seed):
    _tiny(monkeypatch)
    out = tmp_path / 'MAE.json'
    table_written = os.stat(race_continue.TABLE).st_mtime_ns
    race_continue.main(['--method', 'MAE', '--seed', str(seed), '--work', str(tmp_path), '--out', str(out)])
    run1, run2 = tmp_path / f'MAE-seed{seed}', tmp_path / f'MAE-seed{seed}-x2'
    start1, = [r for r in read_log(str(run1 / 'log.jsonl')) if r['event'] == 'start']
    start2, = [r for r in read_log(str(run2 / 'log.jsonl')) if r['event'] == 'start']
    assert start1['init'] is None
    assert start2['init']['path'] == str(run1 / 'checkpoint-last.pth')  # run 2 starts from run 1's last weights
    assert start1['config']['seed'] == seed  # the race's own run of that seed
    assert start2['config']['seed'] == seed + 1  # a new data order
    result = json.loads(out.read_text())
    assert result['run1']['steps'] == result['run2']['steps'] == 2  # as many steps again
    assert result['run2']['probe']['checkpoint'] == str(run2 / 'checkpoint-last.pth')
    assert result['run1']['probe']['checkpoint'] == str(run1 / 'checkpoint-last.pth')
    assert result['rerun_check']['rerun_final_loss'] == result['run1']['final_loss']
    assert result['run1']['online_evals'] and result['run2']['online_evals']
    assert os.stat(race_continue.TABLE).st_mtime_ns == table_written  # a test's runs stay out of the committed table

    # a second invocation finds both runs finished: nothing is trained again
    race_continue.main(['--method', 'MAE', '--seed', str(seed), '--work', str(tmp_path), '--out', str(out)])
    for run in (run1, run2):
        assert sum(r['event'] == 'start' for r in read_log(str(run / 'log.jsonl'))) == 1
    assert json.loads(out.read_text())['invocations'] == [dict(threads=1, run1_step=0, run2_step=0),
                                                           dict(threads=1, run1_step=2, run2_step=2)]


def test_run_1_is_probed_and_kept_before_run_2_trains(tmp_path, monkeypatch):
    # a session that stops during run 2 must keep run 1's full-split numbers
    _tiny(monkeypatch)
    out = tmp_path / 'MAE.json'

    def stopped(values):
        if values.get('init'):
            raise KeyboardInterrupt  # run 2 is killed before it trains a step
        real_train(values)

    real_train = race_continue.train
    monkeypatch.setattr(race_continue, 'train', stopped)
    with pytest.raises(KeyboardInterrupt):
        race_continue.main(['--method', 'MAE', '--work', str(tmp_path), '--out', str(out)])
    result = json.loads(out.read_text())
    assert result['run1']['probe']['checkpoint'] == str(tmp_path / 'MAE-seed0' / 'checkpoint-last.pth')
    assert 'run2' not in result


def test_an_invocation_killed_during_run_1_is_on_record(tmp_path, monkeypatch):
    # its thread count must be known even though it never finished a stage
    _tiny(monkeypatch)
    out = tmp_path / 'MAE.json'

    def killed(values):
        raise KeyboardInterrupt

    monkeypatch.setattr(race_continue, 'train', killed)
    with pytest.raises(KeyboardInterrupt):
        race_continue.main(['--method', 'MAE', '--work', str(tmp_path), '--out', str(out), '--threads', '2'])
    assert json.loads(out.read_text())['invocations'] == [dict(threads=2, run1_step=0, run2_step=0)]


def test_a_killed_first_run_is_not_finished(tmp_path):
    log = tmp_path / 'log.jsonl'
    log.write_text(json.dumps(dict(event='start')) + '\n' + json.dumps(dict(event='train', step=1, epoch=0.5)) + '\n')
    assert not race_continue.finished(str(tmp_path), 1.0)
    with open(log, 'a') as f:
        f.write(json.dumps(dict(event='train', step=2, epoch=1.0)) + '\n' + json.dumps(dict(event='end')) + '\n')
    assert race_continue.finished(str(tmp_path), 1.0)


def test_a_race_run_that_was_never_committed_is_one_line_and_exit_2(tmp_path):
    script = os.path.join(os.path.dirname(race_continue.__file__), 'race_continue.py')
    done = subprocess.run([sys.executable, script, '--method', 'MAE', '--seed', '7', '--work', str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count('\n') == 0 and 'no race record' in done.stderr and 'MAE-seed7' in done.stderr
    assert not os.listdir(tmp_path)  # nothing was started


def _probe(lars, converged, knn):
    return dict(top1=lars, lbfgs_top1=converged, knn_top1=knn, per_block_top1=[converged - 2, converged],
                pixel_linear_top1=84.5, pixel_lbfgs_top1=84.1, pixel_knn_top1=85.7)


def test_the_table_sets_each_budget_of_both_methods_beside_the_other_with_the_seeds_spread(tmp_path):
    results = tmp_path / 'results'
    (results / 'race_continue').mkdir(parents=True)
    for seed, shift in ((0, 0.0), (1, 1.0)):
        run = dict(steps=100, train_cpu_min=10.0)
        (results / 'race_continue' / f'MAE-seed{seed}.json').write_text(json.dumps(dict(
            invocations=[dict(threads=1)], run1=dict(run, probe=_probe(80 + shift, 83 + shift, 81 + shift)),
            run2=dict(run, probe=_probe(82 + shift, 85 + shift, 83 + shift)))))
    table = race_continue.write_table(str(tmp_path / 'table.md'), results=str(results))
    assert table == (tmp_path / 'table.md').read_text()
    rows = [line.split(' | ') for line in table.splitlines() if line.startswith('| MAE |')]
    per_run = {(r[1], r[2]): r for r in rows if len(r) > 6}
    assert per_run['2 race budgets', '1'][3] == '200'  # run 2's steps count run 1's too
    assert per_run['1 race budget', '0'][6:9] == ['80.00', '83.00', '81.00']
    assert per_run['2 race budgets', '1'][9] == '2: 86.00'
    summary = {r[1]: r for r in rows if len(r) == 6}
    assert summary['2 race budgets'][2:] == ['2', '82.5 ± 0.7', '85.5 ± 0.7', '83.5 ± 0.7 |']
    # RandSAC's seed 0 comes from the committed files measured before this script (the shipped record, the
    # continuation's result), whatever `results` is
    assert '| RandSAC | 2 race budgets | 0 | 11364 |' in table


def test_run_2s_steps_in_all_count_run_1_before_run_1_is_probed(tmp_path):
    # MAE seed 0 was probed run 2 first (the script then probed at the end), so its file once had run 2 without run 1
    (tmp_path / 'race_continue').mkdir()
    (tmp_path / 'race_continue' / 'MAE-seed0.json').write_text(json.dumps(dict(
        invocations=[dict(threads=1)], run1=dict(steps=100, train_cpu_min=10.0),
        run2=dict(steps=100, train_cpu_min=10.0, probe=_probe(82, 85, 83)))))
    table = race_continue.write_table(str(tmp_path / 'table.md'), seeds=(0,), results=str(tmp_path))
    mae, = [line for line in table.splitlines() if line.startswith('| MAE | 2 race budgets | 0 |')]
    assert mae.split(' | ')[3] == '200'
    assert not [line for line in table.splitlines() if line.startswith('| MAE | 1 race budget | 0 |')]
