"""The seed rule against values computed by the host's JavaScript (node, from CONTRACTS.md section 5's
rule: FNV-1a over `charCodeAt(i) & 0xff` of `prompt.trim() + "::" + (runId.trim() || "local")`)."""

from __future__ import annotations

import pytest

from kitty_coreml.seeds import js_trim, studio_seed, utf16_units

EMOJI = "a red cube \U0001F600"


@pytest.mark.parametrize(("prompt", "run_id", "seed"), [
    ("a red cube", "run_abc", 2348168122),
    ("studio photo of a matte black water bottle", "run_1f0c2d3e-0000-4000-8000-000000000001", 3299222219),
    # the host's slice() cut the emoji after its high surrogate: a lone \ud83d ends the prompt
    ("a red cube \ud83d", "run_abc", 1363007375),
    # a lone low surrogate starts it
    ("\ude00 after a cut", "run_abc", 1884151584),
    # a prompt cut at 7900 units inside an emoji
    ("x" * 7899 + "\ud83d", "run_1", 953624007),
])
def test_check_values_from_the_hosts_javascript(prompt: str, run_id: str, seed: int) -> None:
    assert studio_seed(prompt, run_id) == seed


def test_an_astral_character_is_two_units_as_in_javascript() -> None:
    assert list(utf16_units(EMOJI))[-2:] == [0xD83D, 0xDE00]
    assert list(utf16_units("\ud83d")) == [0xD83D]


def test_trim_is_javascripts() -> None:
    assert js_trim("\ufeff a \u3000") == "a"
    assert js_trim("\x1ca\x85") == "\x1ca\x85"  # Python's strip() would remove these; trim() keeps them
