"""A test double of Apple's `StableDiffusionSample` (ml-stable-diffusion at commit e12202c).

It follows swift/StableDiffusionCLI/main.swift, the pipelines it builds, and swift-argument-parser 1.3.0:
the same arguments, messages, exit codes and signals, progress lines, file names and stdout buffering.
Instead of running Core ML it reads the fake resource folders made by tests/fakes/resources.py and
writes small deterministic PNGs of the size the Unet's metadata.json gives.

Stdlib only, imported lazily where it matters: tests start this program many times.

Knobs (environment variables, all optional):
  FAKE_SD_STEP_DELAY      seconds to spend on each step (float)
  FAKE_SD_HANG_AT_STEP    block forever after printing this step
  FAKE_SD_CRASH_AT_STEP   die by SIGSEGV after printing this step
  FAKE_SD_SAFETY_DROP     comma list of image indices, or `all`: those fail the safety check
                          (even without a SafetyChecker.mlmodelc; never with --disable-safety)
  FAKE_SD_SPAWN_CHILD     a file path: start a grandchild that sleeps forever, write its pid there
  FAKE_SD_ARGV_LOG        a file path: append {"argv", "cwd", "pid"} as one JSON line
  FAKE_SD_PID_FILE        a file path: write this process's pid there
  FAKE_SD_FAIL            after loading, print `Error: <value>` and exit 1
  FAKE_SD_INPUT_COPY      a file path: copy the --image file there, as the binary read it
"""

import json
import os
import signal
import struct
import sys
import time
import zlib

COMMAND_NAME = "stable-diffusion-sample"
EXIT_USAGE = 64  # EX_USAGE, what swift-argument-parser exits with on a parse error
SWIFT_STDOUT_BLOCK = 4096  # stdio buffer size when stdout is a pipe or a file
FAKE_ADDRESS = "0x600000c84000"  # NSError descriptions show an object address

# --------------------------------------------------------------------------------------------
# Output


class SwiftStdout:
    """Swift's print goes through C stdio: line-buffered on a terminal, block-buffered otherwise.

    Whatever is still buffered when the process dies by a signal is lost, as in the real binary.
    """

    def __init__(self):
        self.is_tty = os.isatty(1)
        self.pending = bytearray()

    def write(self, text):
        self.pending += text.encode()
        if self.is_tty:
            last_newline = self.pending.rfind(b"\n")
            if last_newline >= 0:
                self._write_out(last_newline + 1)
        else:
            while len(self.pending) >= SWIFT_STDOUT_BLOCK:
                self._write_out(SWIFT_STDOUT_BLOCK)

    def flush(self):
        self._write_out(len(self.pending))

    def _write_out(self, count):
        data = bytes(self.pending[:count])
        del self.pending[:count]
        while data:
            data = data[os.write(1, data):]


STDOUT = SwiftStdout()


def log(text):
    STDOUT.write(text)


def finish(code, stderr_text=""):
    """A normal exit: stdio is flushed."""
    STDOUT.flush()
    if stderr_text:
        os.write(2, stderr_text.encode())
    sys.exit(code)


def die_by_signal(signum, stderr_text=""):
    """A crash: the stdout buffer is lost, the process ends by `signum`."""
    if stderr_text:
        os.write(2, stderr_text.encode())
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files in the tests' folders
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    signal.pause()


def swift_fatal_error(message, location=""):
    """What a Swift runtime trap (force unwrap of nil, `try!`, bad index) looks like: SIGTRAP."""
    prefix = f"{location}: " if location else ""
    die_by_signal(signal.SIGTRAP, f"{prefix}Fatal error: {message}\n")


def runtime_error(description):
    """An error thrown out of run(): ArgumentParser prints `Error: <description>`, exit 1."""
    finish(1, f"Error: {description}\n")


def swift_string_literal(text):
    """String(describing:) of an enum case shows a String payload as a Swift literal."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif char == "\n":
            escaped.append("\\n")
        elif char == "\r":
            escaped.append("\\r")
        elif char == "\t":
            escaped.append("\\t")
        elif char == "\0":
            escaped.append("\\0")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{{{ord(char):x}}}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def run_error(case, message):
    """A main.swift RunError as ArgumentParser prints it, e.g. resources("...")."""
    return f"{case}({swift_string_literal(message)})"


def file_url(path):
    """Foundation's description of URL(filePath:): absolute paths as file URLs, relative ones
    as `relative -- base`."""
    from urllib.parse import quote

    safe = "/!$&'()*+,;=:@~-._"
    if path.startswith("/"):
        return "file://" + quote(path, safe=safe)
    return quote(path, safe=safe) + " -- file://" + quote(os.getcwd().rstrip("/") + "/", safe=safe)


def no_such_file_error(path):
    """The NSError that Data(contentsOf:) throws for a missing file."""
    name = os.path.basename(path.rstrip("/"))
    absolute = os.path.abspath(path)
    localized = f"The file \u201c{name}\u201d couldn\u2019t be opened because there is no such file."
    description = (
        f'Error Domain=NSCocoaErrorDomain Code=260 "{localized}" '
        f"UserInfo={{NSFilePath={absolute}, NSURL={file_url(absolute)}, "
        f'NSUnderlyingError={FAKE_ADDRESS} {{Error Domain=NSPOSIXErrorDomain Code=2 "No such file or directory"}}}}'
    )
    return localized, description


# --------------------------------------------------------------------------------------------
# Arguments, as swift-argument-parser 1.3.0 parses main.swift's declarations


class Argument:
    def __init__(self, name, help, kind="option", value_name=None, default=None,
                 convert=str, all_values=(), discussion=""):
        self.name = name  # long name without dashes
        self.help = help
        self.kind = kind  # "option", "array" (parsing: .upToNextOption) or "flag"
        self.value_name = value_name or name
        self.default = default
        self.convert = convert
        self.all_values = all_values  # shown in help and errors only for CaseIterable enums
        self.discussion = discussion

    @property
    def attribute(self):
        return self.name.replace("-", "_")


class InvalidValue(Exception):
    pass


def swift_int(text):
    """Int(String): optional sign, ASCII digits, 64-bit range."""
    body = text[1:] if text[:1] in "+-" else text
    if not body or not body.isascii() or not body.isdigit():
        raise InvalidValue
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise InvalidValue
    return value


def swift_uint32(text):
    body = text[1:] if text[:1] == "+" else text
    if not body or not body.isascii() or not body.isdigit() or int(body) >= 2**32:
        raise InvalidValue
    return int(body)


def swift_float(text):
    """Float(String) (strtof on the whole string), rounded to Float32."""
    import re

    decimal = r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)"
    hexadecimal = r"[+-]?0[xX]([0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)([pP][+-]?\d+)?"
    special = r"[+-]?(inf|infinity|nan)"
    if re.fullmatch(decimal, text):
        value = float(text)
    elif re.fullmatch(hexadecimal, text):
        value = float.fromhex(text)
    elif re.fullmatch(special, text, flags=re.IGNORECASE):
        value = float(text.lower().replace("infinity", "inf"))
    else:
        raise InvalidValue
    return float32(value)


def float32(value):
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def choice(*values):
    def convert(text):
        if text not in values:
            raise InvalidValue
        return text

    return convert


COMPUTE_UNITS = ("all", "cpuAndGPU", "cpuOnly", "cpuAndNeuralEngine")  # CaseIterable order

ARGUMENTS = [
    Argument("negative-prompt", "Input string negative prompt", default=""),
    Argument("resource-path", "Path to stable diffusion resources.", value_name="directory-path",
             default="./", discussion="The resource directory should contain\n"
             " - *compiled* models: {TextEncoder,Unet,VAEDecoder}.mlmodelc\n"
             " - tokenizer info: vocab.json, merges.txt"),
    Argument("xl", "The resources correspond to a Stable Diffusion XL model", kind="flag"),
    Argument("sd3", "The resources correspond to a Stable Diffusion 3 model", kind="flag"),
    Argument("image", "Path to starting image."),
    Argument("strength", "Strength for image2image.", default=0.5, convert=swift_float),
    Argument("image-count", "Number of images to sample / generate", default=1, convert=swift_int),
    Argument("step-count", "Number of diffusion steps to perform", default=50, convert=swift_int),
    Argument("save-every", "How often to save samples at intermediate steps", default=0,
             convert=swift_int, discussion="Set to 0 to only save the final sample"),
    Argument("output-path", "Output path", default="./"),
    Argument("seed", "Random seed", convert=swift_uint32),
    Argument("guidance-scale",
             "Controls the influence of the text prompt on sampling process (0=random images)",
             default=7.5, convert=swift_float),
    Argument("compute-units",
             "Compute units to load model with {all,cpuOnly,cpuAndGPU,cpuAndNeuralEngine}",
             default="all", convert=choice(*COMPUTE_UNITS), all_values=COMPUTE_UNITS),
    Argument("scheduler", "Scheduler to use, one of {pndm, dpmpp}", default="pndm",
             convert=choice("pndm", "dpmpp")),
    Argument("rng", "Random number generator to use, one of {numpy, torch, nvidia}",
             default="numpy", convert=choice("numpy", "torch", "nvidia")),
    Argument("controlnet", "ControlNet models used in image generation "
             "(enter file names in Resources/controlnet without extension)", kind="array"),
    Argument("controlnet-inputs", "image for each controlNet model "
             "(corresponding to the same order as --controlnet)", kind="array"),
    Argument("disable-safety", "Disable safety checking", kind="flag"),
    Argument("reduce-memory", "Reduce memory usage", kind="flag"),
    Argument("use-multilingual-text-encoder",
             "Use system multilingual NLContextualEmbedding as encoder model", kind="flag"),
    Argument("script", "The natural language script for the multilingual contextual embedding",
             default="latin", convert=choice("latin", "cyrillic", "cjk")),
]
BY_NAME = {argument.name: argument for argument in ARGUMENTS}
PROMPT_HELP = "Input string prompt"
ABSTRACT = "Run stable diffusion to generate images guided by a text prompt"
VERSION = "0.1"


class Options:
    pass


def usage_block(no_arguments):
    if no_arguments:  # ParserError.noArguments shows the whole help instead of the usage line
        return "\n" + help_text()
    return (f"Usage: {COMMAND_NAME} [<options>] <prompt>\n"
            f"  See '{COMMAND_NAME} --help' for more information.")


def parse_error(message, help_line="", no_arguments=False):
    help_text_line = f"Help:  {help_line}\n" if help_line else ""
    finish(EXIT_USAGE, f"Error: {message}\n{help_text_line}{usage_block(no_arguments)}\n")


def synopsis(argument):
    if argument.kind == "flag":
        return f"--{argument.name}"
    return f"--{argument.name} <{argument.value_name}>"


def help_text():
    import textwrap

    def element(label, abstract, discussion=""):
        padded = "  " + label
        text = padded
        if abstract:
            wrapped = textwrap.fill(abstract, width=80, initial_indent=" " * 26,
                                    subsequent_indent=" " * 26, break_on_hyphens=False)
            text += wrapped[len(padded):] if len(padded) < 26 else "\n" + wrapped
        text += "\n"
        if discussion:
            text += "\n".join(" " * 8 + line for line in discussion.split("\n")) + "\n"
        return text

    options = []
    for argument in ARGUMENTS:
        label = synopsis(argument) + (" ..." if argument.kind == "array" else "")
        default = argument.default
        if argument.name == "seed":
            default = DEFAULT_SEED
        shown = [] if default in (None, "") else [f"default: {default}"]
        if argument.all_values:
            shown.insert(0, "values: " + ", ".join(argument.all_values))
        abstract = argument.help + (f" ({'; '.join(shown)})" if shown else "")
        options.append(element(label, abstract, argument.discussion))
    options.append(element("--version", "Show the version."))
    options.append(element("-h, --help", "Show help information."))
    return (f"OVERVIEW: {ABSTRACT}\n\n"
            f"USAGE: {COMMAND_NAME} [<options>] <prompt>\n\n"
            f"ARGUMENTS:\n{element('<prompt>', PROMPT_HELP)}\n"
            f"OPTIONS:\n{''.join(options)}")


def edit_distance(a, b):
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                                previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def unknown_option_message(shown_name, is_short):
    message = f"Unknown option '{shown_name}'"
    if not is_short:
        candidates = [f"--{name}" for name in BY_NAME]
        distances = {c: edit_distance(c, shown_name) for c in candidates}
        close = [c for c in candidates if distances[c] < 4]
        if close:
            message += f". Did you mean '{min(close, key=distances.get)}'?"
    return message


def split_arguments(argv):
    """SplitArguments: each input becomes a value, an option or the `--` terminator."""
    elements = []
    for position, arg in enumerate(argv):
        if elements and elements[-1]["kind"] == "terminator":
            elements.extend({"kind": "value", "text": a} for a in argv[position:])
            break
        dashes = len(arg) - len(arg.lstrip("-"))
        rest = arg[dashes:]
        if dashes == 0 or (not rest and dashes <= 1):
            elements.append({"kind": "value", "text": arg})
        elif not rest and dashes == 2:
            elements.append({"kind": "terminator"})
        elif dashes > 2:
            parse_error(f"Invalid option: {arg}")
        else:
            name, has_value, value = rest.partition("=")
            if has_value and not name:
                parse_error(f"Invalid option: {'-' * dashes}{rest}")
            is_short = dashes == 1 and len(name) == 1
            elements.append({"kind": "option", "name": name, "dashes": dashes, "is_short": is_short,
                             "value": value if has_value else None,
                             "shown": ("-" if dashes == 1 else "--") + name})
    return elements


def parse_arguments(argv):
    elements = split_arguments(argv)
    options = Options()
    for argument in ARGUMENTS:
        setattr(options, argument.attribute, [] if argument.kind == "array" else argument.default)
    options.seed_given = False
    used = set()

    def convert(argument, element, text):
        try:
            return argument.convert(text)
        except InvalidValue:
            suffix = ""
            if argument.all_values:
                quoted = [f"'{v}'" for v in argument.all_values]
                suffix = f". Please provide one of {', '.join(quoted[:-1])} or {quoted[-1]}."
            parse_error(f"The value '{text}' is invalid for '{element['shown']} <{argument.value_name}>'{suffix}",
                        f"{element['shown']} <{argument.value_name}>  {argument.help}")

    index = 0
    while index < len(elements):
        element = elements[index]
        argument = None
        if element["kind"] == "option" and element["dashes"] == 2:
            argument = BY_NAME.get(element["name"])
        if argument is None:
            index += 1
            continue
        used.add(index)
        following = index + 1
        if argument.kind == "flag":
            if element["value"] is not None:
                parse_error(f"The option '{element['shown']}' does not take any value, "
                            f"but '{element['value']}' was specified.")
            setattr(options, argument.attribute, True)
        elif argument.kind == "option":
            if element["value"] is not None:
                text = element["value"]
            elif following < len(elements) and elements[following]["kind"] == "value":
                text = elements[following]["text"]
                used.add(following)
                following += 1
            else:
                parse_error(f"Missing value for '{element['shown']} <{argument.value_name}>'",
                            f"{element['shown']} <{argument.value_name}>  {argument.help}")
            setattr(options, argument.attribute, convert(argument, element, text))
            options.seed_given = options.seed_given or argument.name == "seed"
        else:
            values = [] if element["value"] is None else [element["value"]]
            while following < len(elements) and elements[following]["kind"] == "value":
                values.append(elements[following]["text"])
                used.add(following)
                following += 1
            if not values:
                parse_error(f"Missing value for '{element['shown']} <{argument.value_name}>'",
                            f"{element['shown']} <{argument.value_name}>  {argument.help}")
            getattr(options, argument.attribute).extend(values)
        index = following

    leftovers = [(i, e) for i, e in enumerate(elements) if i not in used and e["kind"] != "terminator"]
    positional = [e["text"] for _, e in leftovers if e["kind"] == "value"]
    unknown = [e for _, e in leftovers if e["kind"] == "option"]
    asked_help = any((e["is_short"] and e["name"] == "h") or (e["dashes"] == 2 and e["name"] == "help")
                     for e in unknown if e["value"] is None)
    asked_version = any(e["dashes"] == 2 and e["name"] == "version" for e in unknown)
    if not positional and not (asked_help or asked_version):
        parse_error("Missing expected argument '<prompt>'", f"<prompt>  {PROMPT_HELP}",
                    no_arguments=not argv)
    if asked_help:
        log(help_text() + "\n")
        finish(0)
    if asked_version:
        log(VERSION + "\n")
        finish(0)
    if unknown:
        parse_error(unknown_option_message(unknown[0]["shown"], unknown[0]["is_short"]))
    if len(positional) > 1:
        extra = positional[1:]
        if len(extra) == 1:
            parse_error(f"Unexpected argument '{extra[0]}'")
        parse_error(f"{len(extra)} unexpected arguments: '" + "', '".join(extra) + "'")
    options.prompt = positional[0]
    if not options.seed_given:
        options.seed = DEFAULT_SEED
    return options


# --------------------------------------------------------------------------------------------
# Resources


def read_metadata(model_dir):
    """The first entry of a compiled model's metadata.json, or None when it cannot be read."""
    try:
        with open(os.path.join(model_dir, "metadata.json"), encoding="utf-8") as handle:
            return json.load(handle)[0]
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None


def input_shape(model_dir, name=None):
    """The shape of a named input, or of the first one (what Encoder and TextEncoder use)."""
    metadata = read_metadata(model_dir) or {}
    for entry in metadata.get("inputSchema", []):
        if name is None or entry.get("name") == name:
            return json.loads(entry["shape"])
    return None


def output_names(model_dir):
    metadata = read_metadata(model_dir) or {}
    return [entry.get("name") for entry in metadata.get("outputSchema", [])]


def load_model(path):
    """MLModel(contentsOf:) on a compiled model folder; a failure is an NSError whose
    localizedDescription ArgumentParser prints."""
    if not os.path.isfile(os.path.join(path, "coremldata.bin")):
        runtime_error(f"Unable to load model: {file_url(os.path.abspath(path).rstrip('/') + '/')}. "
                      "Compile the model with Xcode or `MLModel.compileModel(at:)`. ")


def read_tokenizer(resource_path):
    """BPETokenizer(mergesAt:vocabularyAt:): merges can throw, the vocabulary is read with try!."""
    merges = os.path.join(resource_path, "merges.txt")
    try:
        with open(merges, "rb") as handle:
            lines = handle.read().split(b"\n")[:-1]  # a last line without "\n" is never parsed
    except OSError:
        runtime_error(no_such_file_error(merges)[0])
    for number, line in enumerate(lines, 1):
        if line and not line.startswith(b"#") and len([p for p in line.split(b" ") if p]) != 2:
            runtime_error(f"invalidMergeFileLine({number})")
    vocab = os.path.join(resource_path, "vocab.json")
    try:
        with open(vocab, "rb") as handle:
            vocabulary = json.loads(handle.read())
    except OSError:
        description = no_such_file_error(vocab)[1]
        swift_fatal_error(f"'try!' expression unexpectedly raised an error: {description}",
                          "StableDiffusion/BPETokenizer.swift:49")
    except ValueError as error:
        swift_fatal_error("'try!' expression unexpectedly raised an error: "
                          f"Swift.DecodingError.dataCorrupted({error})", "StableDiffusion/BPETokenizer.swift:49")
    if not isinstance(vocabulary, dict) or not all(isinstance(v, int) for v in vocabulary.values()):
        swift_fatal_error("'try!' expression unexpectedly raised an error: Swift.DecodingError.typeMismatch",
                          "StableDiffusion/BPETokenizer.swift:49")
    ranks = {}
    for index, line in enumerate(lines):  # readMerges: the rank is the line number, comments included
        if line and not line.startswith(b"#"):
            first, second = (part.decode() for part in line.split(b" ") if part)
            ranks[(first, second)] = index
    return BPETokenizer(ranks)


class BPETokenizer:
    """tokenizer/BPETokenizer.swift: only what decides the token count and the truncation message."""

    START, END = "<|startoftext|>", "<|endoftext|>"

    def __init__(self, ranks):
        self.ranks = ranks

    def tokenize(self, text):
        """startToken, encode(input:), endToken (padding does not matter for truncation)."""
        words = [word for word in text.strip().lower().split(" ") if word]  # split omits empty pieces
        return [self.START, *(token for word in words for token in self.encode_word(word)), self.END]

    def encode_word(self, word):
        tokens = list(word)
        tokens[-1] += "</w>"
        while True:
            pairs = set(zip(tokens, tokens[1:]))
            mergeable = [pair for pair in pairs if pair in self.ranks]
            if not mergeable:
                return tokens
            tokens = self.merge(tokens, min(mergeable, key=self.ranks.get))

    @staticmethod
    def merge(tokens, bigram):
        """update(_:merging:), including its bounds check on `index` where `startMatchIndex` is meant."""
        merged, index = [], 0
        while index < len(tokens):
            if bigram[0] not in tokens[index:]:
                merged += tokens[index:]
                break
            start = tokens.index(bigram[0], index)
            merged += tokens[index:start]
            if index < len(tokens) - 1:
                if start + 1 >= len(tokens):
                    swift_fatal_error("Index out of range")
                if tokens[start + 1] == bigram[1]:
                    merged.append(bigram[0] + bigram[1])
                    index = start + 2
                    continue
            merged.append(bigram[0])
            index = start + 1
        return merged

    def decode(self, tokens):
        return "".join(tokens).replace("</w>", " ").replace(self.START, "").replace(self.END, "")

    def encode(self, text, input_length):
        """TextEncoder(XL).encode(_:): a text longer than the model's input is cut, and said so."""
        tokens = self.tokenize(text)
        if len(tokens) > input_length:
            log(f"Needed to truncate input '{text}' to '{self.decode(tokens[:input_length])}'\n")


class Pipeline:
    """Which models a pipeline loads, in which order, and where its latent size comes from."""

    def __init__(self, options):
        base = options.resource_path
        self.options = options

        def at(name):
            return os.path.join(base, name)

        def unet_models(prefix):
            chunks = [at(f"{prefix}Chunk1.mlmodelc"), at(f"{prefix}Chunk2.mlmodelc")]
            return chunks if all(os.path.exists(c) for c in chunks) else [at(f"{prefix}.mlmodelc")]

        self.encoder = at("VAEEncoder.mlmodelc") if os.path.exists(at("VAEEncoder.mlmodelc")) else None
        self.safety_checker = None
        self.text_encoder = at("TextEncoder.mlmodelc")
        self.decoder = at("VAEDecoder.mlmodelc")
        self.latent_input = "sample"
        self.tokenizer = None
        if options.xl:
            self.tokenizer = read_tokenizer(base)
            self.text_encoder = self.text_encoder if os.path.exists(self.text_encoder) else None
            self.text_encoder2 = at("TextEncoder2.mlmodelc")
            self.denoiser = unet_models("Unet")
            self.load_order = [self.text_encoder2, *self.denoiser, self.decoder]
            self.prewarm_order = [self.text_encoder2, *self.denoiser, self.decoder]
        elif options.sd3:
            self.tokenizer = read_tokenizer(base)
            self.text_encoder2 = at("TextEncoder2.mlmodelc")
            t5_files = [at("tokenizer_config.json"), at("tokenizer.json"), at("TextEncoderT5.mlmodelc")]
            t5 = [t5_files[2]] if all(os.path.exists(f) for f in t5_files) else []
            self.denoiser = [at("MultiModalDiffusionTransformer.mlmodelc")]
            self.latent_input = "latent_image_embeddings"
            self.load_order = [self.text_encoder, self.text_encoder2, *t5, *self.denoiser, self.decoder]
            self.prewarm_order = self.load_order
        else:
            if options.use_multilingual_text_encoder:
                self.text_encoder = None  # NLContextualEmbedding, no tokenizer files
            else:
                self.tokenizer = read_tokenizer(base)
            controlnets = [os.path.join(base, "controlnet", f"{name}.mlmodelc") for name in options.controlnet]
            self.denoiser = unet_models("ControlledUnet" if controlnets else "Unet")
            if not options.disable_safety and os.path.exists(at("SafetyChecker.mlmodelc")):
                self.safety_checker = at("SafetyChecker.mlmodelc")
            optional = [m for m in (self.encoder, *controlnets, self.safety_checker) if m]
            text = [self.text_encoder] if self.text_encoder else []
            self.load_order = [*self.denoiser, *text, self.decoder, *optional]
            self.prewarm_order = [*text, *self.denoiser, self.decoder, *optional]

    def load_resources(self):
        for model in self.prewarm_order if self.options.reduce_memory else self.load_order:
            load_model(model)

    def image_size(self):
        shape = input_shape(self.denoiser[0], self.latent_input)
        return shape[3] * 8, shape[2] * 8

    def encode_prompt(self):
        """generateImages()'s text encoding. SD encodes the prompt, then the negative prompt when
        guidance >= 1; XL and SD3 encode both, each through TextEncoder and TextEncoder2. An SD text
        encoder whose outputs lack last_hidden_state (an XL one) is force-unwrapped after tokenizing.
        (SD3's optional T5 encoder, with its own tokenizer, is not modelled.)"""
        options = self.options
        if not (options.xl or options.sd3):
            if not self.text_encoder:
                return
            texts = [options.prompt] + ([options.negative_prompt] if options.guidance_scale >= 1.0 else [])
            for text in texts:
                self.tokenizer.encode(text, input_shape(self.text_encoder)[-1])
                if "last_hidden_state" not in output_names(self.text_encoder):
                    swift_fatal_error("Unexpectedly found nil while unwrapping an Optional value",
                                      "StableDiffusion/TextEncoder.swift:89")
            return
        encoders = [model for model in (self.text_encoder, self.text_encoder2) if model]
        for text in (options.prompt, options.negative_prompt):
            for model in encoders:
                self.tokenizer.encode(text, input_shape(model)[-1])


# --------------------------------------------------------------------------------------------
# Images


def image_size_of_file(data):
    """Width and height of a PNG or JPEG (what NSImage would decode), else None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        position = 2
        while position + 9 < len(data) and data[position] == 0xFF:
            marker = data[position + 1]
            length = struct.unpack(">H", data[position + 2:position + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[position + 5:position + 9])
                return width, height
            position += 2 + length
    return None


def png_bytes(width, height, key):
    """A valid RGB PNG without text chunks whose pixels depend only on `key`."""
    import hashlib

    digest = hashlib.sha256(key.encode()).digest()
    row_length = width * 3
    pattern = (digest * (row_length // len(digest) + 2))[: row_length + len(digest)]
    rows = b"".join(b"\x00" + pattern[(y * 3) % len(digest):][:row_length] for y in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))


def image_name(options, index, step=None):
    """main.swift's imageName()."""
    name = options.prompt[:75].replace(" ", "_")
    if options.image_count != 1:
        name += f".{index}"
    if options.image is not None:
        percent = float32(options.strength * float32(100.0))
        if percent != percent or abs(percent) >= 2**63:
            swift_fatal_error("Float value cannot be converted to Int because it is either infinite or NaN"
                              if percent != percent or abs(percent) == float("inf") else
                              "Float value cannot be converted to Int because the result would be greater than Int.max")
        name += f".str{int(percent)}"
    name += f".{options.seed}"
    name += f".{step}" if step is not None else ".final"
    return name + ".png"


def save_path(output_path, name):
    """URL(filePath: outputPath).appending(path: name): nothing in the name is sanitised."""
    return (output_path or ".").rstrip("/") + "/" + name.lstrip("/") if output_path != "/" else "/" + name


def save_images(options, dropped, width, height, step=None, log_names=False):
    saved = 0
    for index in range(options.image_count):
        if index in dropped:
            if log_names:
                log(f"Image {index} failed safety check and was not saved")
            continue
        name = image_name(options, index, step)
        path = save_path(options.output_path, name)
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory) or os.path.isdir(path) or not os.access(directory, os.W_OK):
            return saved, run_error("saving", f"Failed to create destination for {file_url(path)}")
        key = f"{options.prompt}\0{options.seed}\0{index}\0{options.strength if options.image else ''}"
        with open(path, "wb") as handle:
            handle.write(png_bytes(width, height, key))
        if log_names:
            log(f"Saved {name}\n")
        saved += 1
    return saved, None


# --------------------------------------------------------------------------------------------
# Sampling


def scheduler_timesteps(options, step_count):
    """How many timesteps the scheduler yields (PNDM: stepCount + 1, DPM-Solver++ and SD3's
    discrete flow: stepCount), with the traps their initialisers hit on small counts."""
    if options.sd3 or options.scheduler == "dpmpp":
        if step_count < 1:
            swift_fatal_error("Range requires lowerBound <= upperBound")
        return step_count
    if step_count == 0:
        swift_fatal_error("Division by zero")
    if step_count < 0:
        swift_fatal_error("Range requires lowerBound <= upperBound")
    if step_count == 1:
        swift_fatal_error("Unexpectedly found nil while unwrapping an Optional value",
                          "StableDiffusion/Scheduler.swift:199")
    return step_count + 1


def image_to_image_start(options, timestep_count):
    """Scheduler.calculateTimesteps(strength:): the first timestep index in img2img mode."""
    inference = options.step_count
    start = max(inference - int_from_float(float32(float32(inference) * options.strength)), 0)
    if start >= timestep_count:  # addNoise reads timeSteps[startStep]
        swift_fatal_error("Index out of range")
    return start


def check_unet_batch(options, pipeline):
    """StableDiffusionPipeline below guidance 1 feeds the Unet one latent (StableDiffusionPipeline.swift:
    267-294); a Unet converted with batch 2 refuses it at the first prediction, an NSError that run()
    rethrows. SDXL and SD3 always send the pair."""
    if options.xl or options.sd3 or options.guidance_scale >= 1.0:
        return
    expected = input_shape(pipeline.denoiser[0], "sample")
    if expected and expected[0] >= 2:
        sent = [1, *expected[1:]]
        runtime_error(f"MultiArray shape ({' x '.join(map(str, sent))}) does not match the shape "
                      f"({' x '.join(map(str, expected))}) specified in the model description")


def int_from_float(value):
    if value != value or abs(value) == float("inf"):
        swift_fatal_error("Float value cannot be converted to Int because it is either infinite or NaN")
    return int(value)


class SampleTimer:
    """SampleTimer.swift: per-step durations; progress prints their reciprocals."""

    def __init__(self):
        self.samples = []
        self.started = None

    def start(self):
        self.started = time.monotonic()

    def stop(self):
        self.samples.append(time.monotonic() - self.started)

    def rates(self):
        ordered = sorted(self.samples)
        half, odd = divmod(len(ordered), 2)
        median = ordered[half] if odd else (ordered[half] + ordered[half - 1]) / 2
        mean = sum(ordered) / len(ordered)
        return tuple(1.0 / value if value else float("inf")
                     for value in (mean, median, self.samples[-1]))


def knob_int(name):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def dropped_by_safety(options):
    spec = os.environ.get("FAKE_SD_SAFETY_DROP", "").strip()
    if options.disable_safety or not spec:
        return set()
    if spec == "all":
        return set(range(options.image_count))
    return {int(part) for part in spec.split(",") if part.strip()}


def spawn_grandchild(pid_file):
    import subprocess

    child = subprocess.Popen(["sleep", "2147483647"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temporary = f"{pid_file}.tmp{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.write(str(child.pid))
    os.replace(temporary, pid_file)  # readers never see a half-written pid


def run(options):
    if not os.path.exists(options.resource_path):
        runtime_error(run_error("resources", f"Resource path does not exist {options.resource_path}"))
    log("Loading resources and creating pipeline\n")
    log("(Note: This can take a while the first time using these resources)\n")
    if options.xl or options.sd3:
        family = "Stable Diffusion XL" if options.xl else "Stable Diffusion 3"
        if options.controlnet:
            runtime_error(run_error("unsupported", f"ControlNet is not supported for {family}"))
        if options.use_multilingual_text_encoder:
            runtime_error(run_error("unsupported", f"Multilingual text encoder is not yet supported for {family}"))
    pipeline = Pipeline(options)
    pipeline.load_resources()

    starting_image_size = None
    if options.image is not None:
        url = file_url(options.image)
        try:
            with open(options.image, "rb") as handle:
                data = handle.read()
        except OSError:
            runtime_error(run_error("resources", f"Starting image not found {url}, error: "
                                    f"{no_such_file_error(options.image)[1]}"))
        starting_image_size = image_size_of_file(data)
        if os.environ.get("FAKE_SD_INPUT_COPY"):
            with open(os.environ["FAKE_SD_INPUT_COPY"], "wb") as handle:
                handle.write(data)
        if starting_image_size is None:
            inner = run_error("resources", f"Image not available {options.resource_path}")
            runtime_error(run_error("resources", f"Starting image not found {url}, error: {inner}"))
    for input_path in options.controlnet_inputs if options.controlnet else ():
        if not os.path.isfile(input_path):
            runtime_error(run_error("resources", f"Image for ControlNet not found {file_url(input_path)}, "
                                    f"error: {no_such_file_error(input_path)[1]}"))

    if os.environ.get("FAKE_SD_FAIL"):
        runtime_error(os.environ["FAKE_SD_FAIL"])
    if os.environ.get("FAKE_SD_SPAWN_CHILD"):
        spawn_grandchild(os.environ["FAKE_SD_SPAWN_CHILD"])

    log("Sampling ...\n")
    timer = SampleTimer()
    timer.start()

    # generateImages(): text encoding, schedulers, latents, then the denoising loop
    pipeline.encode_prompt()
    if options.image_count < 0:
        swift_fatal_error("Range requires lowerBound <= upperBound")
    if options.image_count == 0:  # scheduler[0] of no schedulers
        swift_fatal_error("Index out of range")
    timestep_count = scheduler_timesteps(options, options.step_count)
    first_step = 0
    image_to_image = starting_image_size is not None and options.strength < 1.0
    if image_to_image:
        if pipeline.encoder is None:
            runtime_error("startingImageProvidedWithoutEncoder")
        encoder_shape = input_shape(pipeline.encoder)
        if [1, 3, starting_image_size[1], starting_image_size[0]] != encoder_shape:
            runtime_error("sampleInputShapeNotCorrect")
        if options.sd3:  # addNoise (Scheduler.swift:89) reads DiscreteFlowScheduler's never-filled alphasCumProd
            swift_fatal_error("Index out of range")
        first_step = image_to_image_start(options, timestep_count)

    width, height = pipeline.image_size()
    check_unet_batch(options, pipeline)
    dropped = dropped_by_safety(options)
    step_total = timestep_count - first_step
    delay = float(os.environ.get("FAKE_SD_STEP_DELAY") or 0)
    hang_at, crash_at = knob_int("FAKE_SD_HANG_AT_STEP"), knob_int("FAKE_SD_CRASH_AT_STEP")
    for step in range(step_total):
        if delay:
            time.sleep(delay)
        timer.stop()
        mean, median, last = timer.rates()
        log("\x1b[1A\x1b[K")
        log(f"Step {step} of {step_total}  [mean: {mean:.2f}, median: {median:.2f}, last {last:.2f}] step/sec")
        if options.save_every > 0 and step % options.save_every == 0:
            count, error = save_images(options, dropped, width, height, step=step)
            count = 0 if error else count  # `(try? saveImages(...)) ?? 0`
            log(f" saved {count} image{'s' if count != 1 else ''}")
        log("\n")
        timer.start()
        if step == hang_at:
            import threading

            threading.Event().wait()
        if step == crash_at:
            die_by_signal(signal.SIGSEGV)

    _, error = save_images(options, dropped, width, height, log_names=True)
    if error:
        runtime_error(error)
    finish(0)


def main(argv):
    if os.environ.get("FAKE_SD_ARGV_LOG"):
        with open(os.environ["FAKE_SD_ARGV_LOG"], "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "pid": os.getpid()}) + "\n")
    if os.environ.get("FAKE_SD_PID_FILE"):
        with open(os.environ["FAKE_SD_PID_FILE"], "w") as handle:
            handle.write(str(os.getpid()))
    run(parse_arguments(argv))


DEFAULT_SEED = int.from_bytes(os.urandom(4), "little")  # UInt32.random(in: 0...UInt32.max)

if __name__ == "__main__":
    main(sys.argv[1:])
