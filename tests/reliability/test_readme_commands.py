"""Every command in README.md's ```bash / ```sh blocks is one a user can type.

Static checks (no subprocess): each `dvc ...` parses with DVC's own argument parser (so `-S` on
`dvc repro`, an unknown flag or subcommand fails), each `lfp ...` (also `-m lfp.cli ...`) parses with
lfp's parser, `make` targets exist in the Makefile, the files `cp` copies exist, and the set-up
section keeps exactly its two commands. Then the cheap, offline, read-only commands of the README
run for real (`lfp --help`, `dvc dag`, `dvc metrics show ...`). Whole module: a few seconds.

Why DVC's parser rather than grepping `dvc repro --help`: it is the exact grammar the `dvc`
executable uses, including subcommands and option arguments, at 0.1 s instead of ~1 s a call.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
SEPARATORS = {"&&", "||", ";", "|"}
# README commands that only read the project and need no network, GPU or pipeline run
RUNNABLE = ("lfp --help", "dvc dag", "dvc metrics show")


def code_blocks(text: str) -> list[str]:
    """Bodies of the ```bash / ```sh fences, including fences indented inside list items."""
    out = []
    for m in re.finditer(r"^([ \t]*)```(?:bash|sh|shell)[ \t]*\n(.*?)^\1```", text, flags=re.M | re.S):
        indent = m.group(1)
        out.append("\n".join(line[len(indent):] if line.startswith(indent) else line for line in m.group(2).splitlines()))
    return out


def logical_lines(block: str) -> list[str]:
    """The block's lines, with a quoted string that spans lines (`python -c "..."`) kept in one."""
    out: list[str] = []
    pending = ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command continues on the next line
            continue
        out.append(pending)
        pending = ""
    assert not pending, f"unclosed quote in a README code block: {pending!r}"
    return out


def commands(block: str) -> list[list[str]]:
    """Shell words of each simple command (comments dropped; split at && || ; |)."""
    out: list[list[str]] = []
    for line in logical_lines(block):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for word in lexer:
            if word in SEPARATORS:
                out.append(words)
                words = []
            else:
                words.append(word)
        out.append(words)
    return [c for c in out if c]


def program(word: str) -> str:
    return Path(word).name


@pytest.fixture(scope="module")
def readme_commands() -> list[list[str]]:
    cmds = [c for block in code_blocks(README.read_text(encoding="utf-8")) for c in commands(block)]
    assert len(cmds) > 10, "README code blocks not found (fence syntax changed?)"
    return cmds


def _parses(parser, argv: list[str], errors: tuple[type[BaseException], ...]) -> str | None:
    """None if argparse accepts argv, else its error output."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        return None if exc.code == 0 else buf.getvalue().strip().splitlines()[-1:] or ["argparse error"]  # type: ignore[return-value]
    except errors as exc:
        return buf.getvalue().strip().splitlines()[-1:] or [repr(exc)]  # type: ignore[return-value]
    return None


@pytest.fixture(scope="module")
def dvc_parser():
    from dvc.cli import DvcParserError
    from dvc.cli.parser import get_main_parser

    return get_main_parser(), (DvcParserError,)


def test_commands_keep_a_multiline_quoted_argument_whole():
    block = 'make test  # don\'t\n.venv/bin/python -c "\nimport a\nprint(a | 1)"\ndvc dag && lfp --help'
    assert commands(block) == [["make", "test"], [".venv/bin/python", "-c", "\nimport a\nprint(a | 1)"], ["dvc", "dag"], ["lfp", "--help"]]


def test_the_dvc_grammar_check_is_meaningful(dvc_parser):
    parser, errors = dvc_parser
    assert _parses(parser, ["repro", "-S", "sae.l1=0.002"], errors) is not None  # the README's old mistake
    assert _parses(parser, ["exp", "run", "-S", "sae.l1=0.002"], errors) is None


def test_every_dvc_command_parses(readme_commands, dvc_parser):
    parser, errors = dvc_parser
    dvc_cmds = [c for c in readme_commands if program(c[0]) == "dvc"]
    assert dvc_cmds
    # inline code in prose too, e.g. `dvc exp run -S sae.l1=0.002`
    dvc_cmds += [shlex.split(span) for span in re.findall(r"`((?:\.venv/bin/)?dvc [^`<{]+)`", README.read_text(encoding="utf-8"))]
    bad = {}
    for cmd in dvc_cmds:
        if ("-S" in cmd or "--set-param" in cmd) and cmd[1:3] != ["exp", "run"]:
            bad[shlex.join(cmd)] = "-S/--set-param belongs to `dvc exp run`"
        elif (err := _parses(parser, cmd[1:], errors)) is not None:
            bad[shlex.join(cmd)] = err
    assert not bad, bad


def lfp_argv(cmd: list[str]) -> list[str] | None:
    """The arguments lfp gets from `lfp ...` or `... -m lfp.cli ...`, else None."""
    if program(cmd[0]) == "lfp":
        return cmd[1:]
    for i, word in enumerate(cmd[:-1]):
        if word == "-m" and cmd[i + 1] == "lfp.cli":
            return cmd[i + 2 :]
    return None


def test_every_lfp_command_names_a_stage_and_parses(readme_commands):
    import importlib

    from lfp.cli import STAGES, TOOLS, build_parser

    parser = build_parser()
    lfp_cmds = [argv for c in readme_commands if (argv := lfp_argv(c)) is not None]
    assert lfp_cmds
    for argv in lfp_cmds:
        stage = next((w for w in argv if not w.startswith("-")), None)
        if stage in TOOLS:  # a command that is not a stage (`lfp mlflow-sync`): its own parser
            tool = importlib.import_module(TOOLS[stage]).build_parser()
            assert _parses(tool, argv[argv.index(stage) + 1:], ()) is None, f"`lfp {shlex.join(argv)}` does not parse"
        elif stage is not None:
            assert stage in STAGES, f"README runs `lfp {shlex.join(argv)}`: no stage {stage!r} (lfp --help lists {sorted(STAGES)})"
            assert _parses(parser, argv, ()) is None, f"`lfp {shlex.join(argv)}` does not parse"
    # prose too: `lfp <name> ...` in inline code must name a stage (placeholders like <stage> aside)
    for name in re.findall(r"`lfp ([a-z_][a-z_-]*)\b", README.read_text(encoding="utf-8")):
        assert name in STAGES or name in TOOLS, f"README mentions `lfp {name}`: no such stage"


def test_make_targets_exist_and_setup_is_two_commands(readme_commands):
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, flags=re.M))
    for cmd in readme_commands:
        if cmd[0] == "make":
            named = [w for w in cmd[1:] if not w.startswith("-") and "=" not in w]
            assert set(named) <= targets, f"`{shlex.join(cmd)}`: no such Makefile target"
    text = README.read_text(encoding="utf-8")
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    first = commands(code_blocks(setup)[0])
    assert first == [["make", "repro"], ["make", "test"]], first


def test_files_the_readme_copies_or_names_exist(readme_commands):
    missing = []
    for cmd in readme_commands:
        if cmd[0] == "cp":
            missing += [src for src in cmd[1:-1] if not src.startswith("-") and not (ROOT / src).exists()]
    # paths named in prose that a fresh clone must have
    for path in re.findall(r"`((?:params|docs|src|benchmarks|data/raw)/[\w./-]+)`", README.read_text(encoding="utf-8")):
        if not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"README names files that are not in the repository: {missing}"


def test_dvc_repro_is_never_run_through_the_venv_path_without_activation():
    """`.venv/bin/dvc repro` alone fails with `lfp: command not found`; the README must say to activate."""
    text = README.read_text(encoding="utf-8")
    for block in code_blocks(text):
        for cmd in commands(block):
            assert not (cmd[0].endswith(".venv/bin/dvc") and cmd[1:2] in (["repro"], ["exp"])), shlex.join(cmd)
    assert "source .venv/bin/activate" in text


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LFP_", "OPENAI_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    return env


def test_cheap_readme_commands_run(readme_commands):
    ran = []
    for cmd in readme_commands:
        argv = [program(cmd[0]), *cmd[1:]]
        line = shlex.join(argv)
        if not line.startswith(RUNNABLE):
            continue
        targets = [w for w in argv[3:] if not w.startswith("-")] if line.startswith("dvc metrics show") else []
        if any(not (ROOT / t).exists() for t in targets):
            continue  # a pipeline output (e.g. reports/headline.json) not produced in this checkout yet
        proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"`{line}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}"
        ran.append(line)
        if line == "lfp --help":
            from lfp.cli import STAGES

            assert all(stage in proc.stdout for stage in STAGES)
    assert "lfp --help" in ran and "dvc dag" in ran, ran
