"""The race's reading of curves (benchmarks/race.py): time to a threshold is the first evaluation at or above it."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
from race import _stats, time_to  # noqa: E402


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
