"""`benchmarks/rerun_rounding.py`: the comparison of a race run with its rerun finds the first online evaluation whose
kNN differs, and reports none when every one agrees."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import rerun_rounding  # noqa: E402


def _records(results, knn_race, knn_rerun):
    (results / 'race_recipe').mkdir(parents=True)
    (results / 'race_continue').mkdir()
    race = dict(final_loss=0.5, knn_top1=knn_race, lbfgs_top1=[70.0] * len(knn_race))
    evals = [dict(step=100 * i, knn_top1=k, lbfgs_top1=70.1) for i, k in enumerate(knn_rerun)]
    rerun = dict(run1=dict(steps=100 * (len(knn_rerun) - 1), final_loss=0.501, online_evals=evals))
    (results / 'race_recipe' / 'MAE-seed1.json').write_text(json.dumps(race))
    (results / 'race_continue' / 'MAE-seed1.json').write_text(json.dumps(rerun))


def test_first_differing_evaluation_is_found(tmp_path):
    _records(tmp_path, [60.0, 70.0, 75.0, 77.0], [60.0, 70.0, 75.05, 77.0])
    row = rerun_rounding.compare('MAE-seed1', str(tmp_path))
    assert row['first_knn_diff_step'] == 200
    assert row['step0_lbfgs'] == (70.0, 70.1)
    assert abs(row['final_loss_rel_diff'] - 0.002) < 1e-9


def test_identical_evaluations_report_none(tmp_path):
    _records(tmp_path, [60.0, 70.0], [60.0, 70.0])
    assert rerun_rounding.compare('MAE-seed1', str(tmp_path))['first_knn_diff_step'] is None


def test_committed_reruns_are_read():
    # the committed records this script's table comes from: each rerun starts from the race's initial weights
    for name in rerun_rounding.RERUNS:
        row = rerun_rounding.compare(name)
        assert row['step0_knn'][0] == row['step0_knn'][1], name
