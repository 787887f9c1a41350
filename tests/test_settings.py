"""Settings: defaults, then config.toml, then environment, then flags; every
bad value refused with a message that names where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_service.settings import ModelServiceSettings
from spindle import settings
from spindle.settings import SettingsError
from thread_service.settings import ThreadServiceSettings


def write_config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)
    return home


def refusal(kind: type[ThreadServiceSettings | ModelServiceSettings], tmp: Path, text: str) -> str:
    """The message of the SettingsError that loading `kind` from a config.toml of `text` raises."""
    home = write_config(tmp / "home", text)
    with pytest.raises(SettingsError) as info:
        settings.load(kind, ["--config-home", str(home)], {})
    return str(info.value)


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    home = write_config(
        tmp_path / "home",
        '[thread_service]\nmax_spawn_depth = 7\ndefault_model = "from-file"\n'
        'listen = "127.0.0.1:6000"\n',
    )
    loaded = settings.load(
        ThreadServiceSettings,
        ["--config-home", str(home), "--listen", "0.0.0.0:7000", "--insecure-no-auth"],
        {"SPINDLE_DEFAULT_MODEL": "from-env", "SPINDLE_THREAD_LISTEN": "127.0.0.1:6500"},
    )
    assert loaded.max_spawn_depth == 7  # file over default
    assert loaded.default_model == "from-env"  # environment over file
    assert loaded.listen == "0.0.0.0:7000"  # flag over environment
    assert loaded.model_service == "127.0.0.1:50052"  # default
    assert loaded.config_home == home


def test_config_home_from_the_environment_and_paths_expanded(tmp_path: Path) -> None:
    home = write_config(tmp_path / "home", '[thread_service]\ndata_dir = "~/spindle-data"\n')
    loaded = settings.load(ThreadServiceSettings, [], {"SPINDLE_CONFIG_HOME": str(home)})
    assert loaded.data_dir == Path("~/spindle-data").expanduser()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[thread_service]\nmax_spawn_depth = "deep"\n', "max_spawn_depth must be an integer"),
        ("[thread_service]\nunknown_thing = 1\n", "unknown setting(s): unknown_thing"),
        ('[thread_service]\nlisten = "nowhere"\n', "listen must be HOST:PORT"),
        ("[thread_service]\nmax_spawn_depth = -1\n", "max_spawn_depth must be 0 or more"),
        ("[thread_service]\nmax_trusted_projects = 0\n", "max_trusted_projects must be 1 or more"),
        ("thread_service = 3\n", "must be a table"),
        ("[thread_service\n", "config.toml"),
    ],
)
def test_bad_thread_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    assert message in refusal(ThreadServiceSettings, tmp_path, text)


def test_providers_from_toml_with_environment_overrides(tmp_path: Path) -> None:
    home = write_config(
        tmp_path / "home",
        """
[model_service]
default_provider = "openai"
[model_service.models]
"gpt-5" = "openai"
"local-llama" = "ollama"
[model_service.providers.openai]
base_url = "https://api.example.invalid/v1"
api_key_env = "OPENAI_API_KEY"
max_retries = 2
headers = { "x-team" = "agents" }
[model_service.providers.ollama]
base_url = "http://127.0.0.1:11434/v1"
wire_api = "chat"
""",
    )
    loaded = settings.load(
        ModelServiceSettings,
        ["--config-home", str(home)],
        {
            "SPINDLE_PROVIDER_OPENAI_BASE_URL": "http://gateway.internal/v1",
            "SPINDLE_PROVIDER_OLLAMA_IDLE_TIMEOUT": "12.5",
        },
    )
    openai, ollama = loaded.providers["openai"], loaded.providers["ollama"]
    assert openai.base_url == "http://gateway.internal/v1"
    assert (openai.max_retries, openai.headers) == (2, {"x-team": "agents"})
    assert (ollama.wire_api, ollama.idle_timeout) == ("chat", 12.5)
    assert loaded.models == {"gpt-5": "openai", "local-llama": "ollama"}
    assert loaded.default_provider == "openai"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[model_service.providers.x]\nwire_api = "chat"\n', "base_url is required"),
        (
            '[model_service.providers.x]\nbase_url = "http://a"\nwire_api = "grpc"\n',
            "wire_api must be",
        ),
        ('[model_service.providers.embedded]\nbase_url = "http://a"\n', "is reserved"),
        ('[model_service.models]\n"m" = "nobody"\n', "unknown provider 'nobody'"),
        (
            '[model_service.providers.x]\nbase_url = "http://a"\nextra_body = { stream = false }\n',
            "extra_body cannot set stream",
        ),
        ('[model_service.providers.x]\nbase_url = "http://a"\nmax_retries = "a few"\n', "integer"),
        ('[model_service.providers.x]\nbase_url = "http://a"\ncolour = "red"\n', "colour"),
        ('[model_service]\ndefault_provider = "ghost"\n', "unknown provider 'ghost'"),
        ("[model_service]\ncache_max_entries = -5\n", "cache_max_entries must be at least 1"),
        ('[model_service]\nlog_level = "verbose"\n', "log_level must be one of"),
        ("[model_service]\nshutdown_grace = nan\n", "shutdown_grace must be a number"),
        ('[model_service.providers.x]\nbase_url = "ftp://a"\n', "http:// or https://"),
        (
            '[model_service.providers.x]\nbase_url = "http://a"\n'
            "extra_body = { when = 2026-01-01T00:00:00Z }\n",
            "JSON values only",
        ),
        ('[model_service.providers.x]\nbase_url = "http://a"\nread_timeout = 0\n', "positive"),
    ],
)
def test_bad_model_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    assert message in refusal(ModelServiceSettings, tmp_path, text)


def test_help_names_every_flag_and_environment_variable() -> None:
    parser = settings.argument_parser(ThreadServiceSettings, "thread", "")
    text = parser.format_help()
    for flag, env in [
        ("--listen", "SPINDLE_THREAD_LISTEN"),
        ("--model-service", "SPINDLE_MODEL_SERVICE"),
        ("--data-dir", "SPINDLE_DATA_DIR"),
        ("--config-home", "SPINDLE_CONFIG_HOME"),
        ("--max-spawn-depth", "SPINDLE_MAX_SPAWN_DEPTH"),
    ]:
        assert flag in text and env in text
