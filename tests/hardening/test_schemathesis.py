"""schemathesis against the OpenAPI spec of a real server on 127.0.0.1: no operation answers 5xx.

All four phases (examples, coverage, fuzzing, stateful), bounded by --max-examples per operation and a wall-clock
timeout (about a minute here). The token is sent, so mutating operations are exercised past the 401. /api/events is
left out: it is an endless stream (tests/backend/test_worker.py reads it). MEFTS_SCHEMATHESIS_EXAMPLES raises the
bound for a longer hunt (250 examples ran clean: about 4,900 cases in 7 minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .support import LoopbackServer

TOKEN = "schemathesis-token-0123456789"
EXAMPLES = os.environ.get("MEFTS_SCHEMATHESIS_EXAMPLES", "25")


def test_no_operation_answers_a_server_error(tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    with LoopbackServer(tmp_path / "data", env={"MEFTS_API_TOKEN": TOKEN}, log_level="WARNING") as server:
        out = subprocess.run(
            [str(cli), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
             "--phases", "examples,coverage,fuzzing,stateful", "--exclude-path", "/api/events",
             "--max-examples", EXAMPLES, "--workers", "1", "--request-timeout", "30", "--generation-database", "none",
             "-H", f"Authorization: Bearer {TOKEN}", "--max-failures", "20", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )
        log = server.log_text()
    report = out.stdout[-8000:] + out.stderr[-2000:]
    assert out.returncode == 0 and "ST101" not in out.stdout, report
    assert "Operations:" in out.stdout and " passed" in out.stdout, report
    assert "Exception in ASGI application" not in log, log[-5000:]
