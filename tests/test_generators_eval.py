"""Memorisation baselines and the verdict on hand-made cases; the PNG guard."""

from __future__ import annotations

import pytest
import torch

from generators.baselines import BASELINES, averaged, gaussian, interpolations, noise_copies, pca_gaussian
from generators.evaluate import summarize, verdict
from zoo.errors import ConfigError, DuplicateError, OutputPathError
from zoo.io.figures import check_png_path


def test_noise_copies_are_training_models_plus_noise_of_the_asked_size() -> None:
    train = torch.arange(12.0).reshape(3, 4)
    same = noise_copies(train, 10, 0.0, torch.Generator().manual_seed(0))
    assert all(any(torch.equal(r, t) for t in train) for r in same)
    big = torch.zeros(2, 5000)
    noisy = noise_copies(big, 4, 0.3, torch.Generator().manual_seed(0))
    assert abs(float(noisy.std()) - 0.3) < 0.01


def test_averaged_is_the_mean_of_k_distinct_models() -> None:
    train = torch.eye(20)
    out = averaged(train, 5, 16, torch.Generator().manual_seed(1))
    assert torch.allclose(out.sum(1), torch.ones(5))  # 16 distinct one-hot rows, each 1/16
    assert ((out > 0).sum(1) == 16).all()
    assert torch.allclose(averaged(train[:4], 2, 16), train[:4].mean(0).expand(2, -1))  # fewer than k: all of them


def test_gaussian_and_pca_gaussian_fit_the_training_statistics() -> None:
    g = torch.Generator().manual_seed(2)
    train = torch.randn(400, 3, generator=g) * torch.tensor([1.0, 2.0, 0.0]) + torch.tensor([5.0, -1.0, 3.0])
    out = gaussian(train, 4000, generator=g)
    torch.testing.assert_close(out.mean(0), train.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(out.std(0), train.std(0), atol=0.1, rtol=0)
    # points on a line: the PCA-Gaussian with one component stays on that line
    line = torch.linspace(-1, 1, 50)[:, None] * torch.tensor([[1.0, 2.0, -1.0]]) + 1.0
    pc = pca_gaussian(line, 100, components=1, generator=g)
    d = pc - 1.0
    assert torch.allclose(torch.linalg.cross(d, torch.tensor([1.0, 2.0, -1.0]).expand_as(d)), torch.zeros_like(d), atol=1e-4)


def test_interpolations_lie_between_two_distinct_models() -> None:
    train = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    out = interpolations(train, 200, 0.25, 0.75, torch.Generator().manual_seed(3))
    s = out.sum(1)
    # between two distinct corners of the triangle: on an edge, strictly inside it
    on_edge = (out[:, 0].abs() < 1e-6) | (out[:, 1].abs() < 1e-6) | ((s - 10).abs() < 1e-5)
    assert on_edge.all()
    assert (out.max(1).values >= 2.5 - 1e-6).all() and (out.max(1).values <= 7.5 + 1e-6).all()
    with pytest.raises(ConfigError):
        interpolations(train[:1], 3)
    assert {"averaged", "gaussian", "pca_gaussian", "interpolation", "noise_0.1"} <= set(BASELINES)


def _s(q: float, nov: float) -> dict:
    return {"quality_median": q, "novelty_median": nov}


NOISE = [_s(0.95, 0.0), _s(0.93, 1.0), _s(0.85, 2.0), _s(0.6, 4.0)]


def test_verdict_against_the_noise_curve() -> None:
    # as accurate as noise level 1.0 but farther from training: novel, +acc at equal novelty
    v = verdict(_s(0.93, 3.0), NOISE)
    assert v["verdict"] == "novel"
    assert v["noise_novelty_at_quality"] == pytest.approx(1.0)
    assert v["quality_gain_vs_noise"] == pytest.approx(0.93 - 0.725)
    # closer to training than noise copies of the same accuracy: memorising
    assert verdict(_s(0.85, 1.5), NOISE)["verdict"] == "memorising"
    assert verdict(_s(0.95, 0.0), NOISE)["verdict"] == "memorising"  # copies
    assert verdict(_s(0.3, 9.0), NOISE)["verdict"] == "degenerate"
    # beyond the noise curve's far end: new, but less accurate than the noisiest copies
    assert verdict(_s(0.55, 9.0), NOISE)["verdict"] == "poor"
    assert verdict(_s(0.65, 9.0), NOISE)["verdict"] == "novel"
    assert verdict(_s(5.0, 9.0), [_s(20.0, 0.0), _s(10.0, 4.0)], classifier=False, quality_floor=15.0)["verdict"] == "degenerate"
    # class-conditional SIRENs: a good PSNR does not save renders that mostly draw another digit
    sirens = [_s(20.0, 0.0), _s(10.0, 4.0)]
    assert verdict(_s(16.0, 9.0), sirens, classifier=False, quality_floor=15.0, class_match=0.4)["verdict"] == "degenerate"
    assert verdict(_s(16.0, 9.0), sirens, classifier=False, quality_floor=15.0, class_match=0.9)["verdict"] == "novel"


def test_summary_uses_median_and_5th_percentile_of_all_models() -> None:
    import numpy as np

    q = np.linspace(0.0, 1.0, 101)
    s = summarize({"quality": q, "novelty": q * 2, "near_copy": q < 0.1}, reference_novelty=2.0,
                  train_quality=np.array([0.2, 0.8]))
    assert s["quality_median"] == pytest.approx(0.5) and s["quality_p5"] == pytest.approx(0.05)
    assert s["novelty_ratio"] == pytest.approx(0.5)
    assert s["near_copy_fraction"] == pytest.approx(10 / 101)
    assert s["inside_train_range"] == pytest.approx(61 / 101)


def test_png_path_guard(tmp_path, zoo) -> None:
    assert check_png_path(tmp_path / "a.png") == (tmp_path / "a.png").resolve()
    with pytest.raises(OutputPathError, match=".png"):
        check_png_path(tmp_path / "a.txt")
    with pytest.raises(OutputPathError, match="inside the zoo"):
        check_png_path(zoo.root / "plot.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(OutputPathError, match="not a PNG"):
        check_png_path(tmp_path / "notes.png", overwrite=True)
    (tmp_path / "old.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 10)
    with pytest.raises(DuplicateError):
        check_png_path(tmp_path / "old.png")
    assert check_png_path(tmp_path / "old.png", overwrite=True)
