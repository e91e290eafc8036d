"""`nas-mpq <stage> [arguments]`: runs one stage of nas_mpq.stages, with bad input reported in one
line (nas_mpq.errors).

    nas-mpq run --config configs/shakespeare_lstm/quick.yaml --run_dir runs/q
"""
from __future__ import annotations

import sys
import warnings
from typing import Callable

from .errors import DEBUG_ENV, run_reporting_errors
from .stages import evaluate, finalize, pretrain, run, search, sensitivity, sweep

STAGES: dict[str, Callable[[list[str]], int]] = {
    "pretrain": pretrain.run, "search": search.run, "finalize": finalize.run, "evaluate": evaluate.run,
    "sensitivity": sensitivity.run, "run": run.run, "sweep": sweep.run,
}
USAGE = f"""usage: nas-mpq {{{','.join(STAGES)}}} --config CONFIG.yaml --run_dir DIR [overrides]
       nas-mpq evaluate --model DIR/model.safetensors [--data.*]
       nas-mpq sweep --config sweeps/SPEC.yaml [--run_dir DIR] [--n_trials N] [--workers N]
  each command takes --help; stages take --print_config; bad input is reported in one line,
  --debug (or {DEBUG_ENV}=1) shows the traceback instead"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # each stage hands its own arguments to LightningCLI; its warning about sys.argv is moot here
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    if not argv or argv[0] not in STAGES:
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return run_reporting_errors(argv[0], STAGES[argv[0]], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
