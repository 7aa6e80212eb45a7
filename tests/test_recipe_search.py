"""The recipe search's fairness and its combining rule (benchmarks/recipe_search.py), without training anything."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import recipe_search  # noqa: E402
from recipe_search import COMBINED, RECIPES, SCORE, check_equal_trials, combine, trials  # noqa: E402


def test_both_methods_get_as_many_trials_and_the_same_shared_knob_values():
    check_equal_trials()
    randsac, mae = trials('RandSAC'), trials('MAE')
    assert len(randsac) == len(mae)
    shared = {name for name, _, _ in recipe_search.SHARED_TRIALS}
    assert [t['overrides'] for t in randsac if t['name'] in shared] == [t['overrides'] for t in mae
                                                                        if t['name'] in shared]
    # the base is each method's fair setting: the same target for both
    assert trials('RandSAC')[0]['recipe']['norm_pix_loss'] == trials('MAE')[0]['recipe']['norm_pix_loss']


def test_unequal_trial_counts_are_refused(monkeypatch):
    monkeypatch.setitem(recipe_search.OWN_TRIALS, 'MAE', recipe_search.OWN_TRIALS['MAE'][:-1])
    with pytest.raises(AssertionError, match='unequal trial counts'):
        check_equal_trials()


def _scores(method, **given):
    """Every single-knob trial of `method` finished at 80.0, except the named ones."""
    return {t['name']: {SCORE: given.get(t['name'], 80.0)} for t in trials(method)}


def test_combine_waits_for_every_single_knob_trial():
    done = _scores('MAE', **{'input 28x28': 81.0})
    del done['mask 0.9']
    assert combine('MAE', done) is None


def test_combine_takes_the_best_value_of_each_knob_that_beat_the_base():
    done = _scores('RandSAC', **{'input 28x28': 81.0, 'blr 0.75e-3': 80.5, 'blr 3e-3': 81.5,
                                 'batch 64': 79.0, 'skip memory paper': 80.0})  # a tie with the base is no gain
    trial = combine('RandSAC', done)
    assert trial['name'] == COMBINED
    assert trial['overrides'] == dict(img_size=28, blr=3e-3)
    assert trial['recipe'] == dict(RECIPES['RandSAC'], img_size=28, blr=3e-3)


def test_combine_is_skipped_when_nothing_beat_the_base():
    assert combine('MAE', _scores('MAE')) is None


def test_a_search_where_no_knob_beat_the_base_is_complete_without_a_combined_trial():
    from recipe_search import complete

    assert complete('MAE', _scores('MAE'))
    done = _scores('MAE', **{'input 28x28': 81.0})
    assert not complete('MAE', done)  # a knob won: the combined trial is still to run
    done[COMBINED] = dict(done['base'])
    assert complete('MAE', done)


def test_a_trial_file_from_another_recipe_or_budget_is_refused(tmp_path):
    import json

    from recipe_search import _done, _trial_path

    base = next(t for t in trials('RandSAC') if t['name'] == 'base')
    path = _trial_path(str(tmp_path), 'RandSAC', 'base')
    with open(path, 'w') as f:
        json.dump(dict(base=True, recipe=base['recipe'], budget_cpu_min=15.0, **{SCORE: 80.0}), f)
    assert 'base' in _done(str(tmp_path), 'RandSAC', 15.0)
    with pytest.raises(SystemExit, match='budget_cpu_min'):
        _done(str(tmp_path), 'RandSAC', 30.0)
    with open(path, 'w') as f:
        json.dump(dict(recipe=dict(base['recipe'], segments='blob:7'), **{SCORE: 80.0}), f)
    with pytest.raises(SystemExit, match='recipe'):
        _done(str(tmp_path), 'RandSAC', 15.0)


@pytest.mark.parametrize('method', ['RandSAC', 'MAE'])
def test_a_28x28_best_recipe_names_the_native_wrapper_and_builds_the_same_network(method):
    import timm
    import torch

    recipe = dict(RECIPES[method], img_size=28)
    renamed = recipe_search.native_size_model(recipe)
    assert renamed['model'].endswith('_patch4_28') and renamed['img_size'] == 28
    assert {k: v for k, v in renamed.items() if k != 'model'} == {k: v for k, v in recipe.items() if k != 'model'}
    # the renamed wrapper is the network the search trained: same weights and buffers from the same seed
    nets = []
    for r in (recipe, renamed):
        torch.manual_seed(0)
        nets.append(timm.create_model(r['model'], img_size=28, in_chans=1).state_dict())
    assert nets[0].keys() == nets[1].keys() and all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
    # nothing to rename: the model's own size, or no wrapper registered at that size
    assert recipe_search.native_size_model(dict(RECIPES[method], img_size=32)) == dict(RECIPES[method], img_size=32)
    assert recipe_search.native_size_model(dict(RECIPES[method], img_size=48))['model'] == RECIPES[method]['model']
