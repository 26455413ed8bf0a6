import pytest

from kitty_coreml.errors import ConfigError
from kitty_coreml.settings import Settings


def test_defaults(tmp_path):
    settings = Settings.from_env({"HOME": str(tmp_path)})
    assert settings.engine == "auto" and settings.store == "local" and settings.prefix == "images/"
    assert settings.s3_bucket == "kitty-artifacts" and settings.service_port == 8089


def test_s3_when_bucket_set_and_prefix_normalised():
    settings = Settings.from_env({"KITTY_COREML_HOME": "/h", "S3_BUCKET": "b", "S3_PREFIX": "/gallery"})
    assert settings.store == "s3" and settings.s3_bucket == "b" and settings.prefix == "gallery/"


@pytest.mark.parametrize(("name", "value"), [("KITTY_COREML_ENGINE", "fast"), ("KITTY_COREML_TIMEOUT_S", "soon"),
                                             ("KITTY_COREML_TIMEOUT_S", "0"), ("KITTY_COREML_PROGRESS", "loud"),
                                             ("KITTY_COREML_S3_CREATE_BUCKET", "maybe"), ("SERVICE_PORT", "70000")])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"KITTY_COREML_HOME": "/h", name: value})
    assert caught.value.message.startswith(f"{name}: got {value!r}; allowed:")
