"""The ablation grid's time accounting: the equal-CPU-time MAE row must never get a budget from a partial log."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
from ablation_grid import run_time  # noqa: E402


def _rec(event, wall=None, cpu=None):
    record = dict(event=event)
    if wall is not None:
        record.update(wall_time_s=wall, cpu_time_s=cpu)
    return record


def test_resumed_run_adds_up_its_invocations():
    log = [_rec('start'), _rec('train', 5, 9), _rec('end', 10, 19),
           _rec('resume'), _rec('start'), _rec('train', 3, 5), _rec('end', 4, 7)]
    assert run_time(log) == (14, 26, True)


def test_killed_invocation_makes_the_time_a_lower_bound():
    log = [_rec('start'), _rec('train', 5, 9), _rec('epoch', 8, 15),  # killed: no end record
           _rec('resume'), _rec('start'), _rec('end', 4, 7)]
    assert run_time(log) == (12, 22, False)


def test_log_without_any_timed_record_is_incomplete():
    assert run_time([_rec('start')]) == (0.0, 0.0, False)


def test_equal_time_row_waits_for_a_complete_reference(tmp_path):
    import json

    from ablation_grid import EQUAL_TIME_RATE, EQUAL_TIME_REFERENCE, _equal_time_budget, _slug

    def write(name, **record):
        (tmp_path / f'{_slug(name)}-seed0.json').write_text(json.dumps(record))

    write(EQUAL_TIME_RATE, pretrain_cpu_s=600.0, steps=300)  # MAE: 2 CPU-s a step
    write(EQUAL_TIME_REFERENCE, pretrain_cpu_s=None, steps=312)  # partly from a killed run: unknown
    assert _equal_time_budget(str(tmp_path), 0) is None
    write(EQUAL_TIME_REFERENCE, pretrain_cpu_s=1000.0, steps=312)
    assert _equal_time_budget(str(tmp_path), 0)['steps'] == 500


def test_a_killed_and_resumed_reference_gets_its_cpu_time_from_its_per_step_rate(tmp_path):
    """The reference row was killed at step 60 (last record at 40, last checkpoint at 20) and resumed from step 20:
    its logged sum (40 + 90 CPU-s) counts steps 20-40 twice. Both invocations ran at 1 CPU-s a step between their
    timed records, so its 100 steps cost 100 CPU-s, and MAE at 0.5 CPU-s a step gets 200 steps; without the log
    beside its checkpoint the row still waits."""
    import json

    from ablation_grid import EQUAL_TIME_RATE, EQUAL_TIME_REFERENCE, _equal_time_budget, _slug

    def train(step, cpu):
        return dict(event='train', step=step, wall_time_s=cpu, cpu_time_s=cpu)

    run = tmp_path / 'run'
    run.mkdir()
    log = [dict(event='start', step=0), train(20, 25), train(40, 45),  # killed: no end record
           dict(event='resume', step=20), dict(event='start', step=20), train(40, 25), train(100, 85),
           dict(event='end', step=100, wall_time_s=90, cpu_time_s=90)]
    (run / 'log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in log))
    rows = tmp_path / 'rows'
    rows.mkdir()
    (rows / f'{_slug(EQUAL_TIME_RATE)}-seed0.json').write_text(json.dumps(dict(pretrain_cpu_s=50.0, steps=100)))
    ref = dict(pretrain_cpu_s=None, steps=100, checkpoint=str(run / 'checkpoint-last.pth'))
    (rows / f'{_slug(EQUAL_TIME_REFERENCE)}-seed0.json').write_text(json.dumps(ref))
    budget = _equal_time_budget(str(rows), 0)
    assert budget['steps'] == 200 and budget['reference_cpu_s'] == 100 and budget['reference_estimated']
    assert not budget['rate_estimated']
    ref['checkpoint'] = str(tmp_path / 'elsewhere' / 'checkpoint-last.pth')
    (rows / f'{_slug(EQUAL_TIME_REFERENCE)}-seed0.json').write_text(json.dumps(ref))
    assert _equal_time_budget(str(rows), 0) is None


def test_equal_time_row_refuses_cpu_times_from_different_thread_counts(tmp_path):
    import json

    from ablation_grid import EQUAL_TIME_RATE, EQUAL_TIME_REFERENCE, _equal_time_budget, _slug

    def write(name, **record):
        (tmp_path / f'{_slug(name)}-seed1.json').write_text(json.dumps(record))

    write(EQUAL_TIME_RATE, pretrain_cpu_s=600.0, steps=300, torch_threads=2)
    write(EQUAL_TIME_REFERENCE, pretrain_cpu_s=1000.0, steps=312, torch_threads=1)
    assert _equal_time_budget(str(tmp_path), 1) is None
    write(EQUAL_TIME_RATE, pretrain_cpu_s=600.0, steps=300, torch_threads=1)
    assert _equal_time_budget(str(tmp_path), 1)['steps'] == 500


def _recipes():
    from ablation_grid import MAE, RANDSAC

    return {'RandSAC': dict(model=RANDSAC, segments='blob:11-5', norm_pix_loss=False, img_size=28, blr=3e-3,
                            batch_size=64, skip_memory='paper', crop_scale=[0.5, 1.0]),
            'MAE': dict(model=MAE, mask_ratio=0.6, norm_pix_loss=True, img_size=28, blr=0.75e-3, batch_size=256)}


def test_a_recipe_sets_everything_but_what_the_row_tests(tmp_path):
    """--recipes: each claim row keeps its wrapper, segments and decoder, and takes every other value (target
    included) from its method's recipe; each resulting row is a valid pretraining config."""
    import argparse

    from ablation_grid import CLAIM_ROWS, MAE, ROWS, _row_values, _with_recipe

    from randsac_timm.train.config import PretrainConfig, make_config

    assert set(CLAIM_ROWS) <= {r['name'] for r in ROWS}
    recipes = _recipes()
    rows = {r['name']: _with_recipe(r, recipes) for r in ROWS if r['name'] in CLAIM_ROWS}
    assert rows['random init']['pretrain'] is None
    mae = rows['MAE 75%']['pretrain']
    assert mae == recipes['MAE']  # MAE's own mask ratio, lr and batch, not RandSAC's
    flat = rows['blob(7), norm-pix']['pretrain']
    assert flat['segments'] == 'blob:7' and flat['norm_pix_loss'] is False and flat['img_size'] == 28
    assert flat['skip_memory'] == 'paper' and flat['blr'] == 3e-3
    assert rows['patch-random']['pretrain']['norm_pix_loss'] is False  # one target for every row
    plain = rows['blob 11->5 plain decoder']['pretrain']
    assert plain['decoder'] == 'plain' and 'skip_memory' not in plain  # a plain decoder has no levels to mix
    args = argparse.Namespace(train_samples=1000, epochs=1.5, batch_size=128, blr=1.5e-3, device='cpu', amp=False,
                              data_dir=None)
    for name, row in rows.items():
        if row['pretrain'] is not None:
            cfg = make_config(PretrainConfig, _row_values(row, 0, args, str(tmp_path / 'run')))
            assert cfg.batch_size == (256 if row['pretrain']['model'] == MAE else 64), name


def test_a_recipes_file_goes_over_the_defaults_and_bad_ones_are_one_clear_error(tmp_path):
    """A partial entry keeps its method's default wrapper and target (an MAE entry without `model` must not train
    RandSAC under the MAE label); a wrapper of the other objective, an unknown field or a missing file is refused."""
    import json

    import pytest
    from ablation_grid import MAE, RECIPES, load_recipes

    path = tmp_path / 'best.json'
    path.write_text(json.dumps({'MAE': dict(mask_ratio=0.6)}))
    recipes = load_recipes(str(path))
    assert recipes['MAE'] == dict(RECIPES['MAE'], mask_ratio=0.6) and recipes['MAE']['model'] == MAE
    assert recipes['RandSAC'] == RECIPES['RandSAC']
    path.write_text(json.dumps({'MAE': dict(_recipes()['RandSAC'])}))
    with pytest.raises(SystemExit, match='other objective'):
        load_recipes(str(path))
    path.write_text(json.dumps({'MAE': dict(mask_ratoi=0.6)}))
    with pytest.raises(SystemExit, match='mask_ratoi'):
        load_recipes(str(path))
    with pytest.raises(SystemExit, match='no such file'):
        load_recipes(str(tmp_path / 'missing.json'))


def test_a_row_file_from_other_settings_is_refused_not_reused(tmp_path, monkeypatch):
    """--recipes under a tag that holds the fair grid's rows must not report them as the recipe's."""
    import json

    import pytest
    import ablation_grid
    from ablation_grid import ROWS, _slug

    row = next(r for r in ROWS if r['name'] == 'blob(7), norm-pix')
    monkeypatch.setattr(ablation_grid, 'RESULTS', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    rows_dir = tmp_path / 'mixed'
    rows_dir.mkdir()
    fair_row = dict(row=row['name'], pretrain=row['pretrain'])
    (rows_dir / f'{_slug(row["name"])}-seed0.json').write_text(json.dumps(fair_row))
    recipes = tmp_path / 'best.json'
    recipes.write_text(json.dumps({'RandSAC': dict(img_size=28)}))
    with pytest.raises(SystemExit, match='other settings'):
        ablation_grid.main(['--recipes', str(recipes), '--tag', 'mixed', '--rows', row['name'], '--seeds', '1'])


def test_a_restarted_run_counts_only_its_last_attempt():
    """A run killed before its first checkpoint starts again at step 0: the thrown-away attempt's time is not its."""
    log = [_rec('start'), _rec('train', 5, 9),  # killed, nothing saved
           dict(event='start', step=0), _rec('train', 3, 5), _rec('end', 4, 7)]
    log[0]['step'] = 0
    assert run_time(log) == (4, 7, True)


def _recipe_row(name, recipes_path):
    """Grid row `name` as the recipe file at `recipes_path` makes it."""
    import ablation_grid

    recipes = ablation_grid.load_recipes(str(recipes_path))
    return next(ablation_grid._with_recipe(r, recipes) for r in ablation_grid.ROWS if r['name'] == name)


def _table_cells(table):
    """A markdown table's rows by their first cell: {first cell: the row split at ' | '}."""
    rows = [line.split(' | ') for line in table.splitlines() if line.startswith('| ')]
    return {row[0].lstrip('| '): row for row in rows}


def test_the_recipe_table_says_what_each_row_trained(tmp_path, monkeypatch):
    """Under a recipe, 'MAE 75%' trains at the recipe's mask ratio and 'blob(11), norm-pix' on its target: the
    table must say what ran (28x28 native input, mask 0.85, raw target), not what the row's name suggests."""
    import json

    import ablation_grid
    from ablation_grid import _slug

    monkeypatch.setattr(ablation_grid, 'RESULTS', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    recipes = dict(_recipes(), MAE=dict(_recipes()['MAE'], mask_ratio=0.85, norm_pix_loss=False))
    path = tmp_path / 'best.json'
    path.write_text(json.dumps(recipes))
    rows_dir = tmp_path / 'recipe'
    rows_dir.mkdir()
    for name in ('MAE 75%', 'blob(11), norm-pix'):
        record = dict(row=name, seed=0, pretrain=_recipe_row(name, path)['pretrain'], top1=80.0, lbfgs_top1=82.0,
                      knn_top1=79.0, per_block_top1=[80.0, 82.0], images_per_s=100.0, pretrain_cpu_s=600.0,
                      torch_threads=1)
        (rows_dir / f'{_slug(name)}-seed0.json').write_text(json.dumps(record))
    ablation_grid.main(['--recipes', str(path), '--tag', 'recipe', '--seeds', '1', '--table-only'])
    table = (tmp_path / 'recipe.md').read_text()
    assert '28x28 input (native), 7x7 grid' in table and '8x8' not in table
    lines = _table_cells(table)
    assert lines['MAE 75%'][2:4] == ['raw', 'mask 0.85']
    assert lines['blob(11), norm-pix'][2:4] == ['raw', 'blob:11, skip decoder (paper)']
    summary = json.loads((tmp_path / 'recipe.json').read_text())
    assert {r['row']: r.get('trained_with') for r in summary['rows']}['MAE 75%'] == 'mask 0.85'


def _seeded(name, **by_seed):
    """Row records of `name` with converged top-1 by seed, e.g. _seeded('x', s0=84.0, s1=85.0)."""
    return [dict(row=name, seed=int(k[1:]), lbfgs_top1=v) for k, v in by_seed.items()]


def test_a_claim_holds_only_when_every_seed_agrees_by_more_than_the_seed_spread():
    from ablation_grid import claim_verdict

    def verdict(better, worse):
        return claim_verdict(_seeded('a', **better), _seeded('b', **worse), 'lbfgs_top1')

    # paired by seed, not by position: seed 1 listed first on one side
    clear = verdict(dict(s1=85.0, s0=84.0), dict(s0=82.0, s1=83.0))
    assert clear['verdict'] == 'holds' and clear['diffs'] == [2.0, 2.0] and clear['seeds'] == [0, 1]
    assert verdict(dict(s0=84.0, s1=84.6), dict(s0=83.9, s1=84.4))['verdict'] == 'leans (within the seed spread)'
    assert verdict(dict(s0=82.0, s1=83.0), dict(s0=84.0, s1=85.0))['verdict'] == 'reversed'
    slightly_worse = verdict(dict(s0=83.9, s1=84.4), dict(s0=84.0, s1=84.6))
    assert slightly_worse['verdict'] == 'leans reversed (within the seed spread)'
    assert verdict(dict(s0=84.0, s1=83.0), dict(s0=83.0, s1=84.0))['verdict'] == 'seeds disagree'
    assert verdict(dict(s0=84.0, s1=83.0), dict(s0=83.0))['verdict'] == 'one seed so far'
    assert verdict(dict(s0=84.0), dict(s1=83.0))['verdict'] == 'waiting for both rows'


def test_the_recipe_table_tests_the_claims_and_marks_an_estimated_cpu_time(tmp_path, monkeypatch):
    """A killed and resumed row's CPU time is shown as an estimate (its logged sum is no measure), and every claim
    gets a verdict, or says which row it still waits for."""
    import json

    import ablation_grid
    from ablation_grid import _slug

    monkeypatch.setattr(ablation_grid, 'RESULTS', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'best.json'
    path.write_text(json.dumps(_recipes()))
    rows_dir = tmp_path / 'recipe'
    rows_dir.mkdir()
    scores = {'blob 11->5 (skips)': (84.0, 85.0), 'blob(11), norm-pix': (82.0, 83.0)}
    for name, (first, second) in scores.items():
        row = _recipe_row(name, path)
        for seed, top1 in enumerate((first, second)):
            resumed = name == 'blob(11), norm-pix' and seed == 1
            record = dict(row=name, seed=seed, pretrain=row['pretrain'], top1=top1 - 2, lbfgs_top1=top1,
                          knn_top1=top1 - 3, images_per_s=100.0, torch_threads=1,
                          pretrain_cpu_s=None if resumed else 3000.0,
                          pretrain_cpu_s_estimated=2700.0 if resumed else None)
            (rows_dir / f'{_slug(name)}-seed{seed}.json').write_text(json.dumps(record))
    ablation_grid.main(['--recipes', str(path), '--tag', 'recipe', '--table-only'])
    table = (tmp_path / 'recipe.md').read_text()
    cells = _table_cells(table)
    assert cells['blob(11), norm-pix'][10] == '47.5 ± 3.5 (seed 1: estimated)'
    assert cells['blob 11->5 (skips)'][10] == '50.0 ± 0.0'
    hierarchy = cells['hierarchy beats flat: 11 -> 5 over 11 segments']
    assert hierarchy[3:6] == ['0, 1', '+2.0 (+2.0, +2.0)', 'holds']
    assert cells['hierarchy beats flat: 7 -> 3 over 7 segments'][5] == 'waiting for both rows'
    claims = {c['claim']: c for c in json.loads((tmp_path / 'recipe.json').read_text())['claims']}
    assert claims['hierarchy beats flat: 11 -> 5 over 11 segments']['lars']['verdict'] == 'holds'


def test_only_seeds_runs_just_those_seeds_and_refuses_one_outside_the_range(tmp_path, monkeypatch):
    """Two processes split a row's seeds with --only-seeds: each must run its own seed and never the other's."""
    import json

    import pytest
    import ablation_grid
    from ablation_grid import _slug

    monkeypatch.setattr(ablation_grid, 'RESULTS', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'best.json'
    path.write_text(json.dumps(_recipes()))
    pretrained = []

    def fake_pretrain(row, seed, args, run_dir, max_steps=None):
        pretrained.append((row['name'], seed))
        return dict(checkpoint=str(tmp_path / f'ckpt-{seed}.pth'))

    monkeypatch.setattr(ablation_grid, '_pretrain', fake_pretrain)
    probed = dict(top1=79.0, lbfgs_top1=80.0, knn_top1=78.0)
    monkeypatch.setattr(ablation_grid, '_probed', lambda record, *a, **k: dict(record, **probed))
    row = 'blob 16->4'
    argv = ['--recipes', str(path), '--tag', 'split', '--rows', row]
    ablation_grid.main(argv + ['--only-seeds', '1'])
    assert pretrained == [(row, 1)]
    rows_dir = tmp_path / 'split'
    assert not (rows_dir / f'{_slug(row)}-seed0.json').exists()
    assert (rows_dir / f'{_slug(row)}-seed1.json').exists()
    ablation_grid.main(argv)  # without the flag: seed 1 is finished, so only seed 0 runs
    assert pretrained == [(row, 1), (row, 0)]
    with pytest.raises(SystemExit, match='--only-seeds \\[2\\]: give seeds from 0 to 1'):
        ablation_grid.main(argv + ['--only-seeds', '2'])


def test_an_invocation_on_some_rows_still_tabulates_the_whole_grid(tmp_path, monkeypatch):
    """Two processes on disjoint --rows each rewrite the table when they end: whichever ends last must leave every
    finished row and claim in it, under the grid's command (without the --rows / --only-seeds it was given)."""
    import json

    import ablation_grid

    monkeypatch.setattr(ablation_grid, 'RESULTS', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'best.json'
    path.write_text(json.dumps(_recipes()))
    monkeypatch.setattr(ablation_grid, '_pretrain', lambda row, seed, *a, **k: dict(checkpoint=f'ckpt-{seed}.pth'))
    scores = {'blob 11->5 (skips)': 84.0, 'blob(11), norm-pix': 82.0}
    monkeypatch.setattr(ablation_grid, '_probed', lambda record, *a, **k: dict(
        record, top1=scores[record['row']] - 2, lbfgs_top1=scores[record['row']], knn_top1=scores[record['row']] - 3))
    common = ['--recipes', str(path), '--tag', 'split', '--seeds', '2', '--epochs', '1']
    ablation_grid.main(common + ['--rows', 'blob(11), norm-pix', '--only-seeds', '0', '1'])
    ablation_grid.main(common + ['--rows=blob 11->5 (skips)'])
    table = (tmp_path / 'split.md').read_text()
    cells = _table_cells(table)
    assert cells['blob(11), norm-pix'][5] == '82.0 ± 0.0' and cells['blob 11->5 (skips)'][5] == '84.0 ± 0.0'
    assert cells['hierarchy beats flat: 11 -> 5 over 11 segments'][3:5] == ['0, 1', '+2.0 (+2.0, +2.0)']
    command = table.split('Command: `', 1)[1].split('`', 1)[0]
    assert command == f'python benchmarks/ablation_grid.py --recipes {path} --tag split --seeds 2 --epochs 1'
    summary = json.loads((tmp_path / 'split.json').read_text())
    assert {r['row'] for r in summary['rows']} == set(scores)
    assert 'rows' not in summary['args'] and 'only_seeds' not in summary['args']
    from ablation_grid import grid_command
    assert grid_command(['--rows', 'a b', 'c', '--epochs', '2', '--only-seeds', '1', '--rows=d', '--tag', 't']) == [
        '--epochs', '2', '--tag', 't']
