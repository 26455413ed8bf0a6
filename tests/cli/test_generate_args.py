"""cli/generate_args.py reads `generate`'s command line without typer. It must take exactly what click
takes, give exactly click's values, and hand everything else to typer: checked here against the typer
command itself (its declared parameters, and click parsing the same command lines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.main

from kitty_coreml import cli
from kitty_coreml.cli.app import app
from kitty_coreml.cli.generate_args import COMPLETION_VARIABLE, GENERATE_FLAGS, read_generate_args
from tests.conftest import clean_env

cli._load_commands(["generate"])
COMMAND = typer.main.get_command(app).commands["generate"]


def _clicks_values(args: list[str]) -> dict:
    """What typer's command parses from `generate ARGS`, closed sets as their text."""
    with COMMAND.make_context("generate", list(args)) as context:
        return {name: getattr(value, "value", value) for name, value in context.params.items()}


def test_the_table_is_the_typer_commands_options():
    declared = {param.name: param for param in COMMAND.params
                if param.param_type_name == "option" and param.name != "help"}
    assert sorted(declared) == sorted(flag.name for flag in GENERATE_FLAGS)
    for flag in GENERATE_FLAGS:
        option = declared[flag.name]
        assert tuple(option.opts) == flag.names and tuple(option.secondary_opts) == flag.off, flag.name
        assert getattr(option.default, "value", option.default) == flag.default, flag.name
        assert option.is_flag == (flag.kind == "switch"), flag.name


@pytest.mark.parametrize("flag", [flag for flag in GENERATE_FLAGS if flag.kind == "choice"], ids=lambda f: f.name)
def test_each_choice_is_typers_choice(flag):
    for choice in flag.choices:
        assert _clicks_values(["p", flag.names[0], choice])[flag.name] == choice
    with pytest.raises(typer.BadParameter):
        _clicks_values(["p", flag.names[0], "not-a-choice"])


READ_ALIKE = [
    ["generate", "a red cube"],
    ["generate", "a red cube", "--steps", "4", "--count", "2", "--json"],
    ["generate", "--steps=4", "a red cube", "-n", "3"],
    ["generate", "--negative", "-blurry", "x"],                       # a value may start with '-'
    ["generate", "--negative", "--", "x"],                            # even be `--`
    ["generate", "--", "--steps"],                                    # after `--` it is the prompt
    ["generate", "-", "--no-safety"],
    ["generate", "", "--model", ""],
    ["generate", "p", "--negative=a=b", "--run-id=r 1"],
    ["generate", "p", "--guidance", "12", "--strength", "0.25", "--timeout", "-5.0", "--seed", "007"],
    ["generate", "p", "--seed", "-1", "--width", "99999999999999999999", "--height", "0"],
    ["generate", "p", "--scheduler", "dpmpp", "--compute-units", "cpuOnly", "--engine", "mock"],
    ["generate", "p", "--image", "in.png", "--reduce-memory", "--safety", "--dry-run"],
    ["generate", "p", "--server", "http://127.0.0.1:1", "--wait", "--cold"],
]


@pytest.mark.parametrize("args", READ_ALIKE, ids=" ".join)
def test_what_it_reads_it_reads_as_click_does(args):
    values = read_generate_args(args)
    assert values is not None
    assert {k: str(v) if isinstance(v, Path) else v for k, v in values.items()} == \
        {k: str(v) if isinstance(v, Path) else v for k, v in _clicks_values(args[1:]).items()}


LEFT_TO_TYPER = [
    ["generate"],                                        # no prompt
    ["generate", "a", "b"],                              # two
    ["generate", "--help"], ["generate", "p", "-h"],
    ["generate", "p", "--stpes", "4"],                   # unknown
    ["generate", "p", "--steps", "4", "--steps", "5"],   # repeated
    ["generate", "p", "--safety", "--no-safety"],
    ["generate", "p", "--steps", "four"], ["generate", "p", "--steps", "1.5"], ["generate", "p", "--steps="],
    # numbers typers read differently (click: int() and float(); newer typer: pydantic), or refuse
    ["generate", "p", "--steps", "+4"], ["generate", "p", "--steps", "5_0"], ["generate", "p", "--steps", " 5"],
    ["generate", "p", "--steps", "٣"], ["generate", "p", "--guidance", "1e1"], ["generate", "p", "--guidance", "nan"],
    ["generate", "p", "--guidance", "7."], ["generate", "p", "--guidance", ".5"],
    ["generate", "p", "--scheduler", "ddim"], ["generate", "p", "--engine", "Mock"],
    ["generate", "p", "--json=1"],                       # a flag given a value
    ["generate", "p", "-n3"], ["generate", "p", "-n=3"],
    ["generate", "p", "--count"],                        # a value missing
    ["generate", "p", "--image", ""],
    ["batch", "prompts.txt"], ["--version"], [],
]


@pytest.mark.parametrize("args", LEFT_TO_TYPER, ids=lambda args: " ".join(args) or "nothing")
def test_anything_else_is_left_to_typer(args):
    assert read_generate_args(args) is None


def test_an_unreadable_image_is_left_to_typer_which_refuses_it(tmp_path, monkeypatch):
    image = tmp_path / "secret.png"
    image.write_bytes(b"x")
    # unreadable to this process whoever runs it (root reads a chmod 0 file)
    readable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: str(path) != str(image) and readable(path, mode, **kw))
    assert read_generate_args(["generate", "p", "--image", str(image)]) is None
    with pytest.raises(typer.BadParameter):
        _clicks_values(["p", "--image", str(image)])


def test_the_shell_asking_for_completions_is_left_to_typer(monkeypatch):
    monkeypatch.setenv(COMPLETION_VARIABLE, "complete_bash")
    assert read_generate_args(["generate", "p"]) is None


@pytest.fixture
def signal_handlers():
    """A generation sets SIGTERM and SIGHUP to cancel it; this process gets its own back afterwards."""
    import signal

    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def _main(monkeypatch, capsys, args: list[str], *, through_typer: bool) -> tuple[int, str, str]:
    if through_typer:
        monkeypatch.setattr("kitty_coreml.cli.generate_args.read_generate_args", lambda args: None)
    with pytest.raises(SystemExit) as ended:
        cli.main(args)
    monkeypatch.undo()
    out, err = capsys.readouterr()
    return ended.value.code, out, err


@pytest.mark.parametrize("args", [
    ["generate", "a red cube", "--dry-run", "--engine", "mock", "--seed", "7", "--run-id", "r1", "--json"],
    ["generate", "a red cube", "--steps", "0", "--engine", "mock"],            # our validation, by flag name
    ["generate", "a red cube", "--width", "100", "--engine", "mock", "--json"],
    ["generate", "a red cube", "--engine", "mock", "--server", "ftp://x"],
], ids=lambda args: " ".join(args[2:]))
def test_both_ways_answer_alike(monkeypatch, capsys, tmp_path, signal_handlers, args):
    monkeypatch.setenv("KITTY_COREML_HOME", str(tmp_path / "home"))
    fast = _main(monkeypatch, capsys, args, through_typer=False)
    monkeypatch.setenv("KITTY_COREML_HOME", str(tmp_path / "home"))
    typed = _main(monkeypatch, capsys, args, through_typer=True)
    assert fast == typed
    if "--dry-run" in args:
        assert json.loads(fast[1])["request"]["seed"] == 7


def test_a_generate_call_does_not_import_typer(tmp_path):
    """The whole point: a generation (here a stored mock image) starts without typer or click."""
    probe = ("import atexit, sys\n"
             "loaded = lambda: 'typer' in sys.modules or 'click' in sys.modules\n"
             "atexit.register(lambda: sys.stderr.write(f'typer loaded: {loaded()}\\n'))\n"
             "from kitty_coreml.cli import main\n"
             "main(sys.argv[1:])\n")
    done = subprocess.run([sys.executable, "-c", probe, "generate", "a red cube", "--engine", "mock", "--steps", "2",
                           "--width", "64", "--height", "64", "--json"],
                          env=clean_env(KITTY_COREML_HOME=str(tmp_path / "home"), KITTY_COREML_PROGRESS="none"),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "typer loaded: False" in done.stderr
    result = json.loads(done.stdout)
    assert result["servedBy"]["warm"] is False and Path(result["images"][0]["path"]).is_file()
