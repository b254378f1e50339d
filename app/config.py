"""The one typed place where Longhand's settings come from: CLI flags, then environment variables, then defaults.

Every setting has an environment variable `LONGHAND_<NAME>`; a CLI flag beats the environment. Nothing here
imports torch, transformers or gradio, so `python -m app --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
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
    host: str = "127.0.0.1"
    port: int = 7860
    allow_download: bool = False
    trust_remote_code: bool = False
    auth: str | None = None  # "user:password"
    share: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"

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
    "host": ("LONGHAND_HOST", _parse_str),
    "port": ("LONGHAND_PORT", _parse_port),
    "allow_download": ("LONGHAND_ALLOW_DOWNLOAD", _parse_bool),
    "trust_remote_code": ("LONGHAND_TRUST_REMOTE_CODE", _parse_bool),
    "auth": ("LONGHAND_AUTH", _parse_auth),
    "share": ("LONGHAND_SHARE", _parse_bool),
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
    group.add_argument("--host", help="address to listen on (default 127.0.0.1, this machine only)")
    group.add_argument("--port", help="port to listen on (default 7860)")
    group.add_argument("--allow-download", action="store_const", const=True,
                       help="allow fetching a hub model id once into the data dir (off by default)")
    group.add_argument("--trust-remote-code", action="store_const", const=True,
                       help="run a checkpoint's own Python code (off by default; only for models you trust)")
    group.add_argument("--auth", help="require a login, as user:password")
    group.add_argument("--share", action="store_const", const=True, help="open a public Gradio share link")


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
