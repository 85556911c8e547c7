"""Run ``pandemonium`` several times in ONE process (one import of torch/hydra for many CLI cases).

usage: python run_many.py CASES.json RESULTS.json
CASES.json: [{"args": [...], "env": {...}}, ...]; RESULTS.json: [{"code", "stdout", "stderr"}, ...]
"""

import contextlib
import io
import json
import os
import sys
import time

from pandemonium.cli.main import main

cases = json.loads(open(sys.argv[1]).read())
results = []
for case in cases:
    saved = dict(os.environ)
    os.environ.update(case.get("env", {}))
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(case["args"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
                code = f"uncaught {type(exc).__name__}: {exc}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "seconds": round(time.perf_counter() - start, 2)})
with open(sys.argv[2], "w") as fh:
    json.dump(results, fh)
