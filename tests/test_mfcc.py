"""Our torch MFCC against the reference fixture and python_speech_features itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from m3ed.asd.mfcc import audio_for_asd, mfcc

DATA = Path(__file__).parent / "data"


def reference_mfcc(samples: np.ndarray) -> np.ndarray:
    psf = pytest.importorskip("python_speech_features")
    return psf.mfcc(samples, 16000, numcep=13, winlen=0.025, winstep=0.010)


def speech_like_signal(length: int, seed: int) -> np.ndarray:
    """Noise-modulated tones with a stretch of digital silence (exercises the log-of-zero rule)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / 16000
    wave = 8000 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + rng.normal(0, 1500, length)
    wave[length // 3 : length // 3 + 2000] = 0
    return np.clip(wave, -32768, 32767).astype(np.int16)


def test_matches_the_fixture() -> None:
    with np.load(DATA / "parity_io.npz") as data:
        samples, expected = data["audio_int16"], data["mfcc"]
    features = mfcc(torch.from_numpy(samples))
    assert features.dtype == torch.float32
    assert features.shape == (200, 13)  # 1 + ceil((32240 - 400) / 160) frames
    np.testing.assert_allclose(features[:200].numpy(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("length", [1, 399, 400, 401, 16000, 16161])
def test_matches_python_speech_features(length: int) -> None:
    samples = speech_like_signal(length, seed=length)
    expected = reference_mfcc(samples)
    features = mfcc(torch.from_numpy(samples))
    assert features.shape == expected.shape
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_accepts_float_samples_at_int16_scale() -> None:
    samples = speech_like_signal(4000, seed=1)
    torch.testing.assert_close(mfcc(torch.from_numpy(samples).float()), mfcc(samples))


def test_batched_equals_one_by_one() -> None:
    signals = np.stack([speech_like_signal(8000, seed) for seed in range(3)])
    batched = mfcc(torch.from_numpy(signals))
    assert batched.shape == (3, 49, 13)
    for row, signal in zip(batched, signals, strict=True):
        torch.testing.assert_close(row, mfcc(torch.from_numpy(signal)))


def test_float32_computation_stays_close() -> None:
    samples = torch.from_numpy(speech_like_signal(16000, seed=2))
    torch.testing.assert_close(mfcc(samples, compute_dtype=torch.float32), mfcc(samples), atol=2e-2, rtol=1e-3)


def test_rejects_empty_and_badly_shaped_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        mfcc(torch.zeros(0))
    with pytest.raises(ValueError, match=r"\[N\] or \[B, N\]"):
        mfcc(torch.zeros(2, 2, 800))


def test_audio_for_asd_converts_like_a_16_bit_wav() -> None:
    samples = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, 1 / 65536, 3 / 65536, -0.25 / 32768])
    expected = torch.tensor([0.0, 16384, -16384, 32767, -32768, 32767, 0, 2, 0])  # half to even
    converted = audio_for_asd(samples)
    assert converted.dtype == torch.float32
    torch.testing.assert_close(converted, expected)
    with pytest.raises(ValueError, match="float audio"):
        audio_for_asd(torch.zeros(4, dtype=torch.int16))
