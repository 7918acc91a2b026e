"""MFCC features for active speaker detection, in torch (batched, any device).

TalkNet and Light-ASD were trained on ``python_speech_features.mfcc(int16_samples, 16000,
numcep=13, winlen=0.025, winstep=0.010)``: 100 frames/s, 4 per 25 fps video frame. :func:`mfcc`
computes exactly that (to float rounding) without numpy or a Python loop over signals:

    pre-emphasis y[n] = x[n] - 0.97 x[n-1] (y[0] = x[0])
    frames of 400 samples every 160, the last one zero-padded; frame count
        1 if N <= 400 else 1 + ceil((N - 400) / 160)
    power spectrum |rfft_512(frame)|^2 / 512 (no window), 26 triangular mel filters
    log (zeros replaced by float64 eps), DCT-II (orthonormal), first 13, lifter 22
    coefficient 0 replaced by the log of the frame's total spectral power

Computation is in float64 by default (like numpy); the result is float32.
"""

from __future__ import annotations

import decimal
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..media import SAMPLE_RATE

__all__ = ["INT16_SCALE", "audio_for_asd", "mfcc"]

#: Full scale of 16-bit PCM: float samples in [-1, 1) times this are int16 values.
INT16_SCALE = 32768

# numpy.finfo(float).eps: what python_speech_features puts in place of zeros before the log.
_EPS = float(np.finfo(np.float64).eps)


def audio_for_asd(samples: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float samples in [-1, 1] -> float32 tensor of the int16 values the reference reads.

    The reference demo reads a 16-bit wav written by ffmpeg; ffmpeg converts float samples to s16
    as ``clip(round(x * 32768), -32768, 32767)`` (round half to even), and so does this function.
    Shape is kept (``[N]`` or ``[B,N]``).
    """
    samples = torch.as_tensor(samples)
    if not samples.is_floating_point():
        raise ValueError(
            f"samples must be float audio in [-1, 1], got dtype {samples.dtype}; int16 samples "
            "can go to mfcc() directly"
        )
    return torch.round(samples.to(torch.float32) * INT16_SCALE).clamp_(-INT16_SCALE, INT16_SCALE - 1)


def mfcc(
    samples: torch.Tensor | np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    numcep: int = 13,
    winlen: float = 0.025,
    winstep: float = 0.010,
    nfilt: int = 26,
    nfft: int = 512,
    lowfreq: float = 0.0,
    highfreq: float | None = None,
    preemph: float = 0.97,
    ceplifter: int = 22,
    append_energy: bool = True,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """MFCCs of ``samples [N]`` or ``[B,N]`` (int16 value scale) -> float32 ``[..., frames, numcep]``.

    Equals ``python_speech_features.mfcc`` with the same arguments (its defaults, plus
    ``winstep=0.010`` and ``numcep=13`` for ASD). Runs on the samples' device; pass
    ``compute_dtype=torch.float32`` where float64 is unavailable (e.g. Apple MPS).
    """
    signal = torch.as_tensor(samples)
    if signal.dim() not in (1, 2) or signal.shape[-1] == 0:
        raise ValueError(f"samples must be a non-empty [N] or [B, N] signal, got shape {list(signal.shape)}")
    highfreq = highfreq if highfreq else sample_rate / 2
    if highfreq > sample_rate / 2:
        raise ValueError(f"highfreq ({highfreq} Hz) must not exceed half the sample rate ({sample_rate / 2} Hz)")
    signal = signal.to(compute_dtype)

    if preemph:
        signal = torch.cat((signal[..., :1], signal[..., 1:] - preemph * signal[..., :-1]), dim=-1)

    frames = _frame(signal, _round_half_up(winlen * sample_rate), _round_half_up(winstep * sample_rate))
    power = torch.fft.rfft(frames, n=nfft).abs().square() / nfft
    energy = power.sum(dim=-1)
    energy = torch.where(energy == 0, _EPS, energy)

    filters = _mel_filterbank(nfilt, nfft, sample_rate, lowfreq, highfreq)
    bands = power @ filters.to(device=power.device, dtype=power.dtype).T
    bands = torch.where(bands == 0, _EPS, bands)

    dct = _dct_matrix(nfilt, numcep).to(device=power.device, dtype=power.dtype)
    cepstra = torch.log(bands) @ dct
    if ceplifter > 0:
        n = torch.arange(numcep, device=power.device, dtype=power.dtype)
        cepstra = cepstra * (1 + ceplifter / 2.0 * torch.sin(math.pi * n / ceplifter))
    if append_energy:
        cepstra[..., 0] = torch.log(energy)
    return cepstra.to(torch.float32)


def _frame(signal: torch.Tensor, frame_len: int, frame_step: int) -> torch.Tensor:
    """``[..., N]`` -> ``[..., frames, frame_len]``, zero-padding the end like python_speech_features."""
    length = signal.shape[-1]
    count = 1 if length <= frame_len else 1 + math.ceil((length - frame_len) / frame_step)
    padded_length = (count - 1) * frame_step + frame_len
    signal = F.pad(signal, (0, padded_length - length))
    return signal.unfold(-1, frame_len, frame_step)


def _round_half_up(value: float) -> int:
    # The reference rounds window sizes in seconds * rate this way (0.025 * 16000 = 400.00000000000006).
    return int(decimal.Decimal(value).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


@functools.lru_cache(maxsize=8)
def _mel_filterbank(nfilt: int, nfft: int, sample_rate: int, lowfreq: float, highfreq: float) -> torch.Tensor:
    """``[nfilt, nfft//2+1]`` triangles between mel-spaced FFT bins (floored, as the reference does)."""
    mels = np.linspace(_hz_to_mel(lowfreq), _hz_to_mel(highfreq), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mels) / sample_rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        left, centre, right = bins[j], bins[j + 1], bins[j + 2]
        for i in range(int(left), int(centre)):
            bank[j, i] = (i - left) / (centre - left)
        for i in range(int(centre), int(right)):
            bank[j, i] = (right - i) / (right - centre)
    return torch.from_numpy(bank)


@functools.lru_cache(maxsize=8)
def _dct_matrix(size: int, keep: int) -> torch.Tensor:
    """``[size, keep]`` orthonormal DCT-II: ``x @ M`` equals ``scipy.fftpack.dct(x, norm='ortho')[:keep]``."""
    n = np.arange(size)[:, None]
    k = np.arange(keep)[None, :]
    matrix = np.cos(np.pi * k * (2 * n + 1) / (2 * size)) * np.sqrt(2.0 / size)
    matrix[:, 0] = np.sqrt(1.0 / size)
    return torch.from_numpy(matrix)


def _hz_to_mel(hz: float | np.ndarray) -> float | np.ndarray:
    return 2595 * np.log10(1 + hz / 700.0)


def _mel_to_hz(mel: float | np.ndarray) -> float | np.ndarray:
    return 700 * (10 ** (mel / 2595.0) - 1)
