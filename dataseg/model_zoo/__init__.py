"""DaTaSeg's shipped configs, found the way detectron2's ``model_zoo`` finds its own.

``get_config_file("tiny/DaTaSeg-tiny.yaml")`` is a path inside the installed package (the
wheel carries the repository's ``configs/`` as ``dataseg/model_zoo/configs/``, same layout, so
``_BASE_`` paths resolve); from a source checkout or an editable install it is the
repository's ``configs/``. ``get_config`` returns the loaded config.
"""

from pathlib import Path
from typing import List, Sequence

__all__ = ["get_config_file", "get_config", "list_configs"]

_PACKAGE = Path(__file__).resolve().parent


def _config_roots() -> List[Path]:
    # Installed wheel / sdist install first; then the checkout this package was imported from.
    roots = [_PACKAGE / "configs", _PACKAGE.parents[1] / "configs"]
    return [r for r in roots if (r / "Base-DaTaSeg.yaml").is_file()]


def list_configs() -> List[str]:
    """Every shipped config, as the relative names :func:`get_config_file` takes."""
    roots = _config_roots()
    if not roots:
        return []
    return sorted(p.relative_to(roots[0]).as_posix() for p in roots[0].rglob("*.yaml"))


def get_config_file(config_path: str) -> str:
    """Absolute path of a shipped config, e.g. ``"coco_ade_o365/DaTaSeg_R50.yaml"``.

    Raises:
        FileNotFoundError: naming the shipped configs when ``config_path`` is none of them.
    """
    roots = _config_roots()
    for root in roots:
        path = root / config_path
        if path.is_file():
            return str(path)
    if not roots:
        raise FileNotFoundError(
            "DaTaSeg's configs are not installed next to the package (dataseg/model_zoo/"
            "configs) nor in a source checkout; reinstall dataseg from its repository.")
    raise FileNotFoundError(
        f"{config_path!r} is not a DaTaSeg config. Shipped configs: {', '.join(list_configs())}.")


def get_config(config_path: str, opts: Sequence[str] = ()):
    """The DaTaSeg config of a shipped config file with ``KEY VALUE`` overrides merged
    (:func:`dataseg.engine.get_dataseg_cfg`)."""
    from ..engine import get_dataseg_cfg

    return get_dataseg_cfg(get_config_file(config_path), list(opts))
