"""ASD memory stays bounded on long pieces: the front-ends run chunk by chunk, with each chunk widened
by the front-end's temporal receptive field, TalkNet's attention a chunk of queries at a time, and
they give the one-pass values.

A small ``max_frames_per_pass`` makes short inputs long pieces, so this runs in seconds; the
halos are tight (one frame less of context moves the logits by 2e-4 to 6e-2, against a tolerance of
1e-5), so a wrong one fails the equality at once.
"""
from __future__ import annotations

import pytest
import torch

from m3ed.models.light_asd import _AUDIO_CONTEXT_FRAMES, _VISUAL_CONTEXT_FRAMES, LightASD
from m3ed.models.talknet import _VISUAL_FRONTEND_CONTEXT_FRAMES, TalkNet
from m3ed.weights import light_asd_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHUNK = 8   # frames; pieces of 20 and 40 frames run in 3 and 5 chunks with interior boundaries


@pytest.fixture(scope="module")
def light_asd() -> LightASD:
    return LightASD.from_checkpoint(light_asd_checkpoint())


@pytest.fixture(scope="module")
def talknet() -> TalkNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TalkNet().eval()


def _inputs(frames: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(frames)
    mfcc = torch.randn(batch, 4 * frames, 13, generator=generator) * 10
    video = torch.randint(0, 256, (batch, frames, 112, 112), generator=generator).float()
    return mfcc, video


@pytest.mark.parametrize("name, method", [("light_asd", "fused_logits"), ("light_asd", "logits"),
                                          ("talknet", "logits")])
def test_chunked_front_ends_give_the_one_pass_logits(name, method, request, monkeypatch):
    model = request.getfixturevalue(name)
    mfcc, video = _inputs(20)
    with torch.inference_mode():
        whole = getattr(model, method)(mfcc, video)
        monkeypatch.setattr(model, "max_frames_per_pass", CHUNK)
        chunked = getattr(model, method)(mfcc, video)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_light_asd_visual_logits_are_chunked_too(light_asd, monkeypatch):
    _, video = _inputs(20)
    with torch.inference_mode():
        whole = light_asd.visual_logits(video)
        monkeypatch.setattr(light_asd, "max_frames_per_pass", CHUNK)
        torch.testing.assert_close(light_asd.visual_logits(video), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("frames", [CHUNK, 20, 40])
def test_no_front_end_pass_grows_with_the_piece(frames, light_asd, talknet, monkeypatch):
    """What bounds the memory: every front-end pass holds at most a chunk and its two halos, every
    attention pass a chunk of queries; a piece of at most one chunk takes one pass, as before."""
    seen: dict[str, list[int]] = {"visual": [], "audio": [], "talknet visual": [], "talknet attention": []}
    hooks = [(light_asd.model.visualEncoder.pool1, "visual", lambda x: x.shape[2]),    # [B,C,T,h,w]
             (light_asd.model.audioEncoder, "audio", lambda x: x.shape[3] // 4),       # [B,1,13,4T]
             (talknet.model.visualFrontend, "talknet visual", lambda x: x.shape[1]),   # [B,T,H,W]
             (talknet.model.selfAV.self_attn, "talknet attention", lambda x: x.shape[1])]  # queries [B,T,D]
    handles = [module.register_forward_pre_hook(lambda _, inputs, key=key, frames_of=frames_of:
                                                seen[key].append(frames_of(inputs[0])))
               for module, key, frames_of in hooks]
    mfcc, video = _inputs(frames, batch=1)
    try:
        with torch.inference_mode():
            for model in (light_asd, talknet):
                monkeypatch.setattr(model, "max_frames_per_pass", CHUNK)
            light_asd.fused_logits(mfcc, video)
            light_asd.logits(mfcc, video)
            talknet.logits(mfcc, video)
    finally:
        for handle in handles:
            handle.remove()
    passes = -(-frames // CHUNK)
    assert [len(s) for s in seen.values()] == [2 * passes, 2 * passes, passes, passes]
    assert max(seen["visual"]) <= CHUNK + 2 * _VISUAL_CONTEXT_FRAMES
    assert max(seen["audio"]) <= CHUNK + 2 * _AUDIO_CONTEXT_FRAMES
    assert max(seen["talknet visual"]) <= CHUNK + 2 * _VISUAL_FRONTEND_CONTEXT_FRAMES
    assert max(seen["talknet attention"]) <= CHUNK
