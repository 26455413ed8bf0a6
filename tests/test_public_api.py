import kitty_coreml


def test_all_is_exact_and_importable():
    assert sorted(kitty_coreml.__all__) == sorted([
        "generate", "GenerationRequest", "GenerationResult", "ImageResult", "Settings", "CancelToken",
        "ProgressEvent", "KittyError", "InvalidRequest", "ConfigError", "ModelError", "PlatformUnsupported",
        "EngineError", "EngineTimeout", "Cancelled", "SafetyRemovedAll", "StoreError", "PublishPending", "NotFound"])
    for name in kitty_coreml.__all__:
        assert getattr(kitty_coreml, name) is not None


def test_generate_from_python(tmp_path, fake_bin, resources):
    settings = kitty_coreml.Settings.from_env({"KITTY_COREML_HOME": str(tmp_path / "h"),
                                               "KITTY_COREML_SAMPLE_BIN": str(fake_bin),
                                               "KITTY_COREML_RESOURCE_PATH": str(resources)})
    events = []
    result = kitty_coreml.generate(kitty_coreml.GenerationRequest(prompt="a cube", steps=3), settings,
                                   on_progress=events.append)
    assert len(result.images) == 1 and result.images[0].published
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3, 4]
