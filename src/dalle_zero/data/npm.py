"""Pinned npm tarballs as a source of data: fetch once with ``npm pack``, check sha512, cache.

``npm pack NAME@VERSION`` writes the package tarball to a folder without installing anything;
Python's :mod:`tarfile` then reads it directly. Every tarball we use is pinned here by version *and*
by the sha512 integrity string the registry published for it (``npm view NAME@VERSION
dist.integrity``), so the check runs offline and a changed or corrupted download is refused.
See ``docs/data.md`` for the packages and their licences.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from dalle_zero.errors import DataError

logger = logging.getLogger(__name__)

# (name, version) -> the registry's dist.integrity, fetched once with `npm view NAME@VERSION dist.integrity`.
PINNED_INTEGRITY: dict[tuple[str, str], str] = {
    ("emoji-datasource", "16.0.0"): (
        "sha512-/qHKqK5Nr3+8zhgO6kHmF43Fm5C8HNn0AaFRIpgw8HF3+uF0Vfc8jgLI1ZQS5ba1vBzksS8NBCjHejwLb2D/Sg=="
    ),
    ("emoji-datasource-google", "16.0.0"): (
        "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
    ),
    ("emoji-datasource-twitter", "16.0.0"): (
        "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ=="
    ),
    ("emojibase-data", "17.0.0"): (
        "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA=="
    ),
}

NPM_TIMEOUT_S = 600


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dalle-zero/npm``, else ``~/.cache/dalle-zero/npm``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dalle-zero" / "npm"


def tarball_name(name: str, version: str) -> str:
    """The file name ``npm pack`` gives a package (scoped names lose the ``@`` and the slash becomes ``-``)."""
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def sha512_integrity(path: str | Path) -> str:
    """The npm ``integrity`` string (``sha512-<base64>``) of a file."""
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode("ascii")


def fetch_npm_tarball(name: str, version: str, cache_dir: str | Path | None = None) -> Path:
    """Return the path of the pinned tarball ``NAME-VERSION.tgz`` in ``cache_dir``, downloading it if needed.

    A cached file whose sha512 does not match the pinned integrity is downloaded again; a fresh
    download that does not match raises :class:`DataError`. Raises :class:`DataError` with what to do
    when ``npm`` is missing or the download fails.
    """
    key = (name, version)
    if key not in PINNED_INTEGRITY:
        pinned = ", ".join(f"{n}@{v}" for n, v in sorted(PINNED_INTEGRITY))
        raise DataError(f"{name}@{version} is not a pinned package; pinned: {pinned}")
    expected = PINNED_INTEGRITY[key]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / tarball_name(name, version)
    if path.is_file():
        if sha512_integrity(path) == expected:
            logger.debug("using cached %s", path)
            return path
        logger.warning("%s does not match its pinned sha512; downloading it again", path)

    npm = shutil.which("npm")
    if npm is None:
        raise DataError(
            f"npm not found on PATH: install Node.js/npm (e.g. `apt-get install npm`) to download "
            f"{name}@{version}, or copy {path.name} (from `npm pack {name}@{version}`) into {cache}"
        )
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s@%s with npm pack into %s", name, version, cache)
    with tempfile.TemporaryDirectory(prefix=".npm-pack-", dir=cache) as tmp:
        try:
            proc = subprocess.run(
                [npm, "pack", f"{name}@{version}", "--pack-destination", tmp, "--silent"],
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DataError(
                f"`npm pack {name}@{version}` took longer than {NPM_TIMEOUT_S} s; "
                "check the network or the npm registry setting and try again"
            ) from None
        got = Path(tmp) / path.name
        if proc.returncode != 0 or not got.is_file():
            lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if "ERR" in ln or ln.strip()]
            why = lines[-1].strip() if lines else f"exit code {proc.returncode}"
            raise DataError(
                f"`npm pack {name}@{version}` failed ({why}); check the network / npm registry, "
                f"or copy {path.name} into {cache}"
            )
        actual = sha512_integrity(got)
        if actual != expected:
            raise DataError(
                f"downloaded {path.name} has sha512 {actual[:24]}..., expected the pinned {expected[:24]}...; "
                "refusing to use it"
            )
        os.replace(got, path)
    return path
