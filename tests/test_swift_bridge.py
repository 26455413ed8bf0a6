"""swift_bridge/ checked without a Swift toolchain (Core ML builds only on macOS): the package pins the
same ml-stable-diffusion commit as the installer, names the product the engine looks for, its sources
handle every request type of the worker protocol and write only what the schema allows, and the fixes
made against Apple's library (swift_bridge/README.md, "Where this follows the library") are in place.

Why reading the source is the strongest check possible here: no machine that runs this suite has a
Swift compiler or Core ML, so the worker can be neither built nor run; its behaviour is the live
conformance suite's job (`kitty-coreml selftest --live`, tests/conformance on a Mac). What can be
proved here is that each guard exists, where it must sit (before the call that would crash, before the
write that must not happen), so that removing or reordering one fails a test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kitty_coreml.engines.protocol import ERROR_CODES, REQUEST_TYPES, load_schema
from kitty_coreml.install.toolchain import ML_SD_COMMIT, WORKER_PRODUCT, swift_too_old
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


def _balanced(text: str, start: int, opening: str, closing: str) -> str:
    """The span of text that opens with `opening` at text[start] and ends at its matching `closing`,
    brackets inside Swift strings ignored."""
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
        elif char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return text[start:index + 1]
        index += 1
    raise AssertionError(f"unbalanced {opening}{closing} at {text[start:start + 60]!r}")


def _literal_at(text: str, start: int) -> str:
    """The bracketed Swift literal that opens at text[start] ('[')."""
    return _balanced(text, start, "[", "]")


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
    assert ML_SD_COMMIT == Settings.__dataclass_fields__["ml_sd_commit"].default
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


def _body(signature: str) -> str:
    """The braces-balanced body of the first declaration starting with `signature` (strings ignored)."""
    return _balanced(SWIFT, SWIFT.index("{", SWIFT.index(signature)), "{", "}")


def _in_order(text: str, *parts: str) -> None:
    at = -1
    for part in parts:
        found = text.find(part, at + 1)
        assert found > at, f"{part!r} missing or out of order in:\n{text[:400]}"
        at = found


def test_item1_sd3_img2img_is_refused_and_not_advertised():
    generate = _body("func generate(")
    _in_order(generate, "if let inputImage {", 'guard family != "sd3" else {', 'RequestFailed("unsupported"',
              "configuration.startingImage = image", "model.pipeline.generateImages(")
    load = _body("func load(")
    assert 'let img2img = resources.hasEncoder && key.family != "sd3"' in load
    _in_order(load, '"has_encoder": img2img', "hasEncoder: img2img")
    assert '"has_encoder": resources.hasEncoder' not in SWIFT


def test_item2_guidance_below_one_on_a_batch_two_unet_is_refused_before_generating():
    generate = _body("func generate(")
    _in_order(generate, 'if family == "sd", configuration.guidanceScale < 1, let batch = model.unetBatch, batch >= 2 {',
              'RequestFailed("unsupported", "guidance:', "takes batch \\(batch)", "model.pipeline.generateImages(")
    assert "let unetBatch: Int? = family == \"sd3\" ? nil : shape[0]" in _body("func inspectResources(")


def test_item3_no_progress_after_the_stop_flag_and_no_wait_at_end_of_input_unless_generating():
    progress = _body("func sendProgress(")
    _in_order(progress, "lock.lock()", "if job.stopped { return false }", "writer.send(message)")
    handler = SWIFT[SWIFT.index("model.pipeline.generateImages(configuration: configuration) { progress in"):]
    handler = handler[:handler.index("\n            }")]
    assert "sendProgress(job," in handler and "writer.send" not in handler
    serve = _body("func serve()")
    end = serve[serve.index("})"):]  # after readLines returns: end of stdin
    _in_order(end, "lock.lock()", "inputEnded = true", "let running = pendingGenerate?.started == true",
              "pendingGenerate?.stopped = true", "lock.unlock()", "if running { requests.sync {} }", "finish(0)")
    assert end.count("requests.sync") == 1
    _in_order(_body("func run("), "lock.lock()", "job.started = true", "lock.unlock()", "autoreleasepool")


def test_item4_library_prints_reach_stderr_and_every_exit_flushes():
    main = SWIFT[SWIFT.index("let protocolDescriptor = dup(STDOUT_FILENO)"):]
    _in_order(main, "dup2(STDERR_FILENO, STDOUT_FILENO)", "setvbuf(stdout, nil, _IOLBF, 0)", "Worker(writer:")
    assert "FileHandle" not in SWIFT.replace("/// Writes one line to stderr with C stdio: FileHandle.write", "")
    _in_order(_body("func logLine("), "fputs(", "stderr)")
    _in_order(_body("func finish("), "fflush(nil)", "_exit(status)")
    calls = re.findall(r"(?<![\w.])(_?exit)\(", SWIFT)
    assert calls == ["_exit"], calls  # the one in finish(); everything else leaves through finish()


def test_items5_and_6_cancelled_reduce_memory_unloads_and_requests_run_in_autorelease_pools():
    generate = _body("func generate(")
    _in_order(generate, "if images.isEmpty && isStopped(job) {", "if model.key.reduceMemory { model.pipeline.unloadResources() }",
              'RequestFailed("cancelled"')
    assert "autoreleasepool {" in _body("func serve()")
    assert "autoreleasepool { () -> Message in" in _body("func run(")


def test_item7_input_images_are_drawn_upright_as_nsimage_does():
    upright = _body("func uprightImage(")
    _in_order(upright, "kCGImagePropertyOrientation", "guard orientation != 1", "kCGImageSourceCreateThumbnailWithTransform: true",
              "CGImageSourceCreateThumbnailAtIndex")
    assert "guard let image = uprightImage(inputImage)" in _body("func generate(")


@pytest.mark.parametrize(("output", "problem"), [
    ("swift-driver version: 1.75.2 Apple Swift version 5.8.1 (swiftlang-5.8.0.124.5 clang-1403.0.22.11.100)\n"
     "Target: arm64-apple-macosx13.0", "Swift 5.8 is too old"),
    ("Apple Swift version 5.9.2 (swiftlang-5.9.2.2.56 clang-1500.1.0.2.5)\nTarget: arm64-apple-macosx14.0", None),
    ("swift-driver version: 1.115 Apple Swift version 6.0.3 (swiftlang-6.0.3.1.10 clang-1600.0.30.1)", None),
    ("no version here", None),
])
def test_item8_swift_older_than_xcode_15_is_named(output, problem):
    found = swift_too_old(output)
    assert (found is None) if problem is None else (found.startswith(problem) and "Xcode 15" in found)
