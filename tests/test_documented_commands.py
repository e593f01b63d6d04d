"""Every command README.md and docs/*.md show is one the real parser takes.

Each fenced code block is read as a shell would (continuation lines joined,
comments dropped, ``&&`` / ``;`` / ``|`` separating commands), and so is each
inline code span of the prose that starts as a command does (``python ...``,
``$PY ...``); every call of ``unet2d.py``, ``predict.py``,
``download_dataset.py``, ``convert_volume.py`` or ``python -m <a module of
this project>`` is parsed by that program's own argument parser, nothing
run. A flag renamed or a mode that needs another
flag then fails here, not in a reader's terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = ("unet2d.py", "predict.py", "download_dataset.py", "convert_volume.py")
PROJECT_MODULES = ("benchmarks.", "runtime.")
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`((?:python3?|\$PY) [^`]+)`")  # a command in the prose, maybe across a line break


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a code block, each as its words."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not shell (a Python or JSON block that happens to name a script)
            continue
        command: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", ";", "|", "&"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def program_call(words: list[str]) -> tuple[str, list[str]] | None:
    """(program, its arguments) where the words call one of ours, else None."""
    for index, word in enumerate(words):
        if Path(word).name in SCRIPTS:
            return Path(word).name, words[index + 1:]
        if word == "-m" and index + 1 < len(words) and words[index + 1].startswith(PROJECT_MODULES):
            return words[index + 1], words[index + 2:]
    return None


def documented_calls() -> list[tuple[str, str, list[str]]]:
    calls = []
    for document in DOCUMENTS:
        text = document.read_text()
        prose = re.sub(r"\s*\n\s*", " ", FENCE.sub("", text))
        for block in [*FENCE.findall(text), *INLINE.findall(prose)]:
            for words in shell_commands(block):
                if (call := program_call(words)) is not None:
                    calls.append((document.relative_to(ROOT).as_posix(), *call))
    return calls


class Parsed(Exception):
    """Raised where a program's parser has accepted its arguments: nothing after it runs."""


def parse_with_the_program(program: str, arguments: list[str]) -> None:
    """The program's own parser on ``arguments``: SystemExit(2) with its one line if it refuses them."""
    if program == "unet2d.py":
        from runtime.cli.arguments import parse_args

        parse_args(arguments)
        return
    if program in SCRIPTS:
        module = __import__(program.removesuffix(".py"))
        module.parse_args(arguments)
        return
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        original(parser, args, namespace)
        raise Parsed

    saved = sys.argv
    sys.argv = [program, *arguments]
    try:
        with contextlib.suppress(Parsed):
            argparse.ArgumentParser.parse_args = parse_then_stop
            runpy.run_module(program, run_name="__main__", alter_sys=False)
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = saved


CALLS = documented_calls()


def test_the_docs_show_commands_of_every_program():
    programs = {program for _, program, _ in CALLS}
    assert set(SCRIPTS) <= programs and any(p.startswith("benchmarks.") for p in programs), programs


@pytest.mark.parametrize("document, program, arguments", CALLS,
                         ids=[f"{d}:{p}:{i}" for i, (d, p, _) in enumerate(CALLS)])
def test_a_documented_command_parses(document, program, arguments, capsys):
    try:
        parse_with_the_program(program, arguments)
    except SystemExit as stop:
        said = capsys.readouterr()
        assert stop.code in (0, None), f"{document}: {program} {shlex.join(arguments)}\n{said.err.strip()}"
