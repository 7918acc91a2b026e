"""A synthetic feature directory in our format, with dialogue structure, for tests and demos.

``m3ed make-synthetic --out DIR`` writes what ``m3ed extract`` writes (``manifest.jsonl`` via
:meth:`Corpus.to_jsonl`, ``features/{set}.h5`` via :meth:`FeatureStore.write_part` + ``publish``,
``failures.jsonl``, ``run.json``), with the feature sets of DESIGN §4 at chosen dimensions:

* Dialogues of two speakers, A and B, grouped into synthetic shows; the split is by show
  (TV-independent: no show in two splits), about 70/13/17 % of the shows.
* Emotional inertia: a speaker keeps their previous emotion with probability ``inertia``, else
  draws one from an M3ED-like prior (neutral most frequent, fear and disgust rare). An utterance
  alone is therefore weak evidence, its speaker's earlier utterances strong evidence.
* Features carry a noisy label signal: ``x = s_m * prototype_m[label] + show bias + speaker bias +
  noise``, the signal ``s_m`` set so that one utterance gives a modest accuracy (text and audio
  stronger than visual). ``*_mean`` sets are the means of the ``*_frame`` sets' frames (as in the
  real extractors); ``roberta_ft_cls`` / ``wav2vec2_ft_last`` carry a stronger signal, like the
  fine-tuned features. About ``visual_missing`` of the utterances have no face: no visual key, and
  a line in ``failures.jsonl``, like the real pipeline.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .catalogue import downstream_sets, spec
from .corpus import EMOTIONS, Corpus, Dialogue, Speaker, Utterance, utterance_id
from .store import Failure, FeatureStore, config_hash

__all__ = ["SyntheticConfig", "make_synthetic"]

# An M3ED-like class prior (the corpus's label distribution, rounded), in EMOTIONS order.
EMOTION_PRIOR = (0.13, 0.40, 0.13, 0.05, 0.16, 0.04, 0.09)
# Single-utterance separability per modality (pairwise distance of class means / noise).
SIGNAL = {"l": 0.9, "a": 1.0, "v": 0.7}
FINETUNED_GAIN = 1.3
FRAME_COUNTS = {"l": (4, 16), "a": (6, 24), "v": (3, 12)}      # uniform ranges of T per utterance
FRAME_NOISE = 2.0    # per frame; the mean of T frames has noise 2/sqrt(T), about that of the pooled sets
def _set_names(letter: str) -> tuple[str, str, str | None]:
    """(frame-level set, pooled set, fine-tuned set or None) of a modality, from the catalogue."""
    utterance = [spec(name) for name in downstream_sets(letter, "utterance")]
    pooled = next(s.name for s in utterance if not s.finetuned)
    tuned = next((s.name for s in utterance if s.finetuned), None)
    return downstream_sets(letter, "frame")[0], pooled, tuned


SET_NAMES = {m: _set_names(m) for m in "lav"}


@dataclass
class SyntheticConfig:
    dialogues: int = 200
    seed: int = 0
    dims: tuple[int, int, int] = (64, 64, 32)          # text, audio, visual (M3ED: 768, 1024, 342)
    min_utterances: int = 8
    max_utterances: int = 40                           # mean ~24, like M3ED's 24.7
    dialogues_per_show: int = 10
    inertia: float = 0.9
    turn_switch: float = 0.4                           # probability the next utterance is the other speaker's
    visual_missing: float = 0.1
    frames: bool = True                                # also write the frame-level sets

    def __post_init__(self) -> None:
        self.dims = tuple(int(d) for d in self.dims)
        if len(self.dims) != 3 or min(self.dims) < 1:
            raise ValueError(f"dims {self.dims}: give three positive sizes (text, audio, visual)")
        if self.dialogues < 3:
            raise ValueError(f"dialogues {self.dialogues}: need at least 3 (one per split)")
        if not 1 <= self.min_utterances <= self.max_utterances:
            raise ValueError(f"utterances per dialogue: need 1 <= min ({self.min_utterances}) <= max ({self.max_utterances})")


def _labels(rng: np.random.Generator, speakers: list[str], inertia: float) -> list[int]:
    prior = np.asarray(EMOTION_PRIOR) / sum(EMOTION_PRIOR)
    last: dict[str, int] = {}
    labels = []
    for speaker in speakers:
        if speaker in last and rng.random() < inertia:
            label = last[speaker]
        else:
            label = int(rng.choice(len(prior), p=prior))
        last[speaker] = label
        labels.append(label)
    return labels


def _speakers(rng: np.random.Generator, n: int, switch: float) -> list[str]:
    current = "A" if rng.random() < 0.5 else "B"
    out = []
    for i in range(n):
        if i and rng.random() < switch:
            current = "B" if current == "A" else "A"
        out.append(current)
    return out


def _build_corpus(config: SyntheticConfig, rng: np.random.Generator) -> Corpus:
    shows = max(3, -(-config.dialogues // config.dialogues_per_show))
    order = rng.permutation(shows)
    n_val = max(1, round(0.13 * shows))
    n_train = min(max(1, round(0.70 * shows)), shows - n_val - 1)     # every split gets a show
    split_of = {}
    for rank, show in enumerate(order):
        split_of[int(show)] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    dialogues = []
    for k in range(config.dialogues):
        show_index = k % shows
        show = f"synshow{show_index:02d}"
        dialogue_id = f"{show}_{k // shows + 1}"
        n = int(rng.integers(config.min_utterances, config.max_utterances + 1))
        speakers = _speakers(rng, n, config.turn_switch)
        labels = _labels(rng, speakers, config.inertia)
        t, utterances = 0.0, []
        for i, (speaker, label) in enumerate(zip(speakers, labels), 1):
            duration = float(np.round(rng.uniform(0.8, 5.0), 2))
            utterances.append(Utterance(
                id=utterance_id(dialogue_id, i), dialogue_id=dialogue_id, speaker=speaker,
                start=round(t, 2), end=round(t + duration, 2), text=f"synthetic utterance {i}",
                emotion=EMOTIONS[label], emotions=(EMOTIONS[label],)))
            t += duration + 0.2
        people = {key: Speaker(key, name=f"{show}_person_{key}_{k % 3}") for key in ("A", "B")}
        dialogues.append(Dialogue(id=dialogue_id, show=show, utterances=tuple(utterances), speakers=people,
                                  split=split_of[show_index], start=None, end=None))
    return Corpus(tuple(dialogues))


class _Generator:
    """Draws each dialogue's features; all randomness from one seeded generator, in corpus order."""

    def __init__(self, config: SyntheticConfig, rng: np.random.Generator):
        self.config, self.rng = config, rng
        self.dims = dict(zip("lav", config.dims))
        self.prototypes = {m: rng.standard_normal((len(EMOTIONS), d)).astype(np.float32)
                           for m, d in self.dims.items()}
        self.scale = {m: SIGNAL[m] / np.sqrt(2 * d) for m, d in self.dims.items()}
        self.bias: dict[tuple[str, str], np.ndarray] = {}

    def _bias(self, key: str, m: str, size: float) -> np.ndarray:
        if (key, m) not in self.bias:
            self.bias[key, m] = (size * self.rng.standard_normal(self.dims[m])).astype(np.float32)
        return self.bias[key, m]

    def dialogue(self, dialogue: Dialogue) -> tuple[dict[str, dict[str, np.ndarray]], list[Failure]]:
        arrays: dict[str, dict[str, np.ndarray]] = {name: {} for names in SET_NAMES.values()
                                                    for name in names if name}
        failures = []
        rng = self.rng
        for u in dialogue.utterances:
            for m, (frame_set, mean_set, ft_set) in SET_NAMES.items():
                if m == "v" and rng.random() < self.config.visual_missing:
                    failures += [Failure(name, dialogue.id, u.id, "no face of the speaker found (synthetic)")
                                 for name in (frame_set, mean_set) if self.config.frames or name == mean_set]
                    continue
                d = self.dims[m]
                base = (self.scale[m] * self.prototypes[m][u.label]
                        + self._bias(dialogue.show, m, 0.15)
                        + self._bias(dialogue.speakers[u.speaker].name, m, 0.15))
                if self.config.frames:
                    low, high = FRAME_COUNTS[m]
                    t = int(rng.integers(low, high + 1))
                    frames = base + FRAME_NOISE * rng.standard_normal((t, d))
                    arrays[frame_set][u.id] = frames.astype(np.float32)
                    arrays[mean_set][u.id] = frames.mean(0).astype(np.float32)
                else:
                    arrays[mean_set][u.id] = (base + rng.standard_normal(d)).astype(np.float32)
                if ft_set:
                    ft = FINETUNED_GAIN * self.scale[m] * self.prototypes[m][u.label] + rng.standard_normal(d)
                    arrays[ft_set][u.id] = ft.astype(np.float32)
        if not self.config.frames:
            arrays = {name: values for name, values in arrays.items() if not name.endswith("_frame")}
        return arrays, failures


def make_synthetic(out_dir: str | Path, config: SyntheticConfig | None = None, *, verbose: bool = False) -> Corpus:
    """Write a synthetic feature directory to ``out_dir``; returns its corpus."""
    config = config or SyntheticConfig()
    rng = np.random.default_rng(config.seed)
    corpus = _build_corpus(config, rng)
    store = FeatureStore(out_dir)
    store.write_manifest(corpus)
    digest = config_hash(asdict(config))
    generator = _Generator(config, rng)
    failures: list[Failure] = []
    set_names: set[str] = set()
    for dialogue in corpus:
        arrays, lost = generator.dialogue(dialogue)
        failures += lost
        for name, values in arrays.items():
            set_names.add(name)
            if not store.is_done(name, dialogue.id, digest):   # a re-run after a full disk resumes
                store.write_part(name, dialogue.id, values, [f for f in lost if f.feature_set == name],
                                 config=digest)
    for name in sorted(set_names):
        store.publish(name, corpus, {"model_id": "synthetic", "synthetic": True, "config_hash": digest,
                                     "level": "frame" if name.endswith("_frame") else "utterance"})
        store.remove_parts(name)
    store.write_failures(failures)
    store.write_run({"command": "make-synthetic", "config": asdict(config), "package_version": __version__,
                     "feature_sets": sorted(set_names)})
    if verbose:
        counts = {s: sum(d.split == s for d in corpus) for s in ("train", "val", "test")}
        print(f"wrote {out_dir}: {len(corpus)} dialogues ({json.dumps(counts)}), "
              f"{sum(len(d.utterances) for d in corpus)} utterances, feature sets {', '.join(sorted(set_names))}; "
              f"{len(failures)} missing visual features recorded in failures.jsonl")
    return corpus
