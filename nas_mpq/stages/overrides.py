"""`nas-mpq run`'s overrides: `--key value` flags for every stage, or with a stage prefix for one
(`--search.model.lam 2`), and the dotted keys of a sweep rendered as such flags.

Example:
    >>> route_overrides(["--search.model.lam", "2", "--trainer.max_epochs", "1"])["search"]
    ['--model.lam', '2', '--trainer.max_epochs', '1']
    >>> render_args({"search.model.space.candidates": [2, 4], "trainer.fast_dev_run": True})
    ['--search.model.space.candidates', '[2, 4]', '--trainer.fast_dev_run', 'true']
"""
from __future__ import annotations

import json
from typing import Any

from .parser import PIPELINE_STAGES

# the uniform reference is finalized with the finalize section's config and overrides
ROUTES = (*PIPELINE_STAGES, "uniform")


def route_overrides(extra: list[str]) -> dict[str, list[str]]:
    """Split `--key value` overrides into per-stage lists, keyed by ROUTES. A `--<stage>.` prefix
    selects one stage (`--finalize.` the uniform reference too, which is finalized the same way),
    except `--<stage>.resume CKPT`, which goes to that stage alone: a checkpoint is one stage's.
    Each stage's parser then checks its own list."""
    routed: dict[str, list[str]] = {s: [] for s in ROUTES}
    i = 0
    while i < len(extra):
        flag = extra[i]
        if not flag.startswith("--"):
            raise SystemExit(f"error: unexpected argument {flag!r}; overrides look like --trainer.max_epochs 2")
        key, has_value, value = flag[2:].partition("=")
        values = [value] if has_value else []
        i += 1
        if not has_value and i < len(extra) and not extra[i].startswith("--"):
            values, i = [extra[i]], i + 1
        head, _, rest = key.partition(".")
        if head in ROUTES and rest:
            targets, key = [head, *(["uniform"] if head == "finalize" and rest != "resume" else [])], rest
        elif key == "resume":
            raise SystemExit("error: --resume needs a stage: a run resumes every interrupted stage by "
                             "itself; to resume one stage from a checkpoint of your choice write "
                             f"--<stage>.resume CKPT (stages: {list(ROUTES)})")
        else:
            targets = list(ROUTES)
        for t in targets:
            routed[t] += [f"--{key}", *values]
    return routed


def render_value(v: Any) -> str:
    """A value as the stage parsers read it from the command line (JSON for lists and mappings,
    lower-case booleans)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def render_args(values: dict[str, Any]) -> list[str]:
    """{"search.model.lam": 2.0} -> ["--search.model.lam", "2.0"] (nas-mpq run's overrides)."""
    out: list[str] = []
    for key, v in values.items():
        out += [f"--{key}", render_value(v)]
    return out
