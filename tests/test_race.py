"""The race's reading of curves (benchmarks/race.py): time to a threshold is the first evaluation at or above it."""
import os
import sys

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
