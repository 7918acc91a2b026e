"""Corpus statistics in the layout of the M3ED paper's Tables 2 and 3.

Definitions (also in the README):
- turn: a maximal run of consecutive utterances by one speaker within a dialogue;
- speakers: distinct (show, speaker name) pairs, i.e. named characters per show;
- utterance length: characters of the text, whitespace excluded;
- dialogue duration: the dialogue's span in its episode (relation file), else its last utterance's end;
- inter-turn shift / inertia: for each pair of consecutive turns, the last utterance of the first
  and the first utterance of the second have different / equal main emotions;
- intra-turn shift / inertia: the same for consecutive utterances inside one turn;
- blended: utterances with more than one final emotion;
- Fleiss' kappa: over utterances with exactly three annotators, each annotator's first label.
Counts are exact, so inter-turn shift + inertia = turns - dialogues and intra-turn shift +
inertia = utterances - turns; the paper's intra-turn numbers do not add up to the latter.
"""
from __future__ import annotations

import itertools
from collections import Counter

from .corpus import EMOTIONS, SPLITS, Corpus, Dialogue, Utterance

COUNT_KEYS = ("tv_series", "dialogues", "turns", "utterances", "speakers")
AVERAGE_KEYS = ("avg_turns_per_dialogue", "avg_utterances_per_turn", "avg_utterances_per_dialogue",
                "avg_utterance_length", "avg_dialogue_duration")
EMOTION_KEYS = ("inter_turn_shift", "inter_turn_inertia", "intra_turn_shift", "intra_turn_inertia",
                "blended", "fleiss_kappa")


def turns(dialogue: Dialogue) -> list[list[Utterance]]:
    return [list(group) for _, group in itertools.groupby(dialogue.utterances, key=lambda u: u.speaker)]


def fleiss_kappa(ratings: list[tuple[str, ...]]) -> float | None:
    """Fleiss' kappa for items each rated by the same number of raters (None when undefined)."""
    if not ratings:
        return None
    raters = len(ratings[0])
    categories = sorted({label for item in ratings for label in item})
    counts = [Counter(item) for item in ratings]
    agreement = sum((sum(c[k] ** 2 for k in categories) - raters) / (raters * (raters - 1)) for c in counts) / len(ratings)
    shares = [sum(c[k] for c in counts) / (len(ratings) * raters) for k in categories]
    chance = sum(p * p for p in shares)
    return None if chance == 1 else (agreement - chance) / (1 - chance)


def corpus_stats(corpus: Corpus) -> dict:
    """Table 2 and Table 3 numbers for one corpus (or split)."""
    dialogues = list(corpus)
    utterances = [u for d in dialogues for u in d.utterances]
    all_turns = [turn for d in dialogues for turn in turns(d)]
    n_dialogues, n_turns, n_utterances = len(dialogues), len(all_turns), len(utterances)
    inter = [(d_turns[i][-1].emotion, d_turns[i + 1][0].emotion)
             for d_turns in (turns(d) for d in dialogues) for i in range(len(d_turns) - 1)]
    intra = [(turn[i].emotion, turn[i + 1].emotion) for turn in all_turns for i in range(len(turn) - 1)]
    votes = [tuple(a[0] for a in u.annotations) for u in utterances
             if len(u.annotations) == 3 and all(u.annotations)]
    kappa = fleiss_kappa(votes)

    def mean(total: float, count: int) -> float:
        return round(total / count, 2) if count else 0.0

    return {
        "tv_series": len({d.show for d in dialogues}),
        "dialogues": n_dialogues,
        "turns": n_turns,
        "utterances": n_utterances,
        "speakers": len({(d.show, d.speaker_name(u.speaker)) for d in dialogues for u in d.utterances}),
        "avg_turns_per_dialogue": mean(n_turns, n_dialogues),
        "avg_utterances_per_turn": mean(n_utterances, n_turns),
        "avg_utterances_per_dialogue": mean(n_utterances, n_dialogues),
        "avg_utterance_length": mean(sum(len("".join(u.text.split())) for u in utterances), n_utterances),
        "avg_dialogue_duration": mean(sum(d.duration for d in dialogues), n_dialogues),
        "inter_turn_shift": sum(a != b for a, b in inter),
        "inter_turn_inertia": sum(a == b for a, b in inter),
        "intra_turn_shift": sum(a != b for a, b in intra),
        "intra_turn_inertia": sum(a == b for a, b in intra),
        "blended": sum(len(u.emotions) > 1 for u in utterances),
        "fleiss_kappa": round(kappa, 3) if kappa is not None else None,
        "emotions": {e: sum(u.emotion == e for u in utterances) for e in EMOTIONS},
    }


def split_stats(corpus: Corpus) -> dict[str, dict]:
    """``{"train": ..., "val": ..., "test": ..., "total": ...}``."""
    result = {split: corpus_stats(corpus.split(split)) for split in SPLITS}
    result["total"] = corpus_stats(corpus)
    return result


def format_tables(stats: dict[str, dict]) -> str:
    """Both tables as aligned plain text (columns: train, val, test, total)."""
    columns = list(stats)
    width = max(len(k) for k in COUNT_KEYS + AVERAGE_KEYS + EMOTION_KEYS) + 2

    def row(label: str, values) -> str:
        return label.ljust(width) + "".join(f"{_fmt(v):>10}" for v in values)

    lines = ["Table 2: statistics", row("", columns)]
    lines += [row(k, [stats[c][k] for c in columns]) for k in COUNT_KEYS + AVERAGE_KEYS + EMOTION_KEYS]
    lines += ["", "Table 3: emotion distribution", row("", columns)]
    lines += [row(e, [stats[c]["emotions"][e] for c in columns]) for e in EMOTIONS]
    lines.append(row("total", [stats[c]["utterances"] for c in columns]))
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value < 1 else f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)
