"""Bad input gets one line, not a traceback: `nas-mpq <stage>: error: <message>` on stderr and
exit status 2. With `--debug` on the command line or NAS_MPQ_DEBUG=1 in the environment the
exception goes through unchanged, with its full traceback.

Bad input is what nas-mpq raises for it: ValueError (a bad value, a malformed file), the
FileNotFoundError family (a missing or unwritable path), and SystemExit with a message (a
refusal, such as overwriting a finished run). Any other exception is a bug and keeps its
traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import yaml

DEBUG_ENV = "NAS_MPQ_DEBUG"
DEBUG_FLAG = "--debug"
BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
             PermissionError)


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether tracebacks are wanted, `argv` without --debug)."""
    rest = [a for a in argv if a != DEBUG_FLAG]
    return len(rest) < len(argv) or os.environ.get(DEBUG_ENV, "") not in ("", "0"), rest


def run_reporting_errors(stage: str, runner: Callable[[list[str]], int], argv: list[str]) -> int:
    """`runner(argv)`, with bad input reported in one line (exit status 2) unless debugging."""
    debug, argv = debug_requested(argv)
    if debug:
        return runner(argv)
    try:
        return runner(argv)
    except BAD_INPUT as e:
        message = str(_constructor_error(e))
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise  # a status (help, or a parser error it has already printed)
        message = e.code.removeprefix("error: ")
    print(f"nas-mpq {stage}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _constructor_error(e: BaseException) -> BaseException:
    """The error a class's constructor raised rather than jsonargparse's wrapping of it (which
    lists every type of a Union it tried, and the whole config given)."""
    while isinstance(e.__cause__, BAD_INPUT) and _raised_by(e, "jsonargparse"):
        e = e.__cause__
    return e


def _raised_by(e: BaseException, package: str) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__", "").partition(".")[0] == package


def describe_yaml_error(e: yaml.YAMLError) -> str:
    """A YAML error in one line: position, problem and context (`line 3, column 1: expected ','
    or ']', but got '<stream end>' (while parsing a flow sequence at line 2, column 15)`)."""
    if not isinstance(e, yaml.MarkedYAMLError) or e.problem_mark is None:
        return " ".join(str(e).split())
    at = f"line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
    context = ""
    if e.context:
        mark = e.context_mark
        context = f" ({e.context}" + (f" at line {mark.line + 1}, column {mark.column + 1})" if mark else ")")
    return f"{at}: {e.problem}{context}"
