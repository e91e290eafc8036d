"""The stages' argument parser: jsonargparse's refusals of a few common mistakes in one line that
says what is valid.

`model.space` and `model.budget` are dataclasses (SpaceConfig, Budget), so jsonargparse refuses a
key they do not have, on the command line and in a config file, and a float that is not finite:

    --model.budget.valeu 2     ->  model.budget has no key 'valeu'; valid keys: ['kind', 'value']
    --model.budget.value nan   ->  model.budget.value must be a finite number, got nan
"""
from __future__ import annotations

import re
from dataclasses import fields
from typing import Iterable, NoReturn

from pytorch_lightning.cli import LightningArgumentParser

from .lit import SpaceConfig
from .plan import Budget

CONFIG_SECTIONS = {"space": SpaceConfig, "budget": Budget}
# how jsonargparse words an unknown key: a command-line flag, a key of a config file (nested group
# or optional dataclass)
_UNKNOWN_KEY = (re.compile(r"unrecognized arguments: (?:.* )?--model\.(space|budget)\.(\w+)"),
                re.compile(r"does not accept option '(space|budget)\.(\w+)'"),
                re.compile(r"\"model\.(space|budget)\".*?Option '(\w+)' is not accepted", re.S))
_NOT_FINITE = re.compile(r"Parser key \"([\w.]+)\":\s*Expected a <class 'float'>\. Got value: (-?(?:nan|inf))\b",
                         re.I)


def clearer_message(message: str, sections: Iterable[str] = tuple(CONFIG_SECTIONS)) -> str:
    """jsonargparse's `message`, or one line naming what is valid if it refuses an unknown key
    under one of `sections` (the model.space / model.budget the stage takes), or a NaN or infinite
    float."""
    for pattern in _UNKNOWN_KEY:
        found = pattern.search(message)
        if found and found[1] in sections:
            section, key = found.groups()
            valid = [f.name for f in fields(CONFIG_SECTIONS[section])]
            return f"model.{section} has no key {key!r}; valid keys: {valid}"
    found = _NOT_FINITE.search(message)
    if found:
        return f"{found[1]} must be a finite number, got {found[2]}"
    return message


class StrictArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors go through `clearer_message` (for the sections its
    model takes: a pretrain stage has model.space but no model.budget)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        taken = [s for s in CONFIG_SECTIONS if any(a.dest == f"model.{s}" for a in self._actions)]
        super().error(clearer_message(message, taken), ex)
