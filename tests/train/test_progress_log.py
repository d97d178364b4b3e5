import logging

from stfusion.train.progress_log import ProgressLog


def test_lines_at_every_tenth_and_the_last(caplog):
    lines = ProgressLog("XFuse", 25)
    with caplog.at_level(logging.INFO, logger="stfusion"):
        logged = [step for step in range(1, 26) if lines.update(step, loss=0.123456, metagenes=3, skipped=None)]
    assert logged == [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]
    first = caplog.records[0].getMessage()
    assert first.startswith("XFuse step 3/25 (12%), loss 0.1235, metagenes 3; ") and "skipped" not in first


def test_short_runs_log_every_step_once(caplog):
    with caplog.at_level(logging.INFO, logger="stfusion"):
        lines = ProgressLog("training", 3, unit="epoch")
        assert [lines.update(e) for e in (1, 2, 3)] == [True, True, True]
    assert caplog.records[-1].getMessage().startswith("training epoch 3/3 (100%); ")


def test_a_resumed_run_times_only_what_it_ran(caplog, monkeypatch):
    clock = iter([100.0, 110.0])  # start, then 10 s later
    monkeypatch.setattr("stfusion.train.progress_log.time.perf_counter", lambda: next(clock))
    lines = ProgressLog("training", 10, unit="epoch", done=8)
    with caplog.at_level(logging.INFO, logger="stfusion"):
        lines.update(9)
    assert caplog.records[-1].getMessage().endswith("; 10 s, ~10 s left")  # 1 epoch in 10 s, 1 to go
