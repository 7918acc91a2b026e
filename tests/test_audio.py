"""Audio stage: real tiny Wav2Vec2 models with a real feature-extractor config, real Mandarin speech."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from m3ed.corpus import Corpus, Dialogue, Utterance
from m3ed.errors import ConfigurationError
from m3ed.extract.audio import (FRAME, FT_LAST, MEAN, NO_AUDIO, AudioConfig, AudioEncoder, AudioStage, InputRule,
                               resolve_input_rule)
from m3ed.extract.batching import BatchBudget
from m3ed.extract.hf_models import XLSR_FEATURES, XLSR_TINY, ModelSpec, model_spec
from m3ed.locate import MediaSource, Timing
from m3ed.stage import RunContext, build_stage
from m3ed.profiles import ModelUnavailable, get_profile
from m3ed.store import FeatureStore

SPEECH = Path(__file__).parent / "data" / "mandarin_16k.wav"   # espeak-ng -v cmn-latn-pinyin, 5 s


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return read_wav(SPEECH)


@pytest.fixture(scope="module")
def tiny_audio(models_cache) -> ModelSpec:
    return model_spec(get_profile("tiny"), "audio")


@pytest.fixture(scope="module")
def encoder(tiny_audio) -> AudioEncoder:
    return AudioEncoder(tiny_audio, budget=BatchBudget(8, 16000 * 20))


def test_saved_model_has_the_xlsr_preprocessing(tiny_audio, encoder):
    assert Path(tiny_audio.name, "preprocessor_config.json").exists()
    assert encoder.features.do_normalize and encoder.use_mask and encoder.features.sampling_rate == 16000
    assert (encoder.field, encoder.hop, encoder.frame_rate) == (400, 320, 50.0)
    assert not encoder.budget.equal_length_only  # layer-norm front end + masks: lengths may be mixed


def test_batched_equals_one_by_one(encoder, speech):
    waves = [speech[:7000], speech[3000:40000], speech, speech[10000:10900]]
    batched = encoder.encode(waves)
    for w, together in zip(waves, batched):
        alone = encoder.encode([w])[0]
        assert together.shape == alone.shape == (encoder.num_frames(len(w)), 32)
        assert relative_error(together, alone) < 1e-4


def test_group_norm_models_are_never_padded(tmp_path, speech):
    # Base-style front end: GroupNorm over time and no attention mask, so padding would change features.
    config = Wav2Vec2Config(**{**XLSR_TINY, "feat_extract_norm": "group", "do_stable_layer_norm": False})
    Wav2Vec2Model(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(**{**XLSR_FEATURES, "return_attention_mask": False}).save_pretrained(tmp_path)
    group = AudioEncoder(ModelSpec(str(tmp_path)))
    assert group.budget.equal_length_only
    waves = [speech[:8000], speech[:20000], speech[5000:13000]]
    batched = group.encode(waves)
    for w, together in zip(waves, batched):
        assert relative_error(together, group.encode([w])[0]) < 1e-4
    padded = group.features([waves[0], waves[1]], sampling_rate=16000, padding=True, return_tensors="pt")
    naive = group.model(**padded).last_hidden_state[0, : len(batched[0])].detach().numpy()
    assert relative_error(naive, batched[0]) > 1e-3  # what equal-length batching avoids


def test_very_short_and_very_long_audio(encoder, speech):
    short, = encoder.encode([speech[8000:8160]])             # 0.01 s: padded to one receptive field
    assert short.shape == (1, 32) and np.isfinite(short).all()
    long_wave = np.tile(speech, 36)[: 180 * 16000]              # 3 minutes: 30 s windows
    frames, = encoder.encode([long_wave])
    assert frames.shape == (encoder.num_frames(len(long_wave)), 32) and np.isfinite(frames).all()
    # Frames well inside the first window are those of the first 30 s alone.
    assert relative_error(frames[100:500], encoder.encode([long_wave[: 30 * 16000]])[0][100:500]) < 1e-4


def dialogue_on(media: Path, dialogue_id: str, spans: list[tuple[float, float]]) -> Dialogue:
    utterances = tuple(Utterance(f"{dialogue_id}_{i}", dialogue_id, "A", s, e, "好") for i, (s, e) in enumerate(spans, 1))
    return Dialogue(dialogue_id, "show", utterances, video=str(media))


def context(tmp_path: Path, dialogues: list[Dialogue]) -> RunContext:
    return RunContext(Corpus(tuple(dialogues)), MediaSource(None, timing=Timing(audio_shift=0.0)),
                      FeatureStore(tmp_path / "out"), get_profile("tiny"))


def test_stage_decodes_once_and_reports_per_utterance(tmp_path, tiny_audio, speech):
    good = dialogue_on(SPEECH, "d1", [(0.2, 1.4), (1.5, 1.51), (2.0, 4.9), (9.0, 10.0)])
    missing = dialogue_on(tmp_path / "nowhere.mp4", "d2", [(0.0, 1.0)])
    stage = AudioStage(AudioConfig(tiny_audio, mean_max_seconds=1.0))
    try:
        results = list(stage.process([good, missing], context(tmp_path, [good, missing])))
    finally:
        stage.close()
    first, second = results
    frames = first.features[FRAME]
    assert frames["d1_1"].shape == (stage.encoder("base").num_frames(round(1.2 * 16000)), 32)
    assert frames["d1_2"].shape == (1, 32)                       # 10 ms, padded to 400 samples
    clipped = stage.encoder("base").encode([speech[32000:48000]])[0]   # d1_3 clipped to its first 1 s
    np.testing.assert_allclose(first.features[MEAN]["d1_3"], clipped.mean(axis=0), rtol=1e-4, atol=1e-5)
    assert "d1_4" not in frames and {f.reason for f in first.failures} == {NO_AUDIO}
    assert second.error and "d2" in second.error and "nowhere" in second.error
    np.testing.assert_allclose(frames["d1_1"], stage.encoder("base").encode([speech[3200:22400]])[0], rtol=1e-4, atol=1e-5)


def authors_normalise(wave: np.ndarray) -> np.ndarray:
    """Wav2Vec2Processor with do_normalize, on one whole waveform: zero mean, unit variance (eps 1e-7)."""
    return (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)


def authors_last_step(directory: str, wave: np.ndarray) -> np.ndarray:
    """The authors' fine-tuned feature (chmed_wav2vec_dataset + Wav2VecDNNModel, embd_method 'last'): the
    processor normalises the whole utterance, then it is zero-padded or clipped to 4 * 16000 samples, and
    the encoder runs on it without an attention mask; the feature is the last time step."""
    x = authors_normalise(wave)
    x = x[: 4 * 16000] if len(x) >= 4 * 16000 else np.concatenate([x, np.zeros(4 * 16000 - len(x))])
    model = Wav2Vec2Model.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(torch.tensor(x, dtype=torch.float32)[None]).last_hidden_state[0, -1].numpy()


def test_fine_tuned_last_step_is_the_authors_by_default(tmp_path, tiny_audio, speech):
    clip = dialogue_on(SPEECH, "d1", [(0.2, 1.4), (0.5, 4.9)])       # 1.2 s (padded) and 4.4 s (clipped)
    stage = AudioStage(AudioConfig(tiny_audio, finetuned=tiny_audio.name))   # no rule recorded: the authors'
    result, = stage.process([clip], context(tmp_path, [clip]))
    stage.close()
    assert stage.feature_sets == (FRAME, MEAN, FT_LAST) and stage.ft_rule == InputRule(4.0)
    for uid, samples in (("d1_1", speech[3200:22400]), ("d1_2", speech[8000:78400])):
        theirs = authors_last_step(tiny_audio.name, samples)
        np.testing.assert_allclose(result.features[FT_LAST][uid], theirs, rtol=1e-4, atol=1e-4)
    # The rule before this fix (pad or clip the raw wave, then normalise the padded signal) is another input.
    padded_first = np.pad(speech[3200:22400], (0, 4 * 16000 - 19200))
    old = AudioEncoder(tiny_audio).encode([padded_first])[0][-1]
    assert relative_error(old, authors_last_step(tiny_audio.name, speech[3200:22400])) > 1e-3
    assert not stage._encoders  # close() released the models


def test_input_rule_by_hand():
    wave = np.arange(1, 6, dtype=np.float32)
    assert InputRule(seconds=6 / 16000).apply(wave).tolist() == [1, 2, 3, 4, 5, 0]       # zero-padded
    assert InputRule(seconds=3 / 16000).apply(wave).tolist() == [1, 2, 3]                # clipped
    assert InputRule(seconds=0, max_seconds=2 / 16000).apply(wave).tolist() == [1, 2]    # clipped, never padded
    assert InputRule(seconds=0).apply(wave).tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        InputRule(seconds=-1)


def test_input_rule_of_checkpoints_that_do_not_record_one(tmp_path):
    assert InputRule.of_checkpoint(tmp_path) is None                        # made elsewhere
    assert resolve_input_rule(str(tmp_path), None) == InputRule(4.0)        # the authors' rule
    assert resolve_input_rule(str(tmp_path), 0) == InputRule(0.0)           # the whole utterance, as asked
    (tmp_path / "finetune.json").write_text('{"config": {"max_seconds": 10.0}}')  # m3ed, before rules were recorded
    assert resolve_input_rule(str(tmp_path), None) == InputRule(0.0, 10.0)  # what it was trained on


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_mean_clips_the_waveform_before_encoding_like_the_authors(tmp_path, tiny_audio, speech):
    long_wave = read_wav(write_wav(tmp_path / "long.wav", np.concatenate([speech, speech[::-1], speech])[:12 * 16000]))
    clip = dialogue_on(tmp_path / "long.wav", "d1", [(0.0, 12.0), (1.0, 3.0)])
    means = {}
    for mode in ("before", "after"):
        stage = AudioStage(AudioConfig(tiny_audio, mean_clip=mode) if mode == "after" else AudioConfig(tiny_audio))
        result, = stage.process([clip], context(tmp_path, [clip]))
        stage.close()
        means[mode] = result.features[MEAN]
    frames = result.features[FRAME]["d1_1"]
    # The authors' read_audio: longer than 10 s -> speech[:int(16000 * 10)]; the processor and the model on that.
    model = Wav2Vec2Model.from_pretrained(tiny_audio.name).eval()
    with torch.no_grad():
        theirs = model(torch.tensor(authors_normalise(long_wave[:160000]), dtype=torch.float32)[None]).last_hidden_state
    np.testing.assert_allclose(means["before"]["d1_1"], theirs[0].numpy().mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(means["after"]["d1_1"], frames[:500].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert frames.shape[0] > 500 and relative_error(means["before"]["d1_1"], means["after"]["d1_1"]) > 1e-3
    np.testing.assert_allclose(means["before"]["d1_2"], means["after"]["d1_2"], rtol=1e-5, atol=1e-6)  # 2 s: same


def test_mean_alone_encodes_only_the_clip_it_averages(tmp_path, tiny_audio, speech):
    """--audio-sets wav2vec2_mean: the same means, from 10 s of model input for a 12 s utterance."""
    write_wav(tmp_path / "long.wav", np.concatenate([speech, speech[::-1], speech])[:12 * 16000])
    clip = dialogue_on(tmp_path / "long.wav", "d1", [(0.0, 12.0), (1.0, 3.0)])
    seen, results = {}, {}
    for sets in (None, (MEAN,)):
        stage = AudioStage(AudioConfig(tiny_audio, sets=sets))
        samples = []   # the real (unpadded) samples that reach the model, counted by a forward hook
        stage.encoder("base").model.register_forward_hook(
            lambda m, args, kw, out: samples.append(int(kw["attention_mask"].sum())), with_kwargs=True)
        results[sets], = stage.process([clip], context(tmp_path, [clip]))
        stage.close()
        seen[sets] = sum(samples)
    assert stage.feature_sets == (MEAN,) and list(results[(MEAN,)].features) == [MEAN]
    for u in ("d1_1", "d1_2"):
        np.testing.assert_allclose(results[(MEAN,)].features[MEAN][u], results[None].features[MEAN][u], rtol=1e-4, atol=1e-5)
    assert seen[(MEAN,)] <= (10 + 2) * 16000 < (12 + 10 + 2) * 16000 <= seen[None]
    with pytest.raises(ConfigurationError, match="wav2vec2_ft_last needs --audio-finetuned"):
        AudioConfig(tiny_audio, sets=(FT_LAST,))


def test_missing_and_corrupted_models_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="--audio-model"):
        AudioEncoder(ModelSpec("m3ed-tests/never-cached-wav2vec2"))
    (tmp_path / "config.json").write_text('{"model_type": "wav2vec2"}')
    (tmp_path / "preprocessor_config.json").write_text("{broken")
    with pytest.raises(ModelUnavailable, match=str(tmp_path)):
        AudioEncoder(ModelSpec(str(tmp_path)))


def test_command_line_options_reach_the_stage(tmp_path, models_cache):
    from m3ed.pipelines.cli import build_extract_parser, config_from_args

    parser = build_extract_parser()
    defaults = build_stage("audio", config_from_args(parser.parse_args([])).audio, context(tmp_path, []))
    assert (defaults.config.mean_max_seconds, defaults.config.mean_clip, defaults.config.ft_seconds) == (10.0, "before", None)
    args = parser.parse_args(["--audio-mean-max-seconds", "0", "--audio-ft-seconds", "4", "--audio-mean-clip", "after"])
    stage = build_stage("audio", config_from_args(args).audio, context(tmp_path, []))
    assert (stage.config.mean_max_seconds, stage.config.ft_seconds, stage.config.chunk_seconds) == (0.0, 4.0, 30.0)
    assert stage.config.mean_clip == "after" and stage.provenance()["mean_clip"] == "after"
    assert stage.feature_sets == (FRAME, MEAN) and stage.provenance()["mean_max_seconds"] == 0.0
