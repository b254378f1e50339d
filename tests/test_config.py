import argparse

import pytest

from app.config import Config, ConfigError, add_config_arguments, default_data_dir, load_config


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_put_data_outside_the_repo_and_bind_localhost(tmp_path):
    config = load_config(parse([]), environ={"HOME": str(tmp_path)})
    assert config.data_dir == tmp_path / ".local" / "share" / "longhand"
    assert config.database_url == f"sqlite:///{tmp_path}/.local/share/longhand/longhand.db"
    assert config.host == "127.0.0.1"
    assert config.port == 7860
    assert config.model == "default"
    assert config.allow_download is False and config.trust_remote_code is False and config.share is False
    assert config.gguf_backend == "auto" and config.gguf_requantize == "auto" and config.threads is None
    assert load_config(parse(["--threads", "1"]), environ={"HOME": str(tmp_path)}).threads == 1
    assert load_config(parse(["--threads", "auto"]), environ={"HOME": str(tmp_path), "LONGHAND_THREADS": "3"}).threads \
        is None
    assert load_config(parse([]), environ={"HOME": str(tmp_path), "LONGHAND_THREADS": "3"}).threads == 3


def test_xdg_data_home_is_honoured(tmp_path):
    assert default_data_dir({"XDG_DATA_HOME": str(tmp_path), "HOME": "/nowhere"}) == tmp_path / "longhand"


def test_environment_fills_what_flags_leave_out(tmp_path):
    env = {
        "HOME": str(tmp_path),
        "LONGHAND_DATA_DIR": str(tmp_path / "d"),
        "LONGHAND_PORT": "9000",
        "LONGHAND_DEVICE": "cpu",
        "LONGHAND_ALLOW_DOWNLOAD": "yes",
        "LONGHAND_GGUF_REQUANTIZE": "off",
        "LONGHAND_DATABASE_URL": "postgresql+psycopg://u@localhost/longhand",
    }
    config = load_config(parse([]), environ=env)
    assert config.data_dir == tmp_path / "d"
    assert config.port == 9000
    assert config.device == "cpu"
    assert config.allow_download is True
    assert config.gguf_requantize == "off"
    assert config.database_url == "postgresql+psycopg://u@localhost/longhand"


def test_flags_beat_the_environment(tmp_path):
    env = {"HOME": str(tmp_path), "LONGHAND_PORT": "9000", "LONGHAND_HOST": "0.0.0.0"}
    config = load_config(parse(["--port", "7000", "--host", "127.0.0.1", "--trust-remote-code"]), environ=env)
    assert config.port == 7000
    assert config.host == "127.0.0.1"
    assert config.trust_remote_code is True


def test_database_url_follows_data_dir(tmp_path):
    config = load_config(parse(["--data-dir", str(tmp_path / "novels")]), environ={"HOME": "/x"})
    assert config.database_url == f"sqlite:///{tmp_path}/novels/longhand.db"
    assert config.exports_dir == tmp_path / "novels" / "exports"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "seventy"], {}, "--port must be a port number"),
        (["--port", "70000"], {}, "between 1 and 65535"),
        ([], {"LONGHAND_PORT": "0"}, "LONGHAND_PORT must be between"),
        (["--device", "tpu"], {}, "--device must be one of auto, cpu, cuda"),
        ([], {"LONGHAND_DTYPE": "int4"}, "LONGHAND_DTYPE must be one of"),
        ([], {"LONGHAND_SHARE": "maybe"}, "LONGHAND_SHARE must be a boolean"),
        (["--auth", "nocolon"], {}, "--auth must look like user:password"),
        (["--model", "  "], {}, "--model must not be empty"),
        (["--gguf-requantize", "q4_0"], {}, "--gguf-requantize must be one of auto, off"),
        (["--threads", "-2"], {}, "--threads must be 1 or more"),
        ([], {"LONGHAND_THREADS": "two"}, "LONGHAND_THREADS must be a whole number of threads or auto"),
    ],
)
def test_bad_settings_name_the_setting(argv, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(parse(argv), environ={"HOME": "/x", **env})


def test_auth_pair():
    config = Config(data_dir=__import__("pathlib").Path("/d"), database_url="sqlite://", auth="ann:s3:cret")
    assert config.auth_pair == ("ann", "s3:cret")


def test_allow_remote_host_is_repeatable_and_read_from_the_environment(tmp_path):
    from app.config import check_model_allowed

    config = load_config(parse(["--allow-remote-host", "GPU.lan", "--allow-remote-host", "[fd00::5]"]),
                         environ={"HOME": str(tmp_path)})
    assert config.allow_remote_host == ("gpu.lan", "fd00::5")
    env = {"HOME": str(tmp_path), "LONGHAND_ALLOW_REMOTE_HOST": "a.example, b.example,"}
    assert load_config(parse([]), environ=env).allow_remote_host == ("a.example", "b.example")
    assert load_config(parse(["--allow-remote-host", "c.example"]), environ=env).allow_remote_host == ("c.example",)
    check_model_allowed("http://gpu.lan:8000/v1#m", config)
    check_model_allowed("http://[fd00::5]:8000/v1", config)
    with pytest.raises(ConfigError, match="Refused the model server b.example"):
        check_model_allowed("https://b.example/v1", config)


@pytest.mark.parametrize("value", ["gpu.lan:8000", "http://gpu.lan", "gpu.lan/v1", "user@gpu.lan", " "])
def test_allow_remote_host_takes_only_a_host(tmp_path, value):
    with pytest.raises(ConfigError, match="--allow-remote-host takes a host name"):
        load_config(parse(["--allow-remote-host", value]), environ={"HOME": str(tmp_path)})


@pytest.mark.parametrize("model, allowed", [
    ("default", True), ("/models/smol.gguf", True), ("http://127.0.0.1:8000/v1", True),
    ("http://127.200.0.1/v1", True), ("http://[::1]:8000/v1", True), ("http://LOCALHOST:11434/v1", True),
    ("http://128.0.0.1/v1", False), ("http://localhost.evil.example/v1", False), ("http://0.0.0.0:8000/v1", False),
    ("http://[::ffff:10.0.0.1]/v1", False), ("http://192.168.1.20:8000/v1", False),
])
def test_only_loopback_model_servers_pass_without_the_flag(tmp_path, model, allowed):
    from app.config import check_model_allowed

    config = load_config(parse([]), environ={"HOME": str(tmp_path)})
    if allowed:
        check_model_allowed(model, config)
    else:
        with pytest.raises(ConfigError, match="Refused the model server"):
            check_model_allowed(model, config)


def test_the_launch_model_url_counts_as_named_at_launch(tmp_path):
    from app.config import check_model_allowed

    config = load_config(parse(["--model", "http://gpu.lan:9000/v1"]), environ={"HOME": str(tmp_path)})
    check_model_allowed("http://gpu.lan:9000/v1", config)


def test_lm_rerank_is_off_by_default_and_turned_on_by_flag_or_environment(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert load_config(parse([]), environ=home).lm_rerank is False
    assert load_config(parse([]), environ={**home, "LONGHAND_LM_RERANK": "1"}).lm_rerank is True
    assert load_config(parse(["--lm-rerank", "0"]), environ=home).lm_rerank is False
    assert load_config(parse(["--lm-rerank", "1"]), environ={**home, "LONGHAND_LM_RERANK": "0"}).lm_rerank is True
    with pytest.raises(ConfigError, match="LONGHAND_LM_RERANK"):
        load_config(parse([]), environ={**home, "LONGHAND_LM_RERANK": "maybe"})
