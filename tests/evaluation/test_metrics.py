"""Evaluation figures: FID/KID/IS through torchmetrics with our evaluator, and the simple statistics."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from dalle_zero.data.images import blur
from dalle_zero.evaluation import metrics
from dalle_zero.evaluation.inception import TorchScriptInception
from dalle_zero.models.dvae_loss import codebook_stats
from dalle_zero.models.evaluator import EmojiEvaluator, EvaluatorConfig, EvaluatorHead
from tests.factories.shapes import shape_batch

HEADS = (
    EvaluatorHead(name="category", labels=("circle", "square", "bar")),
    EvaluatorHead(name="tone", labels=("none", "light", "dark")),
)


@pytest.fixture(scope="module")
def evaluator() -> EmojiEvaluator:
    torch.manual_seed(0)  # a random network: enough to tell image distributions apart
    return EmojiEvaluator(EvaluatorConfig(image_size=16, widths=(8, 16, 32), heads=HEADS)).eval()


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return shape_batch(96, seed=1)


def test_fid_of_a_set_against_itself_is_zero_and_against_noise_is_large(evaluator, real):
    same = metrics.fid(real, real, evaluator)
    other_real = metrics.fid(real, shape_batch(96, seed=2), evaluator)
    noise = metrics.fid(real, torch.rand_like(real, generator=torch.Generator().manual_seed(0)), evaluator)
    assert abs(same) < 1e-3
    assert noise > 5 * other_real > 0  # a random network already separates noise from shapes


def test_fid_reads_uint8_and_float_images_alike(evaluator, real):
    u8 = (real * 255).round().to(torch.uint8)
    other = shape_batch(64, seed=3)
    assert metrics.fid(u8, other, evaluator) == pytest.approx(metrics.fid(u8.float() / 255, other, evaluator))


def test_fid_accepts_batches_and_leaves_the_model_mode_alone(evaluator, real):
    evaluator.train()
    try:
        whole = metrics.fid(real, shape_batch(64, seed=4), evaluator)
        batched = metrics.fid(list(real.split(10)), iter(shape_batch(64, seed=4).split(7)), evaluator)
        assert evaluator.training
    finally:
        evaluator.eval()
    assert batched == pytest.approx(whole, rel=1e-4, abs=1e-6)


def test_fid_needs_two_images_per_side(evaluator, real):
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fid(real, real[:1], evaluator)


def test_kid_of_a_set_against_itself_is_near_zero_and_against_noise_is_large(evaluator, real):
    noise = torch.rand_like(real, generator=torch.Generator().manual_seed(0))
    same, _ = metrics.kid(real, real, evaluator, subsets=10, subset_size=50)
    far, far_std = metrics.kid(real, noise, evaluator, subsets=10, subset_size=50)
    assert abs(same) < 0.05 * far
    assert far > 0 and far_std >= 0


def test_kid_is_repeatable_and_does_not_touch_the_global_rng(evaluator, real):
    other = shape_batch(64, seed=5)
    torch.manual_seed(123)
    a = metrics.kid(real, other, evaluator, subsets=5, subset_size=30, seed=7)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = metrics.kid(real, other, evaluator, subsets=5, subset_size=30, seed=7)
    assert a == b and torch.equal(after, torch.rand(1) * 0 + after)
    torch.manual_seed(123)
    metrics.kid(real, other, evaluator, subsets=5, subset_size=30, seed=7)
    assert torch.equal(torch.rand(1), after)


def test_inception_score_is_finite_and_between_one_and_the_number_of_classes(evaluator, real):
    mean, std = metrics.inception_score(real, evaluator, splits=4)
    assert 1.0 <= mean <= len(HEADS[1].labels) and math.isfinite(std)
    mean_cat, _ = metrics.inception_score(real, evaluator, head="category", splits=4)
    assert 1.0 <= mean_cat <= 3.0


def test_inception_score_is_one_for_a_classifier_that_always_says_the_same():
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, imgs: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[5.0, 0.0, 0.0]]).expand(len(imgs), 3) + self.w

    mean, _ = metrics.inception_score(shape_batch(20), Constant(), splits=2)
    assert mean == pytest.approx(1.0, abs=1e-5)


def test_codebook_stats_on_hand_made_codes():
    uniform = codebook_stats(torch.tensor([0, 1, 2, 3] * 5), vocab_size=8)
    assert uniform.perplexity == pytest.approx(4.0) and uniform.usage == 0.5 and uniform.used == 4
    single = codebook_stats(torch.zeros(2, 3, 3, dtype=torch.long), vocab_size=16)
    assert single.perplexity == pytest.approx(1.0) and single.usage == 1 / 16
    skewed = codebook_stats(torch.tensor([0, 0, 0, 1]), vocab_size=2)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert skewed.perplexity == pytest.approx(math.exp(h))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        codebook_stats(torch.tensor([0, 4]), vocab_size=4)


def test_psnr_and_ssim_of_identical_images():
    x = shape_batch(4)
    assert math.isinf(metrics.psnr(x, x.clone()))
    assert metrics.ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-5)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert 15 < metrics.psnr(noisy, x) < 25 and metrics.ssim(noisy, x) < 0.95


def test_psnr_of_a_known_error():
    x = torch.full((2, 3, 8, 8), 0.5)
    assert metrics.psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-3)  # 10 log10(1 / 0.01)


def test_bits_per_token_of_uniform_logits_is_log2_vocab():
    logits = torch.zeros(2, 5, 16)
    targets = torch.randint(16, (2, 5), generator=torch.Generator().manual_seed(0))
    assert metrics.bits_per_token(logits, targets) == pytest.approx(4.0)
    targets[0, 0] = -1
    assert metrics.bits_per_token(logits, targets, ignore_index=-1) == pytest.approx(4.0)


class _BagOfWords(nn.Module):
    """A text-image model whose text and image embeddings agree exactly when caption == colour id."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.eye(3))
        self.config = type("C", (), {"image_size": 16})()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.mean(dim=(2, 3)) @ self.p  # (B, 3)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(ids[:, 0], 3).float() @ self.p  # (B, 3)


def test_r_precision_is_one_for_a_perfect_model_and_low_for_shuffled_captions():
    g = torch.Generator().manual_seed(0)
    colour = torch.randint(3, (30,), generator=g)
    images = nn.functional.one_hot(colour, 3).float().view(30, 3, 1, 1).expand(30, 3, 16, 16)
    ids = torch.stack([colour, torch.zeros_like(colour)], dim=1)  # (N, T=2)
    pool = torch.tensor([[0, 0], [1, 0], [2, 0]])
    model = _BagOfWords()
    assert metrics.r_precision(model, images, ids, pool, generator=g) == 1.0
    shuffled = ids[torch.randperm(30, generator=g)]
    mismatched = (shuffled[:, 0] != colour).float().mean().item()
    assert metrics.r_precision(model, images, shuffled, pool, generator=g) == pytest.approx(1 - mismatched)


def test_attribute_accuracy_counts_only_asked_labels_the_head_knows(evaluator):
    x = shape_batch(6)
    read = evaluator.predict(x, "tone")
    share, n = metrics.attribute_accuracy(evaluator, x, "tone", read[:4] + [None, "purple"])
    assert (share, n) == (1.0, 4)
    assert math.isnan(metrics.attribute_accuracy(evaluator, x, "tone", [None] * 6)[0])


def test_blur_keeps_constant_images_and_smooths_edges():
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(blur(flat, 2.0), flat)
    x = shape_batch(2)
    assert torch.equal(blur(x, 0), x)
    assert blur(x, 1.0).diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean()


# ---- standard FID / IS with a user-supplied TorchScript Inception (random weights, same interface)


class _FakeInception(nn.Module):
    """The interface of inception-2015-12-05.pt: [B, 3, 299, 299] on 0..255 -> 2048 features or
    1008 class probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 7, stride=4)
        self.proj = nn.Linear(64, 2048)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if img.shape[2] != 299 or img.shape[3] != 299:
            raise ValueError("expected 299 x 299 input")
        x = (img - 128.0) / 128.0
        f = torch.relu(self.proj(torch.relu(self.conv(x)).mean(dim=(2, 3))))  # (B, 2048)
        if return_features:
            return f
        return torch.softmax(self.fc(f), dim=1)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / "inception-random.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_FakeInception()).save(str(path))
    return str(path)


def test_torchscript_inception_gives_pool_features_and_inception_score(inception_file, real):
    feats = TorchScriptInception.from_file(inception_file)
    assert feats.num_features == 2048 and feats(real[:2]).shape == (2, 2048)
    torch.testing.assert_close(
        feats((real[:2] * 255).round().to(torch.uint8)), feats(real[:2]), atol=0.05, rtol=0.02
    )
    probs = TorchScriptInception.from_file(inception_file, output="logits")
    mean, _ = metrics.inception_score(real[:24], probs, splits=2)
    assert 1.0 <= mean <= 1008 and math.isfinite(mean)


@pytest.mark.slow
def test_torchscript_inception_gives_standard_fid(inception_file, real):
    """2048-d features: the matrix square root in FID takes tens of seconds on 2 cores."""
    feats = TorchScriptInception.from_file(inception_file)
    small = real[:24]
    assert abs(metrics.fid(small, small, feats)) < 1e-2
    assert metrics.fid(small, torch.rand_like(small), feats) > 0


def test_torchscript_inception_with_a_plain_forward(tmp_path):
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2048)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.mean(dim=(2, 3)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Plain()).save(str(tmp_path / "plain.pt"))
    assert TorchScriptInception.from_file(tmp_path / "plain.pt")(torch.rand(3, 3, 32, 32)).shape == (3, 2048)


def test_an_inception_file_of_the_wrong_kind_is_a_clear_error(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"not a torchscript archive")
    with pytest.raises(ValueError, match="not a loadable TorchScript"):
        TorchScriptInception.from_file(tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError):
        TorchScriptInception.from_file(tmp_path / "missing.pt")
