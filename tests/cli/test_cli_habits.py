"""The habits people expect of a command line: --debug anywhere, help for a bare command, --version,
completion, closed sets as choices, flags named as typed, a JSON error on every --json command,
documented exit codes, and files that follow the umask."""

from __future__ import annotations

import json
import platform
import re
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from kitty_coreml import errors
from kitty_coreml.settings import ML_SD_COMMIT
from tests.conftest import KITTY
from tests.fakes import make_resources

ROOT = Path(__file__).resolve().parents[2]


def test_debug_after_the_command_shows_our_traceback_and_the_one_line_error(kitty):
    run = kitty("generate", "x", "--steps", "0", "--debug")
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "kitty-coreml: error: --steps: got 0; allowed: an integer 1..150"
    assert "kitty_coreml/request.py" in run.stderr
    frames = [line for line in lines if line.startswith('  File "')]
    assert frames and not [f for f in frames if "/typer/" in f or "/click/" in f], frames
    assert len(lines) < 25


def test_debug_before_the_command_too_and_after_the_double_dash_it_is_the_prompt(kitty):
    run = kitty("--debug", "generate", "x", "--steps", "0")
    assert run.returncode == 2 and run.stderr.startswith("Traceback") and "/typer/" not in run.stderr
    plan = kitty("generate", "--dry-run", "--", "--debug").json
    assert plan["argv"][-2:] == ["--", "--debug"]


def test_a_command_line_mistake_has_no_traceback_even_with_debug(kitty):
    run = kitty("generate", "x", "--no-such-flag", "--debug")
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "No such option" in run.stderr and "--no-such-flag" in run.stderr


@pytest.mark.parametrize("command", [[], ["images"], ["models"]], ids=lambda c: " ".join(c) or "root")
def test_a_bare_command_or_group_prints_its_help_and_exits_0(kitty, command):
    run = kitty(*command)
    assert run.returncode == 0
    assert run.stderr == ""
    assert run.stdout.startswith(f"Usage: kitty-coreml {' '.join(command)}".rstrip() + " [OPTIONS] COMMAND")


def test_worker_help_and_worker_agree_there_is_no_default_queue(kitty):
    text = " ".join(kitty("worker", "--help").stdout.split())
    assert "embedded SQLite queue" not in text and "default: REDIS_URL" in text and "Required" in text
    run = kitty("worker", "--burst")
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert run.stderr.startswith("kitty-coreml: error: --queue: none given and REDIS_URL is not set")


def test_version_flag_and_version_json(kitty):
    run = kitty("--version")
    assert run.returncode == 0 and run.stdout == f"kitty-coreml {metadata.version('kitty-coreml')}\n"
    report = kitty("version", "--json").json
    assert report["kitty-coreml"] == metadata.version("kitty-coreml")
    assert report["python"] == platform.python_version()
    assert report["packages"]["torch"] == metadata.version("torch")
    assert report["packages"]["diffusers"] == metadata.version("diffusers")
    assert report["ml-stable-diffusion"] == ML_SD_COMMIT
    assert report["platform"]["system"] == platform.system()
    assert report["platform"]["machine"] == platform.machine()
    assert f"ml-stable-diffusion {ML_SD_COMMIT} (pinned)" in kitty("version").stdout


def test_version_reads_metadata_without_importing_torch(env):
    code = ("import sys\nfrom kitty_coreml.cli import main\ntry:\n    main(['version', '--json'])\n"
            "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            "sys.stderr.write(repr(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["packages"]["torch"] and done.stderr == "[]"


def test_shell_completion_is_enabled_and_lists_a_choice_values(kitty):
    assert "--install-completion" in kitty("--help").stdout
    # the shell named, not detected from this process's ancestors (CI may run the suite under no shell)
    script = kitty("--show-completion", "bash", extra_env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0 and "_KITTY_COREML_COMPLETE=complete_bash" in script.stdout
    complete = {"_KITTY_COREML_COMPLETE": "complete_bash", "COMP_CWORD": "4"}
    for flag, values in [("--scheduler", ["pndm", "dpmpp"]),
                         ("--compute-units", ["all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"]),
                         ("--engine", ["auto", "sample", "coreml-worker", "diffusers", "sdcpp", "mock"])]:
        run = kitty(extra_env={**complete, "COMP_WORDS": f"kitty-coreml generate x {flag} "})
        assert run.returncode == 0 and run.stdout.split() == values


def test_help_lists_choices_shows_flags_as_flags_and_keeps_examples_whole(kitty):
    text = kitty("generate", "--help").stdout
    for values in ("pndm|dpmpp", "all|cpuOnly|cpuAndGPU|cpuAndNeuralEngine", "auto|sample|coreml-worker|diffusers|sdcpp|mock"):
        assert f"[{values}]" in text or f"<{values}>" in text, values  # older typer brackets, newer angles
    assert "<bool>" not in text
    assert re.search(r"^  --json +Print one JSON object", text, re.MULTILINE)
    assert re.search(r"^  --safety / --no-safety +Run", text, re.MULTILINE)
    assert '\n    kitty-coreml generate "studio photo of a matte black water bottle" --count 2 --steps 20\n' in text
    root = kitty("--help").stdout
    summaries = root[root.index("Commands:"):].splitlines()[1:]
    assert summaries and not [line for line in summaries if line.endswith("...")], summaries
    assert "\n    kitty-coreml batch prompts.txt --engine diffusers --model smoke --json\n" in kitty("batch", "--help").stdout


@pytest.mark.parametrize(("args", "start"), [
    (["--scheduler", "euler"], "kitty-coreml: error: Invalid value for '--scheduler': "),
    (["--compute-units", "gpu"], "kitty-coreml: error: Invalid value for '--compute-units': "),
    (["--engine", "turbo"], "kitty-coreml: error: Invalid value for '--engine': "),
    (["--timeout", "0"], "kitty-coreml: error: --timeout: got 0.0; allowed: a number > 0"),
    (["--image", "/no/such/image.png"], "kitty-coreml: error: --image: got '/no/such/image.png'; allowed: an existing"),
    (["--negative", "n" * 8000], "kitty-coreml: error: --negative: got '8000 characters'; allowed: at most"),
    (["--run-id", "a b"], "kitty-coreml: error: --run-id: got 'a b'; allowed: 1..200 printable"),
])
def test_errors_name_the_flag_the_user_typed(kitty, args, start):
    run = kitty("generate", "a cube", *args)
    assert run.returncode == 2
    assert run.stderr.startswith(start) and run.stderr.count("\n") == 1, run.stderr
    for internal in ("input_image", "timeout_s", "compute_units", "negative_prompt", "run_id"):
        assert internal not in run.stderr


def test_a_choice_error_names_the_value_and_what_is_allowed(kitty):
    run = kitty("generate", "a cube", "--compute-units", "gpu")
    assert "'gpu'" in run.stderr and "'cpuAndGPU'" in run.stderr and "'cpuAndNeuralEngine'" in run.stderr


@pytest.mark.parametrize(("args", "code", "exit_code"), [
    (["images", "select", "999", "--json"], "not_found", 2),
    (["images", "list", "--limit", "0", "--json"], "invalid_request", 2),
    (["generate", "a cube", "--timeout", "0", "--json"], "invalid_request", 2),
    (["generate", "a cube", "--count", "x", "--json"], "usage", 2),
    (["generate", "a cube", "--scheduler", "euler", "--json"], "usage", 2),
    (["batch", "/no/such/prompts.txt", "--json"], "invalid_request", 2),
    (["publish", "--json"], "invalid_request", 2),
    (["install", "--verify", "--dry-run", "--json"], "install", 10),
    (["worker", "--json"], "usage", 2),
])
def test_every_json_command_answers_a_failure_with_a_json_error(kitty, args, code, exit_code):
    run = kitty(*args)
    assert run.returncode == exit_code
    answer = run.json
    assert answer["error"]["code"] == code and answer["error"]["message"]
    assert run.stderr.startswith("kitty-coreml: error: ") and run.stderr.count("\n") == 1


def test_a_missing_prompt_is_a_json_error_naming_it(kitty):
    run = kitty("generate", "--json")
    assert run.returncode == 2
    error = run.json["error"]
    # click says "Missing argument"; typer 0.16-0.17 (with click 8.2+) let None through to the request's check
    assert error["code"] in ("usage", "invalid_request") and re.search("prompt", error["message"], re.IGNORECASE)


def test_a_json_error_names_the_flag_too(kitty):
    error = kitty("generate", "a cube", "--image", "/no/such.png", "--json").json["error"]
    assert error["message"].startswith("--image: got '/no/such.png'") and error["details"]["field"] == "--image"


def test_install_verify_json_is_one_object_with_the_report_and_the_error(kitty, tmp_path):
    run = kitty("install", "--verify", "--json", extra_env={"KITTY_COREML_INSTALL_COREML": "no",
                                                             "KITTY_COREML_LINK_DIR": str(tmp_path / "links")})
    assert run.returncode == 10
    answer = run.json  # one JSON document: json.loads refuses two
    assert answer["action"] == "verify" and answer["ok"] is False and answer["error"]["code"] == "install"


def test_readme_documents_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Exit codes"):]
    section = section[:section.index("\n## ", 1)]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    classes = [getattr(errors, name) for name in errors.__all__]
    used = {cls.exit_code for cls in classes} | {0, 1, 130}
    assert used <= documented, sorted(used - documented)
    for cls in classes:
        assert f"`{cls.code}`" in section, cls.code


def test_mock_engine_says_how_many_images_it_samples(kitty):
    run = kitty("generate", "a cube", "--engine", "mock", "-n", "2", extra_env={"KITTY_COREML_PROGRESS": "plain"})
    assert run.returncode == 0, run.stderr
    assert "sampling 2 image(s)" in run.stderr.splitlines()


def test_pndm_steps_show_on_the_scale_asked(kitty):
    run = kitty("generate", "a cube", "--steps", "20", extra_env={"KITTY_COREML_PROGRESS": "plain"})
    assert run.returncode == 0, run.stderr
    steps = [line for line in run.stderr.splitlines() if line.startswith("step ")]
    assert steps[-1].startswith("step 20 of 20") and not [line for line in steps if "of 21" in line]
    shown = [int(line.split()[1]) for line in steps]
    assert shown == sorted(set(shown))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_stored_files_follow_the_umask(env, home, umask):
    done = subprocess.run([KITTY, "generate", "a cube", "--json"], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, umask=umask)
    assert done.returncode == 0, done.stderr
    png = Path(json.loads(done.stdout)["images"][0]["path"])
    expected = 0o666 & ~umask
    assert stat.S_IMODE(png.stat().st_mode) == expected
    assert stat.S_IMODE(png.with_suffix(".json").stat().st_mode) == expected


def test_a_prompt_past_77_tokens_is_a_warning(kitty, tmp_path):
    long_prompt = " ".join(["cat"] * 80)  # the fake vocabulary merges "cat" into one token
    result = kitty("generate", long_prompt, "--negative", "cat cat", "--json").json
    assert result["warnings"] == [
        "the prompt is longer than the text encoder's token limit (77 tokens) and was cut after "
        f"'…{' '.join(['cat'] * 76)[-40:]}'"]
    negative = kitty("generate", "a cat", "--negative", long_prompt, "--json").json["warnings"]
    assert len(negative) == 1 and negative[0].startswith("the negative prompt is longer")
    # guidance below 1 runs only on a Unet converted for one latent (a batch-2 Unet is refused before launch)
    single = make_resources(tmp_path / "batch1", unet_batch=1)
    unguided = kitty("generate", "a cat", "--negative", long_prompt, "--guidance", "0.5", "--json",
                     extra_env={"KITTY_COREML_RESOURCE_PATH": str(single)}).json
    assert unguided["warnings"] == [], "without guidance Apple's pipeline never encodes the negative prompt"
    assert kitty("generate", " ".join(["cat"] * 75), "--json").json["warnings"] == []


def _readme_session_errors() -> list[tuple[list[str], str]]:
    """The README session's commands whose whole answer is one error line, with that line."""
    import shlex

    readme = (ROOT / "README.md").read_text()
    session = readme[readme.index("```console"):]
    session = session[:session.index("```", 3)]
    found = []
    for block in session.split("\n$ ")[1:]:
        command, *output = block.strip().splitlines()
        if len(output) == 1 and output[0].startswith("kitty-coreml: error: "):
            found.append((shlex.split(command)[1:], output[0]))
    return found


@pytest.mark.parametrize(("args", "line"), _readme_session_errors(), ids=lambda value: str(value)[:40])
def test_the_readme_session_errors_are_what_the_cli_says(kitty, home, tmp_path_factory, args, line):
    from kitty_coreml.models import Registry, model_from_folder
    from tests.conformance.harness import smoke_model_path

    # the session's machine: the smoke model installed and nothing else
    Registry(home / "models.json").register(model_from_folder(smoke_model_path(tmp_path_factory.getbasetemp()),
                                                              "smoke"))
    run = kitty(*args, extra_env={"KITTY_COREML_RESOURCE_PATH": "", "KITTY_COREML_SAMPLE_BIN": ""})
    assert run.returncode != 0 and run.stderr == line + "\n"


def test_the_readme_session_has_error_examples():
    assert len(_readme_session_errors()) >= 2
