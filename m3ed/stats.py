"""Corpus statistics in the layout of the M3ED paper's Tables 2, 3 and 4.

Two sets of definitions (``definitions=``; also in the README):

``clean`` (exact counts):
- turn: a maximal run of consecutive utterances by one speaker within a dialogue;
- speakers: distinct (show, speaker name) pairs, i.e. named characters per show;
- utterance length: characters of the text, whitespace excluded;
- dialogue duration: the dialogue's span in its episode (relation file), else its last utterance's end;
- inter-turn shift / inertia: for each pair of consecutive turns, the last utterance of the first
  and the first utterance of the second have different / equal main emotions;
- intra-turn shift / inertia: the same for consecutive utterances inside one turn;
- blended: utterances with more than one final emotion;
- Fleiss' kappa: over utterances with exactly three annotators, each annotator's first label.
So inter-turn shift + inertia = turns - dialogues and intra-turn shift + inertia = utterances - turns.

``authors`` (what their ``preprocess/analyse_statistic.py`` computed for the paper):
- inter-turn: the *first* utterances of consecutive turns are compared;
- intra-turn: a turn is analysed when the next speaker starts, so each dialogue's last turn is never
  counted; and after a turn of two or more utterances the next turn starts from that turn's *last*
  emotion instead of its own first (their inner loop reuses the variable ``emo``);
- blended: combinations seen fewer than 5 times in the whole corpus are left out (their fixed list
  of rare combinations was made from the total counts);
- dialogue duration: from the first utterance's start to the last utterance's end.

Both add Table 4 (characters by age and gender) and the most frequent blended combinations.
"""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Sequence

from .corpus import EMOTIONS, SPLITS, Corpus, Dialogue, Utterance

DEFINITIONS = ("clean", "authors")
COUNT_KEYS = ("tv_series", "dialogues", "turns", "utterances", "speakers")
AVERAGE_KEYS = ("avg_turns_per_dialogue", "avg_utterances_per_turn", "avg_utterances_per_dialogue",
                "avg_utterance_length", "avg_dialogue_duration")
EMOTION_KEYS = ("inter_turn_shift", "inter_turn_inertia", "intra_turn_shift", "intra_turn_inertia",
                "blended", "fleiss_kappa")
AGES = ("child", "young", "mid", "old")
GENDERS = ("female", "male")
# Spellings in the release's SpeakerInfo (the authors' own map, lower-cased).
_AGE_SPELLINGS = {"child": "child", "young": "young", "yong": "young", "yound": "young", "mid": "mid", "old": "old"}
_GENDER_SPELLINGS = {"female": "female", "femal": "female", "male": "male"}
MIN_BLEND_COUNT = 5     # authors: rarer blended combinations are not counted
TOP_BLENDS = 5


def turns(dialogue: Dialogue) -> list[list[Utterance]]:
    return [list(group) for _, group in itertools.groupby(dialogue.utterances, key=lambda u: u.speaker)]


def blend(utterance: Utterance) -> str | None:
    """An utterance's blended combination, e.g. ``"anger,disgust"`` (main emotion first); None if single."""
    return ",".join(utterance.emotions) if len(utterance.emotions) > 1 else None


def inter_turn_pairs(dialogue: Dialogue, definitions: str = "clean") -> list[tuple[str, str]]:
    """Emotion pairs across consecutive turns: (last of one, first of next) or, ``authors``, (first, first)."""
    d_turns = turns(dialogue)
    first_of_previous = definitions == "authors"
    return [(d_turns[i][0 if first_of_previous else -1].emotion, d_turns[i + 1][0].emotion)
            for i in range(len(d_turns) - 1)]


def intra_turn_pairs(dialogue: Dialogue, definitions: str = "clean") -> list[tuple[str, str]]:
    """Emotion pairs of consecutive utterances inside turns (``authors``: their loop, see the module doc)."""
    if definitions == "clean":
        return [(t[i].emotion, t[i + 1].emotion) for t in turns(dialogue) for i in range(len(t) - 1)]
    pairs: list[tuple[str, str]] = []
    d_turns = turns(dialogue)
    carried = None                       # their stale ``emo``, replacing the next turn's first emotion
    for turn in d_turns[:-1]:            # the last turn is never analysed
        emotions = [u.emotion for u in turn]
        if carried is not None:
            emotions[0] = carried
        carried = None
        if len(emotions) > 1:
            previous = emotions[0]
            for emotion in emotions[1:]:
                pairs.append((previous, emotion))
                previous = emotion
            carried = emotions[-1]
    return pairs


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


def speaker_table(dialogues: Sequence[Dialogue]) -> dict:
    """Table 4: characters (show, name) by age and by gender; the first description seen counts.

    Unrecognised spellings are counted under ``other`` so that the totals always add up."""
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for d in dialogues:
        for key in sorted({u.speaker for u in d.utterances}):
            speaker = d.speakers.get(key)
            age = _AGE_SPELLINGS.get((speaker.age if speaker else "").strip().lower(), "other")
            gender = _GENDER_SPELLINGS.get((speaker.gender if speaker else "").strip().lower(), "other")
            seen.setdefault((d.show, d.speaker_name(key)), (age, gender))
    ages, genders = Counter(a for a, _ in seen.values()), Counter(g for _, g in seen.values())
    table = {"age": {a: ages[a] for a in AGES}, "gender": {g: genders[g] for g in GENDERS}}
    for part, counts in (("age", ages), ("gender", genders)):
        if counts["other"]:
            table[part]["other"] = counts["other"]
    return table


def rare_blends(corpus: Corpus) -> frozenset[str]:
    """Blended combinations seen fewer than MIN_BLEND_COUNT times in the whole corpus."""
    counts = Counter(b for d in corpus for u in d.utterances if (b := blend(u)))
    return frozenset(b for b, n in counts.items() if n < MIN_BLEND_COUNT)


def corpus_stats(corpus: Corpus, definitions: str = "clean", excluded_blends: frozenset[str] = frozenset()) -> dict:
    """Table 2, 3 and 4 numbers for one corpus (or split); ``excluded_blends``: ``authors`` only."""
    if definitions not in DEFINITIONS:
        raise ValueError(f"statistics definitions {definitions!r}: use {' or '.join(DEFINITIONS)}")
    authors = definitions == "authors"
    dialogues = list(corpus)
    utterances = [u for d in dialogues for u in d.utterances]
    n_dialogues, n_turns, n_utterances = len(dialogues), sum(len(turns(d)) for d in dialogues), len(utterances)
    inter = [pair for d in dialogues for pair in inter_turn_pairs(d, definitions)]
    intra = [pair for d in dialogues for pair in intra_turn_pairs(d, definitions)]
    blends = Counter(b for u in utterances if (b := blend(u)) and not (authors and b in excluded_blends))
    votes = [tuple(a[0] for a in u.annotations) for u in utterances
             if len(u.annotations) == 3 and all(u.annotations)]
    kappa = fleiss_kappa(votes)

    def mean(total: float, count: int) -> float:
        return round(total / count, 2) if count else 0.0

    def duration(d: Dialogue) -> float:
        if authors:
            return d.utterances[-1].end - d.utterances[0].start if d.utterances else 0.0
        return d.duration

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
        "avg_dialogue_duration": mean(sum(duration(d) for d in dialogues), n_dialogues),
        "inter_turn_shift": sum(a != b for a, b in inter),
        "inter_turn_inertia": sum(a == b for a, b in inter),
        "intra_turn_shift": sum(a != b for a, b in intra),
        "intra_turn_inertia": sum(a == b for a, b in intra),
        "blended": sum(blends.values()),
        "fleiss_kappa": round(kappa, 3) if kappa is not None else None,
        "emotions": {e: sum(u.emotion == e for u in utterances) for e in EMOTIONS},
        "speakers_by": speaker_table(dialogues),
        "top_blends": [[b, n] for b, n in sorted(blends.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_BLENDS]],
        "definitions": definitions,
    }


def split_stats(corpus: Corpus, definitions: str = "clean") -> dict[str, dict]:
    """``{"train": ..., "val": ..., "test": ..., "total": ...}``; rare blends come from the whole corpus."""
    excluded = rare_blends(corpus) if definitions == "authors" else frozenset()
    result = {split: corpus_stats(corpus.split(split), definitions, excluded) for split in SPLITS}
    result["total"] = corpus_stats(corpus, definitions, excluded)
    return result


def format_tables(stats: dict[str, dict]) -> str:
    """Tables 2, 3 and 4 and the top blended combinations as aligned plain text (columns: train,
    val, test, total)."""
    columns = list(stats)
    width = max(len(k) for k in COUNT_KEYS + AVERAGE_KEYS + EMOTION_KEYS) + 2
    definitions = stats[columns[-1]].get("definitions", "clean")

    def row(label: str, values) -> str:
        return label.ljust(width) + "".join(f"{_fmt(v):>10}" for v in values)

    lines = [f"Table 2: statistics ({definitions} definitions)", row("", columns)]
    lines += [row(k, [stats[c][k] for c in columns]) for k in COUNT_KEYS + AVERAGE_KEYS + EMOTION_KEYS]
    lines += ["", "Table 3: emotion distribution", row("", columns)]
    lines += [row(e, [stats[c]["emotions"][e] for c in columns]) for e in EMOTIONS]
    lines.append(row("total", [stats[c]["utterances"] for c in columns]))
    lines += ["", "Table 4: speakers (characters per show) by age and gender", row("", columns)]
    for part in ("age", "gender"):
        keys = list(dict.fromkeys(k for c in columns for k in stats[c]["speakers_by"][part]))
        lines += [row(f"{part}: {k}", [stats[c]["speakers_by"][part].get(k, 0) for c in columns]) for k in keys]
    total = stats[columns[-1]]
    lines += ["", f"Top blended emotion combinations ({columns[-1]})"]
    lines += [f"  {b:<{width - 2}}{n:>10,}" for b, n in total["top_blends"]] or ["  (none)"]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value < 1 else f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)
