"""Run every benchmark in one go and print each one's ratios/figures.

    .venv/bin/python benchmarks/run_all.py            # all of them, full size
    .venv/bin/python benchmarks/run_all.py --quick    # fewer repeats/steps; model quality on digits only
    .venv/bin/python benchmarks/run_all.py --pipeline-python /tmp/emvenv/bin/python  # with electricmayhem

``--pipeline-python`` runs the pipeline step with another interpreter: one whose environment also has
electricmayhem (``benchmarks/install_electricmayhem.sh``), so it is timed as a contender; without it the
pipeline step says electricmayhem is not installed and measures the other paths.

Each script measures its ratio inside one run (the pipeline step against the bare model; ``fit``
against the bare steps it runs), so the numbers are comparable across machines; absolute seconds
are printed only as context. A script that misses its target exits non-zero, and so does this one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=["pipeline", "floor", "trainer", "quality"], default=None)
    parser.add_argument("--pipeline-python", default=sys.executable,
                        help="interpreter for pipeline_step.py (e.g. a side venv with electricmayhem)")
    args = parser.parse_args(argv)

    runs = {
        "pipeline": ["pipeline_step.py", *(["--quick"] if args.quick else [])],
        # what the fewest ops for the pipeline step cost here (no target: the pipeline's targets beside it)
        "floor": ["step_floor.py", *(["--rounds", "10"] if args.quick else [])],
        "trainer": ["trainer_overhead.py", *(["--quick"] if args.quick else [])],
        "quality": ["model_quality.py", *(["--tasks", "digits"] if args.quick else [])],
    }
    failed: list[str] = []
    for name, (script, *script_args) in runs.items():
        if args.only and name not in args.only:
            continue
        print(f"\n=== {name}: {script} {' '.join(script_args)}", flush=True)
        python = args.pipeline_python if name == "pipeline" else sys.executable
        code = subprocess.call([python, str(HERE / script), *script_args])
        if code != 0:
            failed.append(f"{name} (exit {code})")
    if failed:
        print("\nmissed or failed: " + ", ".join(failed))
        return 1
    print("\nall benchmarks met their targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
