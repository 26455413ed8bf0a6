"""A reader of AUTOMATIC1111's infotext (the PNG `parameters` text), written from its documented format,
as A1111's own "PNG Info" tab and "Read generation parameters" button read it:

    <prompt, any number of lines>
    Negative prompt: <negative, any number of lines>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: name, ...

The last line holds the parameters when at least three `Name: value` pairs are on it; otherwise it is
text. Lines before the first one starting with `Negative prompt:` are the prompt, the rest the negative.
A1111 strips the whole text and each line. A value holding `,`, `:` or a newline is written as a JSON
string; `WxH` values give `Name-1` and `Name-2` as well."""

from __future__ import annotations

import json
import re

__all__ = ["Infotext", "parse"]

_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


class Infotext:
    def __init__(self, prompt: str, negative_prompt: str, parameters: dict[str, str]):
        self.prompt, self.negative_prompt, self.parameters = prompt, negative_prompt, parameters


def parse(text: str) -> Infotext:
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in (line.strip() for line in lines):
        if not negative_lines and line.startswith("Negative prompt:"):
            negative_lines.append(line[len("Negative prompt:"):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    parameters: dict[str, str] = {}
    for name, value in _PAIR.findall(last):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = json.loads(value)
        parameters[name] = value
        size = _SIZE.match(value)
        if size:
            parameters[f"{name}-1"], parameters[f"{name}-2"] = size.groups()
    return Infotext("\n".join(prompt_lines), "\n".join(negative_lines), parameters)
