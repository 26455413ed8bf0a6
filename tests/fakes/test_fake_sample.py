"""The fake StableDiffusionSample keeps the real binary's contract (CONTRACTS.md §1).

Every test runs the fake as a real subprocess, the way the engine does.
"""

import json
import os
import pty
import signal
import struct
import subprocess
import zlib

import pytest

from . import make_resources, write_fake_binary

PROGRESS_PREFIX = "\x1b[1A\x1b[K"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_sample")
    return {
        "root": root,
        "binary": write_fake_binary(root),
        "sd": make_resources(root / "sd", safety=True),
        "img2img": make_resources(root / "img2img", encoder=True, width=768, height=512),
        "chunked": make_resources(root / "chunked", chunked=True, width=576, height=768),
        "sdxl": make_resources(root / "sdxl", family="sdxl", width=1024, height=1024),
    }


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def run(world, *args, env=None, cwd=None):
    return subprocess.run([str(world["binary"]), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=30)


def png_info(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, position = [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        assert struct.unpack(">I", data[position + 8 + length:position + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append(kind)
        position += 12 + length
    width, height = struct.unpack(">II", data[16:24])
    return width, height, chunks


USAGE_TAIL = ("Usage: stable-diffusion-sample [<options>] <prompt>\n"
              "  See 'stable-diffusion-sample --help' for more information.\n")


@pytest.mark.parametrize("args, message", [
    (["--step-count", "3"], "Error: Missing expected argument '<prompt>'\nHelp:  <prompt>  Input string prompt\n"),
    (["-x"], "Error: Missing expected argument '<prompt>'\n"),  # decoding fails before leftovers are checked
    (["a cat", "-x"], "Error: Unknown option '-x'\n"),
    (["a cat", "--resurce-path", "r"], "Error: Unknown option '--resurce-path'. Did you mean '--resource-path'?\n"),
    (["a cat", "--step-count", "abc"],
     "Error: The value 'abc' is invalid for '--step-count <step-count>'\n"
     "Help:  --step-count <step-count>  Number of diffusion steps to perform\n"),
    (["a cat", "--negative-prompt", "-blurry"], "Error: Missing value for '--negative-prompt <negative-prompt>'\n"),
    (["a cat", "--seed", "4294967296"], "Error: The value '4294967296' is invalid for '--seed <seed>'\n"),
    (["a", "b"], "Error: Unexpected argument 'b'\n"),
])
def test_parse_errors_print_usage_and_exit_64(world, args, message):
    result = run(world, *args)
    assert result.returncode == 64
    assert result.stderr.startswith(message)
    assert result.stderr.endswith(USAGE_TAIL)
    assert result.stdout == ""


def test_help_goes_to_stdout_and_exits_0(world):
    result = run(world, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("OVERVIEW: Run stable diffusion")
    assert "--compute-units <compute-units>" in result.stdout


def test_attached_values_and_terminator_let_dashes_through(world, out):
    result = run(world, "--resource-path", world["sd"], "--output-path", out, "--step-count=2",
                 "--seed=5", "--negative-prompt=-blurry", "--", "-x y")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("Saved -x_y.5.final.png\n")
    assert (out / "-x_y.5.final.png").is_file()


def test_output_lines_and_pndm_step_count(world, out):
    result = run(world, "a cat", "--resource-path", world["sd"], "--output-path", out,
                 "--step-count", "5", "--seed", "42")
    assert result.returncode == 0
    lines = result.stdout.split("\n")
    assert lines[:3] == ["Loading resources and creating pipeline",
                         "(Note: This can take a while the first time using these resources)",
                         "Sampling ..."]
    steps = lines[3:9]
    for number, line in enumerate(steps):
        assert line.startswith(f"{PROGRESS_PREFIX}Step {number} of 6  [mean: ")
        assert line.endswith("] step/sec")
    assert lines[9:] == ["Saved a_cat.42.final.png", ""]


def test_dpmpp_step_count_and_img2img_naming(world, out, tmp_path):
    start = run(world, "start", "--resource-path", world["img2img"], "--output-path", tmp_path,
                "--step-count", "2", "--seed", "1")
    assert start.returncode == 0
    # Float32: 0.57 * 100 is 57, where doubles give 56; startStep = 10 - Int(10 * 0.57) = 5
    result = run(world, "p", "--resource-path", world["img2img"], "--output-path", out,
                 "--image", tmp_path / "start.1.final.png", "--strength", "0.57", "--step-count", "10",
                 "--scheduler", "dpmpp", "--image-count", "2", "--seed", "9")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Step ") == 5
    assert f"{PROGRESS_PREFIX}Step 4 of 5  [" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["p.0.str57.9.final.png", "p.1.str57.9.final.png"]
    first, second = (out / "p.0.str57.9.final.png").read_bytes(), (out / "p.1.str57.9.final.png").read_bytes()
    assert first != second


@pytest.mark.parametrize("resources, size", [("sd", (512, 512)), ("img2img", (768, 512)), ("chunked", (576, 768))])
def test_png_size_comes_from_unet_metadata_and_output_is_deterministic(world, tmp_path, resources, size):
    names = []
    for attempt in ("a", "b"):
        folder = tmp_path / attempt
        folder.mkdir()
        assert run(world, "x", "--resource-path", world[resources], "--output-path", folder,
                   "--step-count", "2", "--seed", "3").returncode == 0
        names.append(folder / "x.3.final.png")
    assert png_info(names[0]) == (*size, [b"IHDR", b"IDAT", b"IEND"])
    assert names[0].read_bytes() == names[1].read_bytes()


def test_slash_in_prompt_makes_a_sub_path_and_a_missing_folder_fails(world, out):
    (out / "a").mkdir()
    ok = run(world, "a/b c", "--resource-path", world["sd"], "--output-path", out, "--step-count", "2", "--seed", "1")
    assert ok.returncode == 0
    assert (out / "a" / "b_c.1.final.png").is_file()
    failed = run(world, "z/b", "--resource-path", world["sd"], "--output-path", out, "--step-count", "2", "--seed", "1")
    assert failed.returncode == 1
    assert failed.stderr == f'Error: saving("Failed to create destination for file://{out}/z/b.1.final.png")\n'


def test_safety_failure_line_has_no_newline(world, out):
    dropped = run(world, "p", "--resource-path", world["sd"], "--output-path", out, "--step-count", "2",
                  "--seed", "4", "--image-count", "3", env={"FAKE_SD_SAFETY_DROP": "0,1"})
    assert dropped.returncode == 0
    assert dropped.stdout.endswith("Image 0 failed safety check and was not saved"
                                   "Image 1 failed safety check and was not saved"
                                   "Saved p.2.4.final.png\n")
    assert [p.name for p in out.iterdir()] == ["p.2.4.final.png"]
    kept = run(world, "p", "--resource-path", world["sd"], "--output-path", out, "--step-count", "2",
               "--seed", "4", "--disable-safety", env={"FAKE_SD_SAFETY_DROP": "all"})
    assert kept.stdout.endswith("Saved p.4.final.png\n")


@pytest.mark.parametrize("resources, extra, omit, message", [
    (None, [], (), 'Error: resources("Resource path does not exist {path}")\n'),
    ("sd", [], ("merges.txt",), "Error: The file \u201cmerges.txt\u201d couldn\u2019t be opened because there is no such file.\n"),
    ("sd", [], ("Unet.mlmodelc",), "Error: Unable to load model: file://{path}/Unet.mlmodelc/."),
    ("sd", ["--xl"], (), "Error: Unable to load model: file://{path}/TextEncoder2.mlmodelc/."),
    ("sd", ["--image", "{path}/vocab.json", "--strength", "0.5"], (), 'Error: resources("Starting image not found file://'),
    ("sd", ["--image", "{start}", "--strength", "0.5"], (), "Error: startingImageProvidedWithoutEncoder\n"),
    ("img2img", ["--image", "{start}"], (), "Error: sampleInputShapeNotCorrect\n"),
])
def test_runtime_errors_exit_1(world, tmp_path, resources, extra, omit, message):
    path = tmp_path / "resources"
    if resources == "sd":
        make_resources(path, omit=omit)
    elif resources == "img2img":
        make_resources(path, encoder=True, width=768, height=512)
    start = world["root"] / "start512.png"
    if not start.exists():
        assert run(world, "start512", "--resource-path", world["sd"], "--output-path", world["root"],
                   "--step-count", "2", "--seed", "0", "--disable-safety").returncode == 0
        (world["root"] / "start512.0.final.png").rename(start)
    args = [a.format(path=path, start=start) for a in extra]
    result = run(world, "p", "--resource-path", path, "--step-count", "2", *args)
    assert result.returncode == 1
    assert result.stderr.startswith(message.format(path=path))


def test_crashes_die_by_sigtrap_and_lose_buffered_stdout(world, tmp_path):
    no_vocab = make_resources(tmp_path / "no_vocab", omit=("vocab.json",))
    crashed = run(world, "p", "--resource-path", no_vocab)
    assert crashed.returncode == -signal.SIGTRAP
    assert "Fatal error: 'try!' expression unexpectedly raised an error: " in crashed.stderr
    assert crashed.stdout == ""  # block-buffered output dies with the process
    xl_without_flag = run(world, "p", "--resource-path", world["sdxl"])
    assert xl_without_flag.returncode == -signal.SIGTRAP
    assert "Fatal error: Unexpectedly found nil while unwrapping an Optional value" in xl_without_flag.stderr


def test_xl_flag_runs_xl_resources(world, out):
    result = run(world, "p", "--xl", "--resource-path", world["sdxl"], "--output-path", out,
                 "--step-count", "2", "--seed", "8")
    assert result.returncode == 0
    assert png_info(out / "p.8.final.png")[:2] == (1024, 1024)


def test_pipe_flushes_in_4096_byte_blocks(world, out):
    result = run(world, "p", "--resource-path", world["sd"], "--output-path", out, "--step-count", "80",
                 env={"FAKE_SD_CRASH_AT_STEP": "79"})
    assert result.returncode == -signal.SIGSEGV
    assert len(result.stdout.encode()) == 4096
    assert "Step 79" not in result.stdout


def read_pty_until(master, marker):
    seen = b""
    while marker not in seen:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        seen += chunk
    return seen.decode()


def test_pty_streams_each_line_and_hang_knob_blocks(world, out):
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [str(world["binary"]), "p", "--resource-path", str(world["sd"]), "--output-path", str(out),
         "--step-count", "5"], stdout=slave, stderr=subprocess.DEVNULL,
        env={**os.environ, "FAKE_SD_HANG_AT_STEP": "2", "FAKE_SD_STEP_DELAY": "0.001"})
    os.close(slave)
    try:
        seen = read_pty_until(master, b"Step 2 of 6")
        assert "Sampling ...\r\n" in seen and "Step 2 of 6  [mean: " in seen
        assert process.poll() is None  # blocked after printing step 2
    finally:
        process.kill()
        process.wait()
        os.close(master)


def test_pty_output_before_a_crash_survives(world, out):
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [str(world["binary"]), "p", "--resource-path", str(world["sd"]), "--output-path", str(out),
         "--step-count", "5"], stdout=slave, stderr=subprocess.DEVNULL,
        env={**os.environ, "FAKE_SD_CRASH_AT_STEP": "1"})
    os.close(slave)
    seen = read_pty_until(master, b"never printed")
    os.close(master)
    assert process.wait() == -signal.SIGSEGV
    assert "Step 1 of 6" in seen and "Step 2" not in seen


def test_log_pid_fail_and_spawn_knobs(world, out, tmp_path):
    argv_log, pid_file, child_file = tmp_path / "argv.jsonl", tmp_path / "pid", tmp_path / "child"
    env = {"FAKE_SD_ARGV_LOG": str(argv_log), "FAKE_SD_PID_FILE": str(pid_file),
           "FAKE_SD_SPAWN_CHILD": str(child_file)}
    result = run(world, "p", "--resource-path", world["sd"], "--output-path", out, "--step-count", "2",
                 env=env, cwd=tmp_path)
    assert result.returncode == 0
    child_pid = int(child_file.read_text())
    try:
        os.kill(child_pid, 0)  # the grandchild outlives the fake
    finally:
        os.kill(child_pid, signal.SIGKILL)
    entry = json.loads(argv_log.read_text())
    assert entry == {"argv": ["p", "--resource-path", str(world["sd"]), "--output-path", str(out),
                              "--step-count", "2"], "cwd": str(tmp_path), "pid": int(pid_file.read_text())}

    failed = run(world, "p", "--resource-path", world["sd"], env={"FAKE_SD_FAIL": "boom"})
    assert (failed.returncode, failed.stderr) == (1, "Error: boom\n")
    assert failed.stdout.startswith("Loading resources and creating pipeline\n")
    assert "Sampling" not in failed.stdout


def test_resource_metadata_reflects_family_and_attention(tmp_path):
    def schema(folder, model):
        return json.loads((folder / f"{model}.mlmodelc" / "metadata.json").read_text())[0]

    xl = make_resources(tmp_path / "xl", family="sdxl", attention="original")
    unet = schema(xl, "Unet")
    assert {"time_ids", "text_embeds"} <= {entry["name"] for entry in unet["inputSchema"]}
    assert "Ios16.einsum" not in unet["mlProgramOperationTypeHistogram"]
    sd = make_resources(tmp_path / "sd", width=768, height=576, encoder=True)
    assert schema(sd, "Unet")["inputSchema"][0]["shape"] == "[2, 4, 72, 96]"
    decoder_input = schema(sd, "VAEDecoder")["inputSchema"][0]
    assert (decoder_input["name"], decoder_input["shape"]) == ("z", "[1, 4, 72, 96]")
    assert schema(sd, "VAEEncoder")["inputSchema"][0]["shape"] == "[1, 3, 576, 768]"
    assert "Ios16.einsum" in schema(sd, "Unet")["mlProgramOperationTypeHistogram"]
    sd3 = make_resources(tmp_path / "sd3", family="sd3")
    assert {p.name for p in sd3.iterdir()} == {"TextEncoder.mlmodelc", "TextEncoder2.mlmodelc", "vocab.json",
                                              "MultiModalDiffusionTransformer.mlmodelc", "VAEDecoder.mlmodelc",
                                              "merges.txt"}
    with pytest.raises(ValueError):
        make_resources(tmp_path / "typo", omit=("Unet.mlmodel",))
