from kitty_coreml.seeds import resolve_seed, studio_seed


def test_studio_check_values():
    assert studio_seed("a red cube", "run_abc") == 2348168122
    assert studio_seed("studio photo of a matte black water bottle",
                       "run_1f0c2d3e-0000-4000-8000-000000000001") == 3299222219


def test_trimmed_and_local_default():
    assert studio_seed("  a red cube ", " run_abc ") == 2348168122
    assert studio_seed("a red cube", "") == studio_seed("a red cube", None) == studio_seed("a red cube", "local")


def test_low_byte_of_utf16_units_not_utf8():
    # "é" is U+00E9: UTF-16 low byte 0xE9; its UTF-8 bytes would be C3 A9, a different hash.
    assert studio_seed("é", "r") == studio_seed("\u01e9", "r")  # same low byte 0xE9
    assert studio_seed("é", "r") != studio_seed("e", "r")


def test_explicit_seed_wins_and_run_id_is_recorded():
    assert resolve_seed("p", 7, "run_x") == (7, "run_x")
    seed, run_id = resolve_seed("p", None, None)
    assert run_id.startswith("run_") and seed == studio_seed("p", run_id)
    assert resolve_seed("p", None, "run_abc")[0] == studio_seed("p", "run_abc")
