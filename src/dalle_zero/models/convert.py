"""Import of OpenAI's released dVAE weights into our :class:`DiscreteVAE` (openai/DALL-E's ``dall_e`` package, v0.1).

OpenAI published the dVAE as two *pickled modules* (``encoder.pkl``, ``decoder.pkl``); we never
unpickle them. Extract their ``state_dict`` once, in a throwaway environment that has the
``DALL-E`` package, and save it as safetensors::

    # python -m venv /tmp/dalle-e && /tmp/dalle-e/bin/pip install DALL-E safetensors
    import torch, dall_e                                   # dall_e must be importable to unpickle
    from safetensors.torch import save_file
    for name in ("encoder", "decoder"):
        module = torch.load(f"{name}.pkl", map_location="cpu", weights_only=False)  # trusted file only
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, f"{name}.safetensors")

then load them here without running any foreign code::

    from dalle_zero.models.convert import load_openai_dvae
    dvae = load_openai_dvae("encoder.safetensors", "decoder.safetensors")
    dvae.save_pretrained("openai-dvae")

The released names map one to one: ``blocks.<path>.w`` / ``.b`` of the encoder become
``encoder.blocks.<path>.weight`` / ``.bias`` here (likewise for the decoder), where ``<path>`` is
``input``, ``group_N.block_M.id_path``, ``group_N.block_M.res_path.conv_K`` or ``output.conv``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from dalle_zero.io import load_state_dict
from dalle_zero.models.dvae import DiscreteVAE, DVAEConfig

_KEY = re.compile(
    r"^blocks\.(?P<path>input|output\.conv|group_(?P<g>\d+)\.block_(?P<m>\d+)\.(?:id_path|res_path\.conv_[1-4]))"
    r"\.(?P<p>w|b)$"
)
_PARAM = {"w": "weight", "b": "bias"}


def convert_openai_dvae(
    encoder_state: dict[str, torch.Tensor],
    decoder_state: dict[str, torch.Tensor],
    *,
    image_size: int = 256,
) -> tuple[DVAEConfig, dict[str, torch.Tensor]]:
    """Map the ``dall_e`` Encoder/Decoder state dicts to (our config, our state dict).

    The config is inferred from shapes (widths, vocabulary, groups, blocks per group, kernels);
    ``image_size`` is only the nominal resolution (the network is fully convolutional; the release
    was trained at 256). Raises ValueError naming any unexpected, missing or mis-shaped key.
    """
    enc = _rename(encoder_state, "encoder")
    dec = _rename(decoder_state, "decoder")
    config = _infer_config(encoder_state, decoder_state, image_size=image_size)
    state = {**enc, **dec}
    with torch.device("meta"):
        expected = DiscreteVAE(config).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [
        f"{k}: {tuple(state[k].shape)} given, {tuple(expected[k].shape)} expected"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_released_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {_released_names(unexpected)}")
    if bad_shape:
        problems.append("shape mismatch " + "; ".join(bad_shape[:4]))
    if problems:
        raise ValueError(f"OpenAI dVAE weights do not fit the inferred {config}: " + "; ".join(problems))
    return config, {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}


def load_openai_dvae(encoder_path: str | Path, decoder_path: str | Path, *, image_size: int = 256) -> DiscreteVAE:
    """Build a :class:`DiscreteVAE` from the released weights saved as safetensors (see module doc)."""
    config, state = convert_openai_dvae(
        load_state_dict(encoder_path), load_state_dict(decoder_path), image_size=image_size
    )
    model = DiscreteVAE(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _rename(state: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise ValueError(f"{part} state: expected a dict of tensors (a state_dict), got {type(state).__name__}")
    out = {}
    bad = []
    for key, value in state.items():
        m = _KEY.match(key)
        if m is None or not isinstance(value, torch.Tensor):
            bad.append(key)
            continue
        out[f"{part}.blocks.{m['path']}.{_PARAM[m['p']]}"] = value
    if bad:
        raise ValueError(
            f"{part} state: unexpected key(s) {bad[:6]}{' ...' if len(bad) > 6 else ''}; expected dall_e names "
            "such as 'blocks.input.w', 'blocks.group_1.block_1.res_path.conv_1.w', 'blocks.output.conv.b'"
        )
    return out


def _released_names(keys: list[str]) -> list[str]:
    """Our names back in dall_e spelling, for error messages."""
    names = [
        f"{k.split('.', 1)[0]}:"
        + k.split(".", 1)[1].removesuffix(".weight").removesuffix(".bias")
        + (".w" if k.endswith(".weight") else ".b")
        for k in keys
    ]
    return names[:6] + ([f"... {len(names) - 6} more"] if len(names) > 6 else [])


def _require(state: dict[str, torch.Tensor], key: str, part: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"{part} state: missing key {key!r}")
    t = state[key]
    if t.dim() != 4:
        raise ValueError(f"{part} state: {key!r} should be a 4-D conv weight, got shape {tuple(t.shape)}")
    return t


def _infer_config(enc: dict[str, torch.Tensor], dec: dict[str, torch.Tensor], *, image_size: int) -> DVAEConfig:
    def groups(state: dict[str, torch.Tensor]) -> dict[int, set[int]]:
        found: dict[int, set[int]] = {}
        for key in state:
            m = _KEY.match(key)
            if m and m["g"] is not None:
                found.setdefault(int(m["g"]), set()).add(int(m["m"]))
        return found

    enc_groups, dec_groups = groups(enc), groups(dec)
    if not enc_groups:
        raise ValueError("encoder state: no 'blocks.group_N.block_M...' keys found")
    group_count = len(enc_groups)
    n_blk = len(enc_groups[min(enc_groups)])
    if sorted(enc_groups) != list(range(1, group_count + 1)) or any(
        b != set(range(1, n_blk + 1)) for b in enc_groups.values()
    ):
        raise ValueError(f"encoder state: groups/blocks are not numbered 1..N: {sorted(enc_groups.items())}")
    if dec_groups != enc_groups:
        raise ValueError(
            f"decoder has groups/blocks {sorted(dec_groups.items())}, encoder {sorted(enc_groups.items())}"
        )
    w_in = _require(enc, "blocks.input.w", "encoder")  # (n_hid, C, k, k)
    w_out = _require(enc, "blocks.output.conv.w", "encoder")  # (V, 8·n_hid, k, k)
    d_in = _require(dec, "blocks.input.w", "decoder")  # (n_init, V, k, k)
    d_out = _require(dec, "blocks.output.conv.w", "decoder")  # (2C, n_hid, 1, 1)
    if d_in.shape[1] != w_out.shape[0]:
        raise ValueError(f"vocabulary differs: encoder outputs {w_out.shape[0]} logits, decoder reads {d_in.shape[1]}")
    if d_out.shape[0] != 2 * w_in.shape[1]:
        raise ValueError(
            f"decoder outputs {d_out.shape[0]} channels; expected 2 × {w_in.shape[1]} input channels (mu, ln b)"
        )
    if d_in.shape[2] != w_out.shape[2]:
        raise ValueError(f"token conv kernels differ: encoder {w_out.shape[2]}, decoder {d_in.shape[2]}")
    return DVAEConfig(
        image_size=image_size,
        group_count=group_count,
        n_blk_per_group=n_blk,
        n_hid=int(w_in.shape[0]),
        n_init=int(d_in.shape[0]),
        vocab_size=int(w_out.shape[0]),
        input_channels=int(w_in.shape[1]),
        input_kernel=int(w_in.shape[2]),
        token_kernel=int(w_out.shape[2]),
    )
