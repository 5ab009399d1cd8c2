"""A timed-out run's traceback is the job's whole last stack dump, however long its paths and stacks are."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from backend.worker.executors.local import file_tail
from backend.worker.timeouts import LOG_WINDOW_CHARS, stack_dump
from tests.serve import wait_for

# Threads with deep stacks in a module under a long path: the dump is far longer than a plain 4,000-char tail
JOB = textwrap.dedent("""
    import faulthandler, signal, sys, threading, time
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    def deep(n, ready):
        if n:
            return deep(n - 1, ready)
        ready.set()
        time.sleep(60)
    events = [threading.Event() for _ in range(3)]
    for e in events:
        threading.Thread(target=deep, args=(40, e), daemon=True).start()
    for e in events:
        e.wait()
    print("epoch 1 step 3 loss 0.69", flush=True)
    deep(40, threading.Event())
""")


def test_the_whole_dump_is_kept_from_its_first_header_and_the_log_after_it_is_left_out(tmp_path):
    where = tmp_path.joinpath(*["a-rather-long-directory-name"] * 8)
    where.mkdir(parents=True)
    (where / "job_module_with_a_long_name.py").write_text(JOB)
    log_path = tmp_path / "run-1.log"
    with open(log_path, "w") as log:
        log.write("x" * 10_000 + "\n")  # earlier output of the job
        log.flush()
        proc = subprocess.Popen([sys.executable, str(where / "job_module_with_a_long_name.py")],
                                stdout=log, stderr=subprocess.STDOUT)  # as a job's: both into its log
        try:
            wait_for(lambda: "loss 0.69" in log_path.read_text(), 30, 0.05, "the job to start")
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
        finally:
            proc.kill()
            proc.wait()
    with open(log_path, "a") as log:
        log.write("INFO a line the job wrote after its dump\n")

    log_end = file_tail(log_path, LOG_WINDOW_CHARS)
    assert "most recent call first" not in file_tail(log_path, 4000)  # what a fixed tail would have kept
    dump = stack_dump(log_end)
    assert dump.startswith("Thread 0x") or dump.startswith("Current thread 0x"), dump[:200]
    assert dump.count("(most recent call first):") == 4  # the main thread and the three others
    assert dump.count(" in deep\n") >= 4 * 40 and "after its dump" not in dump and "loss 0.69" not in dump


def test_a_log_without_a_dump_keeps_its_end():
    assert stack_dump("a" * 5000 + "Traceback (most recent call last):\n  boom\n", 100).endswith("boom\n")
    assert len(stack_dump("b" * 5000, 100)) == 100
