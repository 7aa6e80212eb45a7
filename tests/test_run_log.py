"""log.jsonl after a kill: a torn last line costs one record, never the next one nor the reader."""
from randsac_timm.train.run_log import JsonlLog, read_log


def test_a_torn_last_line_is_skipped_and_the_next_record_stands_alone(tmp_path):
    path = tmp_path / 'log.jsonl'
    path.write_text('{"event": "train", "step": 1}\n{"event": "train", "st')  # killed mid-write
    log = JsonlLog(str(path))
    log.write(event='resume', step=1)
    log.write(event='start', step=1)
    assert [r['event'] for r in read_log(str(path))] == ['train', 'resume', 'start']
    assert log.last('start', 'step') == 1


def test_a_new_log_gets_no_blank_first_line(tmp_path):
    path = tmp_path / 'log.jsonl'
    JsonlLog(str(path)).write(event='start', step=0)
    assert path.read_text() == '{"event": "start", "step": 0}\n'
