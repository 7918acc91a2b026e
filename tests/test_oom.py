"""A batch that runs out of accelerator memory is retried in halves before anything fails."""
import numpy as np
import pytest
import torch

from m3ed.extract.batching import split_on_oom
from m3ed.extract.hf_models import model_spec
from m3ed.extract.text import TextEncoder
from m3ed.profiles import get_profile

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SENTENCES = ["你好。", "我们明天去北京吧！", "张姐，项目出问题了。", "好"]


def test_halves_until_the_batch_fits():
    calls = []

    def run(items):
        calls.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return [x * 10 for x in items]

    assert split_on_oom(run, [1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
    assert calls == [5, 2, 3, 1, 2]


def test_one_item_that_does_not_fit_raises():
    def run(items):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    with pytest.raises(torch.OutOfMemoryError):
        split_on_oom(run, [1, 2])


def test_text_encoder_survives_injected_oom(models_cache, monkeypatch):
    encoder = TextEncoder(model_spec(get_profile("tiny"), "text"))
    expected = encoder.encode(SENTENCES, list("abcd"))
    forward = encoder.model.forward
    sizes = []

    def small_batches_only(*args, **kwargs):
        batch = kwargs["input_ids"].shape[0]
        sizes.append(batch)
        if batch > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(encoder.model, "forward", small_batches_only)
    got = encoder.encode(SENTENCES, list("abcd"))
    assert max(sizes) > 1 and sizes.count(1) == len(SENTENCES)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.hidden, b.hidden, atol=1e-5)
