"""swift_bridge/ checked without a Swift toolchain (Core ML builds only on macOS): the package pins the
same ml-stable-diffusion commit as the installer, names the product the engine looks for, and its
sources handle every request type of the worker protocol and write only what the schema allows.
Building and running it is the live conformance suite's job (tests/conformance on a Mac)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kitty_coreml.engines.protocol import ERROR_CODES, REQUEST_TYPES, load_schema
from kitty_coreml.install.toolchain import ML_SD_COMMIT, WORKER_PRODUCT
from kitty_coreml.settings import Settings

BRIDGE = Path(__file__).resolve().parent.parent / "swift_bridge"
PACKAGE = (BRIDGE / "Package.swift").read_text(encoding="utf-8")
SOURCES = sorted((BRIDGE / "Sources" / WORKER_PRODUCT).glob("*.swift"))
SWIFT = "\n".join(path.read_text(encoding="utf-8") for path in SOURCES)
SCHEMA = load_schema()["$defs"]
REPLY_TYPES = {SCHEMA[ref["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["const"]: ref["$ref"].rsplit("/", 1)[1]
               for ref in SCHEMA["reply"]["oneOf"]}


def _swift_string_list(name: str) -> list[str]:
    match = re.search(rf"\blet {name} = \[([^\]]*)\]", SWIFT)
    assert match, f"no `let {name} = [...]` in the Swift sources"
    return re.findall(r'"([^"]*)"', match.group(1))


def _literal_at(text: str, start: int) -> str:
    """The bracketed Swift literal that opens at text[start] ('['), brackets inside strings ignored."""
    depth, in_string, index = 0, False, start
    while index < len(text):
        char = text[index]
        if in_string:
            if char == "\\":
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return text[start:index + 1]
        index += 1
    raise AssertionError(f"unbalanced literal at {text[start:start + 60]!r}")


def _written_messages() -> dict[str, set[str]]:
    """Reply type -> the top-level keys of every `["type": "...", ...]` literal the sources write."""
    written: dict[str, set[str]] = {}
    for match in re.finditer(r'\["type": "(\w+)"', SWIFT):
        literal = _literal_at(SWIFT, match.start())
        depth_zero = re.sub(r"\[[^\[\]]*\]", "", literal[1:-1])  # drop nested arrays such as ["native"]
        written.setdefault(match.group(1), set()).update(re.findall(r'"(\w+)":', depth_zero))
    return written


def test_package_pins_the_installers_commit_and_declares_the_worker_product():
    assert PACKAGE.startswith("// swift-tools-version: 5.8\n")
    assert ML_SD_COMMIT == Settings.model_fields["ml_sd_commit"].default
    dependencies = re.findall(r"\.package\(([^)]*)\)", PACKAGE)
    assert len(dependencies) == 1, dependencies
    assert re.fullmatch(r'\s*url: "https://github.com/apple/ml-stable-diffusion",\s*revision: "([0-9a-f]{40})"\s*',
                        dependencies[0]).group(1) == ML_SD_COMMIT
    assert '.product(name: "StableDiffusion", package: "ml-stable-diffusion")' in PACKAGE
    assert f'.executable(name: "{WORKER_PRODUCT}", targets: ["{WORKER_PRODUCT}"])' in PACKAGE
    assert f'name: "{WORKER_PRODUCT}"' in PACKAGE.split(".executableTarget(", 1)[1]
    assert re.findall(r"\.macOS\(([^)]*)\)", PACKAGE) == ['"13.1"']


def test_sources_sit_where_swiftpm_looks_for_the_target():
    assert [path.name for path in SOURCES] == ["Protocol.swift", "main.swift"]
    assert "import StableDiffusion" in SWIFT


def test_every_request_type_is_dispatched():
    request_types = [SCHEMA[ref["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["const"]
                     for ref in SCHEMA["request"]["oneOf"]]
    assert _swift_string_list("requestTypes") == request_types == list(REQUEST_TYPES)
    for kind in request_types:
        assert re.search(rf'(case "{kind}"|== "{kind}")', SWIFT), f"no branch handles a {kind!r} request"


def test_enumerations_match_the_schema():
    load, generate = SCHEMA["load_request"]["properties"], SCHEMA["generate_request"]["properties"]
    assert _swift_string_list("computeUnitNames") == load["compute_units"]["enum"]
    assert _swift_string_list("familyNames") == load["family"]["enum"]
    assert _swift_string_list("schedulerNames") == generate["scheduler"]["enum"]


def test_every_field_the_worker_reads_is_a_request_field():
    request_fields = set().union(*(SCHEMA[name]["properties"] for name in SCHEMA if name.endswith("_request")))
    read = set(re.findall(r'\.(?:string|optionalString|number|integer|bool)\("(\w+)"', SWIFT))
    read |= set(re.findall(r'message\["(\w+)"\]', SWIFT))
    assert read, "found no field reads: the pattern no longer matches the sources"
    assert read <= request_fields, read - request_fields
    assert {"model_path", "compute_units", "family", "reduce_memory", "safety", "prompt", "negative_prompt",
            "count", "steps", "guidance", "scheduler", "seed", "input_image", "strength", "output_dir",
            "target", "protocol_version"} <= read


def test_written_messages_carry_exactly_the_schema_fields():
    written = _written_messages()
    assert set(written) == set(REPLY_TYPES), set(written) ^ set(REPLY_TYPES)
    for kind, keys in written.items():
        definition = SCHEMA[REPLY_TYPES[kind]]
        assert keys <= set(definition["properties"]), (kind, keys - set(definition["properties"]))
        assert set(definition["required"]) <= keys, (kind, set(definition["required"]) - keys)


def test_every_error_code_written_is_a_protocol_code():
    codes = set(re.findall(r'RequestFailed\("(\w+)"', SWIFT))
    codes |= set(re.findall(r'errorReply\([^,()]+, "(\w+)"', SWIFT))
    assert codes <= set(ERROR_CODES) == set(SCHEMA["error"]["properties"]["code"]["enum"]), codes - set(ERROR_CODES)
    assert {"malformed", "unknown_type", "bad_request", "unsupported_version", "busy", "not_loaded",
            "load_failed", "unsupported", "cancelled", "generation_failed"} <= codes


@pytest.mark.parametrize("setting", ["0.18215", "0.13025", "1.5305", "0.0609", ".numpyRNG",
                                     "useDenoisedIntermediates = true", "controlNet: []"])
def test_generation_settings_follow_apples_cli(setting):
    assert setting in SWIFT


def test_images_are_named_as_the_protocol_says_and_renamed_into_place():
    assert '"image_\\(index).png"' in SWIFT
    assert '".image_\\(index).png.partial"' in SWIFT
    assert "rename(partialPath, finalPath)" in SWIFT
