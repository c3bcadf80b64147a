"""The dVAE objective (paper App. A.2-A.3), schedules and train config."""

from __future__ import annotations

import math

import pytest
import torch

from dalle_zero.models.dvae import DVAEConfig
from dalle_zero.models.dvae_loss import dvae_loss, kl_to_uniform, logit_laplace_nll, nats_to_bits_per_dim
from dalle_zero.training.dvae import DVAETrainConfig, gumbel_noise, psnr
from dalle_zero.training.loop import LoopConfig
from dalle_zero.training.schedules import cosine_schedule, linear_warmup, scaled_length


def test_logit_laplace_nll_is_the_density_of_a_sigmoid_of_a_laplace():
    x = torch.tensor([0.1, 0.3, 0.5, 0.9])
    mu = torch.tensor([0.0, -1.0, 2.0, 0.5])
    log_b = torch.tensor([0.0, -0.5, 0.3, -2.0])
    # change of variables y = logit(x): -ln f_X(x) = -ln f_Y(y) + ln x + ln(1 - x)
    laplace = torch.distributions.Laplace(mu, log_b.exp())
    expected = -laplace.log_prob(torch.logit(x)) + torch.log(x) + torch.log(1 - x)
    torch.testing.assert_close(logit_laplace_nll(x, mu, log_b), expected)


def test_kl_to_uniform_is_zero_for_uniform_and_ln_k_for_one_hot():
    assert kl_to_uniform(torch.zeros(1, 8, 1, 1)).item() == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.full((1, 8, 1, 1), -1e4)
    one_hot[0, 3] = 0
    assert kl_to_uniform(one_hot).item() == pytest.approx(math.log(8), abs=1e-5)


def test_loss_equals_hand_computed_value_on_a_tiny_input():
    # B=1, 1×2×2 image... with C=3 channels; 1×1 token grid over V=2 codes
    pixels = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]]).repeat(1, 3, 1, 1)  # (1, 3, 2, 2)
    mu = torch.zeros(1, 3, 2, 2)
    log_b = torch.zeros(1, 3, 2, 2)
    logits = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)  # q = (3/4, 1/4)
    out = dvae_loss(pixels, logits, mu, log_b, kl_weight=6.6)

    def nll(p):  # b = 1, mu = 0, x = 0.8 p + 0.1
        x = 0.8 * p + 0.1
        return math.log(2) + math.log(x) + math.log(1 - x) + abs(math.log(x / (1 - x)))

    nll_sum = 3 * sum(nll(p) for p in (0.0, 1.0, 0.5, 0.25))
    kl = 0.75 * math.log(0.75 * 2) + 0.25 * math.log(0.25 * 2)
    assert out.loss.item() == pytest.approx((nll_sum + 6.6 * kl) / 12, rel=1e-5)
    assert out.nll.item() == pytest.approx(nll_sum / 12, rel=1e-5)
    assert out.kl.item() == pytest.approx(kl, rel=1e-5)


def test_loss_is_a_batch_mean():
    pixels = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mu, log_b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4) * 0.1
    logits = torch.randn(2, 5, 2, 2)
    both = dvae_loss(pixels, logits, mu, log_b, 1.0).loss
    each = [
        dvae_loss(pixels[i : i + 1], logits[i : i + 1], mu[i : i + 1], log_b[i : i + 1], 1.0).loss for i in range(2)
    ]
    assert both.item() == pytest.approx(sum(e.item() for e in each) / 2, rel=1e-6)


def test_bits_per_dim_accounts_for_the_pixel_map():
    # a uniform density on the mapped interval [0.1, 0.9] is a uniform density on [0, 255]
    nll_uniform = math.log(0.8)
    assert nats_to_bits_per_dim(nll_uniform) == pytest.approx(math.log2(255))


def test_psnr():
    a = torch.zeros(1, 3, 2, 2)
    assert psnr(a, a + 0.1).item() == pytest.approx(20.0, rel=1e-4)


def test_gumbel_noise_is_tied_to_each_samples_seed():
    a = gumbel_noise((4, 2, 2), torch.tensor([5, 6]), torch.device("cpu"))
    b = gumbel_noise((4, 2, 2), torch.tensor([6]), torch.device("cpu"))
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    big = gumbel_noise((20000,), torch.tensor([1]), torch.device("cpu"))
    assert big.mean().item() == pytest.approx(0.5772, abs=0.03)  # Euler–Mascheroni: the Gumbel mean


def test_cosine_schedule_start_middle_end_and_hold():
    assert cosine_schedule(0, start=1.0, end=1 / 16, length=100) == 1.0
    assert cosine_schedule(50, start=1.0, end=1 / 16, length=100) == pytest.approx((1 + 1 / 16) / 2)
    assert cosine_schedule(100, start=1.0, end=1 / 16, length=100) == 1 / 16
    assert cosine_schedule(10**6, start=1.0, end=1 / 16, length=100) == 1 / 16
    assert cosine_schedule(0, start=0.0, end=6.6, length=0) == 6.6
    with pytest.raises(ValueError, match="step must be >= 0"):
        cosine_schedule(-1, start=1.0, end=0.0, length=10)


def test_linear_warmup_and_scaled_length():
    assert linear_warmup(0, peak=1.0, length=4) == 0.25
    assert linear_warmup(9, peak=1.0, length=4) == 1.0
    assert scaled_length(3_000_000, 0.05) == 150_000
    assert scaled_length(1000, 0.05, steps=7) == 7


def test_paper_schedules_at_paper_length():
    c = DVAETrainConfig(loop=LoopConfig(steps=3_000_000))
    assert (c.tau_length, c.kl_weight_length, c.lr_length) == (150_000, 5_000, 1_200_000)
    assert (c.tau_at(0), c.tau_at(150_000)) == (1.0, 1 / 16)
    assert (c.kl_weight_at(0), c.kl_weight_at(2_500), c.kl_weight_at(5_000)) == (0.0, pytest.approx(3.3), 6.6)
    assert (c.lr_at(0), c.lr_at(1_200_000), c.lr_at(2_999_999)) == (1e-4, 1.25e-6, 1.25e-6)


def test_schedules_scale_with_a_short_run_unless_lengths_are_given():
    c = DVAETrainConfig(loop=LoopConfig(steps=2000))
    assert (c.tau_length, c.kl_weight_length, c.lr_length) == (100, 3, 800)
    c = DVAETrainConfig(loop=LoopConfig(steps=2000), tau_steps=1000, lr_fraction=1.0)
    assert (c.tau_length, c.lr_length) == (1000, 2000)
    assert c.tau_at(500) == pytest.approx((1 + 1 / 16) / 2)


def test_train_config_round_trips_through_json(tmp_path):
    c = DVAETrainConfig(
        model=DVAEConfig(image_size=32, group_count=3, n_hid=32, n_init=32, vocab_size=512),
        loop=LoopConfig(steps=10, ema_decay=0.99),
        data="/x",
        tau_steps=5,
    )
    path = tmp_path / "t.json"
    path.write_text(c.to_json())
    assert DVAETrainConfig.from_json_file(path) == c


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tau_end": 0.0}, "tau_end must be > 0"),
        ({"lr_fraction": 1.5}, "lr_fraction must be <= 1"),
        ({"adam_beta2": 1.0}, "adam_beta2 must be < 1"),
        ({"kl_weight_end": -1.0}, "kl_weight_end must be >= 0"),
        ({"tau_steps": -3}, "tau_steps must be >= 0"),
        ({"augment": "yes"}, "augment must be true or false"),
    ],
)
def test_bad_train_config_values_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        DVAETrainConfig(**changes)
