"""``--config FILE.yaml``: settings from a file, overridden by the command line.

A config file is a YAML mapping of a command's settings, named as in its Python settings model
(``target_mpp``, ``patch_size``, ... for ``preprocess``; dashes are accepted for underscores).
An option given on the command line wins over the file; the file wins over the defaults. The
command records the merged settings it ran with (``run.json`` for ``train``, ``config.yaml`` in
the output folder for the others), so a result can be reproduced with ``--config`` from them.

Example:
    >>> merge_settings({"target_mpp": 1.0, "patch-size": 224}, {"target_mpp": 0.5, "qc": None})
    {'target_mpp': 0.5, 'patch_size': 224}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fivewsi.errors import FivewsiError


class ConfigFileError(FivewsiError):
    """A ``--config`` file that cannot be read or is not a mapping of settings."""


def read_config_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The settings in a YAML (or JSON) file, keys with underscores; {} for None."""
    if path is None:
        return {}
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigFileError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: cannot read the config file ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigFileError(f"{path}: a config file holds a mapping of settings, not "
                              f"{type(data).__name__}")
    return _underscored(data)


def merge_settings(file_settings: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The file's settings with every option given on the command line (not None) over them."""
    merged = _underscored(file_settings)
    merged.update({k: v for k, v in _underscored(given).items() if v is not None})
    return merged


def write_config_file(path: str | os.PathLike[str], settings: Mapping[str, Any]) -> None:
    """Write the settings a command ran with, atomically, as YAML ``--config`` reads back."""
    import yaml

    from fivewsi.utils.atomic import write_text_atomic

    text = yaml.safe_dump(_plain(dict(settings)), sort_keys=False, allow_unicode=True)
    write_text_atomic(Path(path), text)


def _underscored(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in settings.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
