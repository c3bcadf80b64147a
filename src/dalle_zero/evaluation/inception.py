"""Standard FID / Inception Score from a user-supplied TorchScript Inception-v3 (paper §3.1).

The paper's FID and IS use the TensorFlow Inception-v3 of 2015-12-05. Its weights cannot be
downloaded here and no PyPI wheel ships them, and torchmetrics' default extractor (torch-fidelity's
``FeatureExtractorInceptionV3``) downloads them at run time. So ``dalle eval --inception PATH``
accepts a local TorchScript export of that network instead, such as ``inception-2015-12-05.pt``
used by StyleGAN2-ADA and clean-fid, and hands it to torchmetrics as a custom ``feature`` module.

Interface expected of the TorchScript module (that file's interface; a plain ``forward(x)`` also works):

- input ``float[B, 3, 299, 299]`` on the 0..255 scale (:class:`TorchScriptInception` resizes the
  images to 299 × 299 bilinearly and rescales them, whatever size and dtype they come in);
- ``forward(x, return_features=True)`` -> ``float[B, 2048]`` pool3 features (FID, KID);
- ``forward(x)`` -> ``float[B, K]`` class probabilities or logits (Inception Score; with
  ``no_output_bias=True`` when the module takes it, as the original IS code drops the output bias).

Security: ``torch.jit.load`` does not unpickle arbitrary Python objects: its unpickler only rebuilds
tensors and TorchScript types, and a ``data.pkl`` that names a Python callable such as ``os.system``
fails to load ("Unknown type name 'posix.system'", checked with torch 2.13). But a TorchScript archive
is still a *program* run by the TorchScript interpreter, and PyTorch's security policy asks that
TorchScript models be treated like code from their author: load only files you trust, and check
their hash. :func:`load_torchscript` and :meth:`TorchScriptInception.from_file` take the expected
SHA-256 (``sha256=``) and refuse a file that differs before loading it; ``dalle eval --inception``
refuses to load the file at all unless ``--inception-sha256 HEX`` is given (or ``--trust-inception``
says the user trusts it as it is), see :func:`check_inception_file`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048


_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: str | Path, expected: str, *, flag: str = "sha256") -> str:
    """The SHA-256 of ``path`` if it is ``expected`` (64 hex digits, any case), else a ValueError."""
    if not isinstance(expected, str) or not _SHA256.match(expected.strip()):
        raise ValueError(f"{flag}: expected 64 hexadecimal digits, got {str(expected)[:80]!r}")
    digest = sha256_file(path)
    if digest != expected.strip().lower():
        raise ValueError(
            f"{path}: SHA-256 is {digest}, not the expected {expected.strip().lower()} ({flag}); not loaded"
        )
    return digest


def check_inception_file(path: str | Path, *, sha256: str | None, trust: bool) -> str:
    """Gate a TorchScript file before it is loaded (loading runs its code): the SHA-256 of ``path``,
    checked against ``sha256`` when given; without one, a ValueError unless ``trust``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--inception: file not found: {path}")
    if sha256 is not None:
        return check_sha256(path, sha256, flag="--inception-sha256")
    digest = sha256_file(path)
    if not trust:
        raise ValueError(
            f"--inception: loading {path} runs the TorchScript program in it; pass --inception-sha256 with the "
            f"SHA-256 published for the file you trust (this file's is {digest}), or --trust-inception"
        )
    return digest


def load_torchscript(path: str | Path, *, sha256: str | None = None) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on CPU, with a clear error for a missing or unreadable file (see the module doc).

    With ``sha256`` the file is loaded only if its SHA-256 is that (a ValueError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception file not found: {path}")
    if sha256 is not None:
        check_sha256(path, sha256)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # torch.jit.load is deprecated in favour of export
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path}: not a loadable TorchScript archive ({first})") from None
    return net.eval()


class TorchScriptInception(nn.Module):
    """Adapts a TorchScript Inception-v3 to torchmetrics' ``feature=`` interface.

    ``forward(imgs)`` takes ``uint8[B, 3, H, W]`` in 0..255 or ``float[B, 3, H, W]`` in [0, 1] (what
    torchmetrics passes with ``normalize=False`` / ``True``) and returns ``float[B, 2048]`` features
    (``output="features"``) or ``float[B, K]`` logits (``output="logits"``; log-probabilities when the
    network returns probabilities, so torchmetrics' softmax gives back those probabilities).
    """

    def __init__(self, net: nn.Module, *, output: str = "features") -> None:
        super().__init__()
        if output not in ("features", "logits"):
            raise ValueError(f"output must be 'features' or 'logits', got {output!r}")
        self.net = net
        self.output = output
        self._args = _argument_names(net)
        self.num_features = INCEPTION_FEATURES if output == "features" else None

    @classmethod
    def from_file(
        cls, path: str | Path, *, output: str = "features", sha256: str | None = None
    ) -> TorchScriptInception:
        """The network in the TorchScript file ``path`` (only if its SHA-256 is ``sha256``, when given)."""
        path = Path(path)
        net = load_torchscript(path, sha256=sha256)
        logger.info("loaded TorchScript Inception %s (sha256 %s)", path, sha256_file(path))
        module = cls(net, output=output)
        module.check()
        return module

    def check(self) -> None:
        """Run one blank image through the network and check the output shape (a clear error if wrong)."""
        out = self(torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE))
        if out.dim() != 2 or len(out) != 1:
            raise ValueError(f"the Inception network returned shape {tuple(out.shape)}, expected [1, D]")
        if self.output == "features" and out.shape[1] != INCEPTION_FEATURES:
            raise ValueError(
                f"the Inception network returned {out.shape[1]} features, expected {INCEPTION_FEATURES}"
            )
        if self.output == "logits":
            self.num_features = out.shape[1]

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = imgs.float() if imgs.dtype == torch.uint8 else imgs.float() * 255.0  # (B, 3, H, W) on 0..255
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        was = self.net.training
        self.net.eval()
        try:
            if self.output == "features":
                out = self.net(x, return_features=True) if "return_features" in self._args else self.net(x)
            else:
                kw = {"no_output_bias": True} if "no_output_bias" in self._args else {}
                out = self.net(x, **kw)
        finally:
            self.net.train(was)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.float().flatten(1)  # (B, D)
        if self.output == "logits" and _looks_like_probabilities(out):
            out = out.clamp_min(1e-12).log()
        return out


def _argument_names(net: nn.Module) -> tuple[str, ...]:
    """Names of ``net.forward``'s arguments (TorchScript schema or Python signature)."""
    schema = getattr(getattr(net, "forward", None), "schema", None)
    if schema is not None:
        return tuple(a.name for a in schema.arguments)

    try:
        return tuple(inspect.signature(net.forward).parameters)
    except (TypeError, ValueError):
        return ()


def _looks_like_probabilities(x: torch.Tensor) -> bool:
    return bool((x >= 0).all() and torch.allclose(x.sum(-1), torch.ones(len(x)), atol=1e-3))
