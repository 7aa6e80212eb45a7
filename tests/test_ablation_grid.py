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

    from ablation_grid import EQUAL_TIME_RATE, EQUAL_TIME_REFERENCE, _equal_time_steps, _slug

    def write(name, **record):
        (tmp_path / f'{_slug(name)}-seed0.json').write_text(json.dumps(record))

    write(EQUAL_TIME_RATE, pretrain_cpu_s=600.0, steps=300)  # MAE: 2 CPU-s a step
    write(EQUAL_TIME_REFERENCE, pretrain_cpu_s=None, steps=312)  # partly from a killed run: unknown
    assert _equal_time_steps(str(tmp_path), 0) is None
    write(EQUAL_TIME_REFERENCE, pretrain_cpu_s=1000.0, steps=312)
    assert _equal_time_steps(str(tmp_path), 0) == 500


def test_equal_time_row_refuses_cpu_times_from_different_thread_counts(tmp_path):
    import json

    from ablation_grid import EQUAL_TIME_RATE, EQUAL_TIME_REFERENCE, _equal_time_steps, _slug

    def write(name, **record):
        (tmp_path / f'{_slug(name)}-seed1.json').write_text(json.dumps(record))

    write(EQUAL_TIME_RATE, pretrain_cpu_s=600.0, steps=300, torch_threads=2)
    write(EQUAL_TIME_REFERENCE, pretrain_cpu_s=1000.0, steps=312, torch_threads=1)
    assert _equal_time_steps(str(tmp_path), 1) is None
    write(EQUAL_TIME_RATE, pretrain_cpu_s=600.0, steps=300, torch_threads=1)
    assert _equal_time_steps(str(tmp_path), 1) == 500
