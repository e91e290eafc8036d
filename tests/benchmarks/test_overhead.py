"""benchmarks/overhead.py: the cheap iteration it times has the flagship search config's settings,
and its ratio is taken over whole refit periods only (each holds one fit; a remainder does not count)."""
import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def overhead(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # overhead imports search_wall beside it
    return importlib.import_module("overhead")  # imported, not exec'd: its dataclass needs sys.modules


def test_the_fast_iteration_has_the_search_fast_configs_settings(overhead):
    model = yaml.safe_load((ROOT / "configs" / "shakespeare_lstm" / f"{overhead.FAST_CONFIG}.yaml").read_text())["model"]
    assert (model["arch_every"], model["refit_every"], model["weights_at"]) == (
        overhead.FAST_ARCH_EVERY, overhead.REFIT_EVERY, "plan")


def test_the_refit_ratio_spans_whole_periods_only(overhead):
    every = overhead.REFIT_EVERY
    warmup = 3
    first = -warmup % every  # the first timed batch whose index (warm-up included) fits
    steps = first + 2 * every + 3  # two whole periods and a remainder that starts with a fit
    fp32 = [1.0] * steps
    fitting = [3.0 if (warmup + i) % every == 0 else 1.0 for i in range(steps)]
    # each whole period holds exactly one fit: mean (3 + (every - 1)) / every
    assert overhead.refit_ratio(fitting, fp32, warmup) == round((every + 2) / every, 3)
    assert overhead.refit_ratio(fitting[:first + every - 1], fp32[:first + every - 1], warmup) is None
