"""The one typed place where Longhand's settings come from: CLI flags, then environment variables, then defaults.

Every setting has an environment variable `LONGHAND_<NAME>`; a CLI flag beats the environment. Nothing here
imports torch, transformers or gradio, so `python -m app --help` stays instant.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from models.requantize import CHOICES as GGUF_REQUANTIZE

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# How a .gguf runs: llama.cpp (quantized, several times faster on a CPU) or transformers (dequantized); "auto" takes
# llama.cpp on the CPU when llama-cpp-python is installed (bench/results/llamacpp.json).
GGUF_BACKENDS = ("auto", "llama.cpp", "transformers")
DEFAULT_MODEL = "default"
DEFAULT_EMBEDDER = "default"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and what was expected."""


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    # Never the repo or the working directory: Gradio serves files under the working directory.
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", str(Path.home()))) / ".local" / "share")
    return Path(base) / "longhand"


@dataclass(frozen=True)
class Config:
    data_dir: Path
    database_url: str
    model: str = DEFAULT_MODEL  # "default", a local folder or .gguf file, a hub id, or an http(s) server URL
    embedder: str = DEFAULT_EMBEDDER  # "default" or a local sentence-transformers folder
    device: str = "auto"
    dtype: str = "auto"
    gguf_backend: str = "auto"
    gguf_requantize: str = "auto"  # "auto": llama.cpp reads a Q4_1/Q5_1 GGUF through a Q8_0 copy (models/requantize.py)
    threads: int | None = None  # CPU threads for the model (llama.cpp and torch); None: one per physical core
    host: str = "127.0.0.1"
    port: int = 7860
    allow_download: bool = False
    trust_remote_code: bool = False
    auth: str | None = None  # "user:password"
    share: bool = False
    # Model servers other than this machine that a novel's settings may name (every step sends the novel there).
    allow_remote_host: tuple[str, ...] = ()
    # Retrieval's top paragraphs reranked by the language model (memory/rerank.py, issue 19). Off by default: with
    # the default model through the app's path it lifted recall@3 on the 15 hard facts (0.87 -> 0.93) but dropped
    # a held-out one (1.00 -> 0.83), and it costs ~4.6 s a step on a 2-core CPU (bench/results/recall_lm_quiet.json).
    lm_rerank: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"

    @property
    def trash_dir(self) -> Path:
        return self.data_dir / "trash"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def auth_pair(self) -> tuple[str, str] | None:
        if self.auth is None:
            return None
        user, _, password = self.auth.partition(":")
        return user, password


# (flag dest, env var, parser); the parser turns the env string into the typed value.
def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def _parse_port(name: str, value: str | int) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a port number, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name} must be between 1 and 65535, got {port}")
    return port


def _parse_threads(name: str, value: str | int) -> int | None:
    """A positive thread count, or "auto" / 0 for the default (one per physical core)."""
    if str(value).strip().lower() in ("auto", "0"):
        return None
    try:
        threads = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number of threads or auto, got {value!r}") from None
    if threads < 1:
        raise ConfigError(f"{name} must be 1 or more (or auto), got {threads}")
    return threads


def _parse_choice(choices: tuple[str, ...]):
    def parse(name: str, value: str) -> str:
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _parse_auth(name: str, value: str) -> str:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"{name} must look like user:password, got {value!r}")
    return value


def _parse_hosts(name: str, value: str | list[str]) -> tuple[str, ...]:
    """Host names from a repeated flag (a list) or a comma-separated environment variable."""
    items = value if isinstance(value, list) else [item for item in value.split(",") if item.strip()]
    hosts = []
    for item in items:
        host = normal_host(item)
        if not host or "/" in host or "@" in host or (host.count(":") == 1):
            raise ConfigError(f"{name} takes a host name or address without scheme, port or path "
                              f"(e.g. gpu-box.lan or 10.0.0.5), got {item!r}")
        hosts.append(host)
    return tuple(dict.fromkeys(hosts))


def _parse_str(name: str, value: str) -> str:
    if not value.strip():
        raise ConfigError(f"{name} must not be empty")
    return value


SETTINGS = {
    # dest: (env var, parser)
    "data_dir": ("LONGHAND_DATA_DIR", _parse_str),
    "database_url": ("LONGHAND_DATABASE_URL", _parse_str),
    "model": ("LONGHAND_MODEL", _parse_str),
    "embedder": ("LONGHAND_EMBEDDER", _parse_str),
    "device": ("LONGHAND_DEVICE", _parse_choice(DEVICES)),
    "dtype": ("LONGHAND_DTYPE", _parse_choice(DTYPES)),
    "gguf_backend": ("LONGHAND_GGUF_BACKEND", _parse_choice(GGUF_BACKENDS)),
    "gguf_requantize": ("LONGHAND_GGUF_REQUANTIZE", _parse_choice(GGUF_REQUANTIZE)),
    "threads": ("LONGHAND_THREADS", _parse_threads),
    "host": ("LONGHAND_HOST", _parse_str),
    "port": ("LONGHAND_PORT", _parse_port),
    "allow_download": ("LONGHAND_ALLOW_DOWNLOAD", _parse_bool),
    "trust_remote_code": ("LONGHAND_TRUST_REMOTE_CODE", _parse_bool),
    "auth": ("LONGHAND_AUTH", _parse_auth),
    "share": ("LONGHAND_SHARE", _parse_bool),
    "lm_rerank": ("LONGHAND_LM_RERANK", _parse_bool),
    "allow_remote_host": ("LONGHAND_ALLOW_REMOTE_HOST", _parse_hosts),
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every subcommand shares. Defaults are None so the environment can fill what the CLI left out."""
    group = parser.add_argument_group("settings (each also readable from LONGHAND_<NAME>)")
    group.add_argument("--data-dir", help="where the database, backups, exports and caches live "
                       "(default ~/.local/share/longhand)")
    group.add_argument("--database-url", help="any SQLAlchemy URL (default sqlite:///<data dir>/longhand.db)")
    group.add_argument("--model", help="'default' (SmolLM2-135M-Instruct, offline), a local folder or .gguf, "
                       "a hub id (needs --allow-download), or an OpenAI-compatible server URL")
    group.add_argument("--embedder", help="'default' (all-MiniLM-L6-v2, offline) or a local folder")
    group.add_argument("--device", help=f"one of {', '.join(DEVICES)}")
    group.add_argument("--dtype", help=f"one of {', '.join(DTYPES)}")
    group.add_argument("--gguf-backend", help=f"how a .gguf runs: one of {', '.join(GGUF_BACKENDS)} (auto: llama.cpp "
                       "on the CPU when it is installed, else transformers)")
    group.add_argument("--gguf-requantize", help=f"one of {', '.join(GGUF_REQUANTIZE)} (auto: llama.cpp reads a Q4_1 or "
                       "Q5_1 .gguf through a Q8_0 copy made once in the data dir, which reads prompts faster; "
                       "off: the file as it is)")
    group.add_argument("--threads", help="CPU threads the model runs on (default auto: one per physical core; on a "
                       "machine busy with other work, 1 can be many times faster than threads that wait for cores)")
    group.add_argument("--host", help="address to listen on (default 127.0.0.1, this machine only)")
    group.add_argument("--port", help="port to listen on (default 7860)")
    group.add_argument("--allow-download", action="store_const", const=True,
                       help="allow fetching a hub model id once into the data dir (off by default)")
    group.add_argument("--trust-remote-code", action="store_const", const=True,
                       help="run a checkpoint's own Python code (off by default; only for models you trust)")
    group.add_argument("--auth", help="require a login, as user:password")
    group.add_argument("--share", action="store_const", const=True, help="open a public Gradio share link")
    group.add_argument("--lm-rerank", help="1/0: rerank retrieval's top paragraphs by the language model (default "
                       "0; it reads about 1,200 tokens a query, seconds a step on a CPU)")
    group.add_argument("--allow-remote-host", action="append", metavar="HOST",
                       help="a model server host (not this machine) that a novel's settings may name; repeatable "
                            "(env: comma-separated). Without it only localhost, 127.0.0.0/8 and ::1 are accepted")


def load_config(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Resolve every setting: CLI flag if given, else LONGHAND_<NAME>, else the default."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for dest, (env_name, parse) in SETTINGS.items():
        flag_value = getattr(args, dest, None) if args is not None else None
        if flag_value is not None:
            if isinstance(flag_value, bool):
                values[dest] = flag_value
            else:
                values[dest] = parse("--" + dest.replace("_", "-"), flag_value)
        elif env_name in environ:
            values[dest] = parse(env_name, environ[env_name])

    data_dir = Path(str(values.pop("data_dir", default_data_dir(environ)))).expanduser()
    database_url = str(values.pop("database_url", f"sqlite:///{data_dir / 'longhand.db'}"))
    return Config(data_dir=data_dir, database_url=database_url, **values)  # type: ignore[arg-type]


# ---------------------------------------------------------------- model servers


def normal_host(host: str) -> str:
    """A host as compared here: lower case, without IPv6 brackets or a trailing dot."""
    return host.strip().lower().strip("[]").rstrip(".")


def model_host(model: str) -> str | None:
    """The host a model setting sends text to: None for a local model (not an http(s) URL)."""
    model = model.strip()
    if not model.lower().startswith(("http://", "https://")):
        return None
    try:
        host = urlsplit(model).hostname
    except ValueError:
        host = None
    if not host:
        raise ConfigError(f"The model URL {model[:200]!r} names no host.")
    return normal_host(host)


def is_loopback(host: str) -> bool:
    host = normal_host(host)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(config: Config) -> tuple[str, ...]:
    """The remote model hosts this launch accepts: --allow-remote-host, and the host of a --model URL."""
    launch_host = model_host(config.model)
    return config.allow_remote_host + ((launch_host,) if launch_host else ())


def check_model_allowed(model: str, config: Config) -> None:
    """Refuse (ConfigError, one line) a model URL whose host is neither this machine nor allowed at launch."""
    host = model_host(model)
    if host is None or is_loopback(host) or host in allowed_hosts(config):
        return
    raise ConfigError(f"Refused the model server {host}: every step would send the novel's text there. Only this "
                      f"machine (localhost, 127.0.0.1, ::1) is accepted unless the app is started with "
                      f"--allow-remote-host {host}.")
