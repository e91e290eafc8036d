"""The stages' argument parser: LightningCLI's parser that reads a pipeline config's section for
its stage, and that refuses a few common mistakes in one line saying what is valid.

A config file is either one stage's config (`trainer:`, `model:`, `data:`) or a pipeline config
with a section per stage (`pretrain:`, `search:`, `finalize:`) and shared top-level keys (`data:`,
`seed_everything:`, `wandb:`); given a pipeline config, `--config` reads the stage's section with
the shared keys merged in, so every stage command takes the same file.

`model.space` and `model.budget` are dataclasses (SpaceConfig, Budget), so jsonargparse refuses a
key they do not have, on the command line and in a config file, and a float that is not finite:

    --model.budget.valeu 2     ->  model.budget has no key 'valeu'; valid keys: ['kind', 'value']
    --model.budget.value nan   ->  model.budget.value must be a finite number, got nan
    rules: [{pattern: rnn, groupng: gate}]
                               ->  a rule of model.space.rules has no key 'groupng'; valid keys: ['pattern', ...]

A key that was renamed is refused with its new name (search.space.RENAMED_KEYS):

    --model.space.granularity head
                               ->  model.space has no key 'granularity'; it was renamed to 'grouping'
"""
from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, NoReturn

import yaml
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser

from nas_mpq.errors import describe_yaml_error
from nas_mpq.lit import SpaceConfig
from nas_mpq.plan import Budget
from nas_mpq.search.space import GroupRule, renamed_key_message

PIPELINE_STAGES = ("pretrain", "search", "finalize")
PIPELINE_SHARED = ("data", "seed_everything", "wandb")
CONFIG_SECTIONS = {"space": SpaceConfig, "budget": Budget}
# how jsonargparse words an unknown key: a command-line flag, a key of a config file (nested group
# or optional dataclass)
_UNKNOWN_KEY = (re.compile(r"unrecognized arguments: (?:.* )?--model\.(space|budget)\.(\w+)"),
                re.compile(r"does not accept option '(space|budget)\.(\w+)'"),
                re.compile(r"\"model\.(space|budget)\".*?Option '(\w+)' is not accepted", re.S))
_UNKNOWN_RULE_KEY = re.compile(r"\"model\.space\.rules\".*?GroupRule.*?Option '(\w+)' is not accepted", re.S)
_NOT_FINITE = re.compile(r"Parser key \"([\w.]+)\":\s*Expected a <class 'float'>\. Got value: (-?(?:nan|inf))\b",
                         re.I)


def read_config(path: str | Path) -> Any:
    """A YAML config file's content; a syntax error or non-UTF-8 text is a ValueError naming the
    file and the position."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {describe_yaml_error(e)}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def pipeline_section(config: Any, section: str, path: str | Path) -> dict | None:
    """The `section` of a pipeline config with its shared keys merged in (the section's own keys
    win), or None when `config` is a stage config. A pipeline config without the section is a
    ValueError naming the sections it has."""
    if not isinstance(config, dict) or not any(s in config for s in PIPELINE_STAGES):
        return None
    if section not in config:
        raise ValueError(f"{path} has no `{section}:` section; it has {[s for s in PIPELINE_STAGES if s in config]}")
    shared = {k: config[k] for k in PIPELINE_SHARED if k in config}
    return _merge(shared, config[section] or {})


def clearer_message(message: str, sections: Iterable[str] = tuple(CONFIG_SECTIONS)) -> str:
    """jsonargparse's `message`, or one line naming what is valid if it refuses an unknown key
    under one of `sections` (the model.space / model.budget the stage takes) or in a rule of
    model.space.rules (saying the new name of a renamed key), or a NaN or infinite float."""
    for pattern in _UNKNOWN_KEY:
        found = pattern.search(message)
        if found and found[1] in sections:
            section, key = found.groups()
            valid = [f.name for f in fields(CONFIG_SECTIONS[section])]
            return ((section == "space" and renamed_key_message([key], "model.space"))
                    or f"model.{section} has no key {key!r}; valid keys: {valid}")
    found = _UNKNOWN_RULE_KEY.search(message)
    if found and "space" in sections:
        where = "a rule of model.space.rules"
        return (renamed_key_message([found[1]], where)
                or f"{where} has no key {found[1]!r}; valid keys: {[f.name for f in fields(GroupRule)]}")
    found = _NOT_FINITE.search(message)
    if found:
        return f"{found[1]} must be a finite number, got {found[2]}"
    return message


class StageArgumentParser(LightningArgumentParser):
    """LightningArgumentParser of one stage: a pipeline config file reads as its `section`, and
    errors go through `clearer_message` (for the sections its model takes: a pretrain stage has
    model.space but no model.budget)."""

    def __init__(self, *args: Any, section: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section

    def parse_path(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> Namespace:
        stage_config = pipeline_section(read_config(path), self.section, path) if self.section else None
        if stage_config is None:
            return super().parse_path(path, *args, **kwargs)
        return self.parse_string(yaml.safe_dump(stage_config, sort_keys=False), os.path.basename(path), *args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        taken = [s for s in CONFIG_SECTIONS if any(a.dest == f"model.{s}" for a in self._actions)]
        super().error(clearer_message(message, taken), ex)
