"""``m3ed stats``: both definitions on hand-made dialogues whose expected counts are traced by hand
through the authors' ``preprocess/analyse_statistic.py`` loops (and through the clean definitions)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from m3ed.corpus import Corpus, Dialogue, Speaker, Utterance
from m3ed.pipelines.cli import main
from m3ed.stats import corpus_stats, format_tables, split_stats


def dialogue(did: str, turns: list[tuple[str, list[str]]], show: str = "show", split: str = "train",
             blends: dict[int, tuple[str, ...]] | None = None, span: tuple[float, float] | None = None,
             speakers: dict[str, Speaker] | None = None) -> Dialogue:
    """Utterances of 2 s each, 1 s apart, starting at 1.0 s; ``blends``: index -> all final emotions."""
    utterances, index = [], 0
    for speaker, emotions in turns:
        for emotion in emotions:
            all_emotions = (blends or {}).get(index, (emotion,))
            utterances.append(Utterance(id=f"{did}_{index + 1}", dialogue_id=did, speaker=speaker,
                                        start=1.0 + 3 * index, end=3.0 + 3 * index, text="你好 吗",
                                        emotion=emotion, emotions=all_emotions))
            index += 1
    start, end = span or (None, None)
    return Dialogue(id=did, show=show, utterances=tuple(utterances), split=split, start=start, end=end,
                    speakers=speakers or {"A": Speaker("A", "甲"), "B": Speaker("B", "乙")})


# A: happy sad sad | B: neutral sad | A: sad happy
TRACED = dialogue("d_1", [("A", ["happy", "sad", "sad"]), ("B", ["neutral", "sad"]), ("A", ["sad", "happy"])],
                  span=(100.0, 130.0))


def test_inter_turn_authors_compare_first_utterances() -> None:
    # Their loop: pre_emo = first emotion; at each speaker change compare the new utterance with
    # pre_emo (the previous turn's FIRST), then pre_emo = new.  firsts: happy, neutral, sad
    # -> (happy, neutral) shift, (neutral, sad) shift.
    authors = corpus_stats(Corpus((TRACED,)), "authors")
    assert (authors["inter_turn_shift"], authors["inter_turn_inertia"]) == (2, 0)
    # Clean: (last sad, neutral) shift, (last sad, first sad) inertia.
    clean = corpus_stats(Corpus((TRACED,)), "clean")
    assert (clean["inter_turn_shift"], clean["inter_turn_inertia"]) == (1, 1)


def test_intra_turn_authors_skip_the_last_turn_and_keep_the_stale_variable() -> None:
    # Their loop: turn [happy, sad, sad] analysed when B starts: (happy, sad) shift, (sad, sad)
    # inertia; the inner loop leaves emo = sad, so B's turn starts as [sad] instead of [neutral].
    # B's turn [sad, sad] analysed when A returns: inertia. The last turn is never analysed.
    authors = corpus_stats(Corpus((TRACED,)), "authors")
    assert (authors["intra_turn_shift"], authors["intra_turn_inertia"]) == (1, 2)
    # Their total = utterances - turns - (length of the last turn - 1) = 7 - 3 - 1.
    assert authors["intra_turn_shift"] + authors["intra_turn_inertia"] == 7 - 3 - 1
    # Clean: (happy, sad) S, (sad, sad) I, (neutral, sad) S, (sad, happy) S.
    clean = corpus_stats(Corpus((TRACED,)), "clean")
    assert (clean["intra_turn_shift"], clean["intra_turn_inertia"]) == (3, 1)
    assert clean["intra_turn_shift"] + clean["intra_turn_inertia"] == 7 - 3


def test_a_single_utterance_turn_carries_nothing() -> None:
    # A: [happy] | B: [sad, sad] | A: [happy]. len(turn_emos) == 1, so the inner loop does not run
    # and emo is still B's first utterance: B's turn is [sad, sad] -> one inertia.
    d = dialogue("d_1", [("A", ["happy"]), ("B", ["sad", "sad"]), ("A", ["happy"])])
    authors = corpus_stats(Corpus((d,)), "authors")
    assert (authors["intra_turn_shift"], authors["intra_turn_inertia"]) == (0, 1)


def test_rare_blends_are_excluded_over_the_whole_corpus() -> None:
    # 5 x anger,disgust (3 in train, 2 in test) are kept; 4 x sad,fear (< 5 in total) are not.
    ad = {i: ("anger", "disgust") for i in range(3)}
    sf = {3: ("sad", "fear"), 4: ("sad", "fear")}
    train = dialogue("a_1", [("A", ["anger"] * 3 + ["sad"] * 2)], show="a", blends={**ad, **sf})
    test = dialogue("b_1", [("A", ["anger"] * 2 + ["sad"] * 2)], show="b", split="test",
                    blends={0: ("anger", "disgust"), 1: ("anger", "disgust"), 2: ("sad", "fear"), 3: ("sad", "fear")})
    corpus = Corpus((train, test))
    authors, clean = split_stats(corpus, "authors"), split_stats(corpus, "clean")
    assert (authors["train"]["blended"], authors["test"]["blended"], authors["total"]["blended"]) == (3, 2, 5)
    assert (clean["train"]["blended"], clean["total"]["blended"]) == (5, 9)
    assert authors["total"]["top_blends"] == [["anger,disgust", 5]]
    assert clean["total"]["top_blends"] == [["anger,disgust", 5], ["sad,fear", 4]]


def test_dialogue_duration_authors_from_utterance_times() -> None:
    # Utterances 1.0-3.0 ... 19.0-21.0: their duration is last end - first start = 20 s; the
    # relation file's span (100-130 s) gives 30 s.
    assert corpus_stats(Corpus((TRACED,)), "authors")["avg_dialogue_duration"] == 20.0
    assert corpus_stats(Corpus((TRACED,)), "clean")["avg_dialogue_duration"] == 30.0


def test_table4_counts_characters_once_with_the_release_spellings() -> None:
    people = {"A": Speaker("A", "甲", gender="Femal", age="Yong"), "B": Speaker("B", "乙", gender="male", age="old")}
    first = dialogue("s_1", [("A", ["happy"]), ("B", ["sad"])], speakers=people)
    again = dialogue("s_2", [("A", ["happy"]), ("B", ["sad"])], speakers=people)
    elsewhere = dialogue("t_1", [("A", ["happy"])], show="other",
                         speakers={"A": Speaker("A", "甲", gender="Female", age="mid")})
    table = corpus_stats(Corpus((first, again, elsewhere)))["speakers_by"]
    assert table == {"age": {"child": 0, "young": 1, "mid": 1, "old": 1}, "gender": {"female": 2, "male": 1}}


def test_unknown_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="clean or authors"):
        corpus_stats(Corpus((TRACED,)), "paper")


def test_cli_defaults_to_the_authors_definitions(tmp_path: Path, sample_paths, capsys) -> None:
    args = ["stats", "--annotations", str(sample_paths["annotations"]), "--relation", str(sample_paths["relation"]),
            "--splits", str(sample_paths["splits"])]
    assert main(args + ["--json", str(tmp_path / "authors.json")]) == 0
    assert main(args + ["--definitions", "clean", "--json", str(tmp_path / "clean.json")]) == 0
    printed = capsys.readouterr().out
    assert "authors definitions" in printed and "Table 4" in printed and "Top blended" in printed
    authors = json.loads((tmp_path / "authors.json").read_text())["total"]
    clean = json.loads((tmp_path / "clean.json").read_text())["total"]
    assert authors["definitions"] == "authors" and clean["definitions"] == "clean"
    # Inter-turn totals agree (one pair per turn boundary), intra-turn totals differ by the last turns.
    assert (authors["inter_turn_shift"] + authors["inter_turn_inertia"]
            == clean["inter_turn_shift"] + clean["inter_turn_inertia"] == clean["turns"] - clean["dialogues"])
    assert clean["intra_turn_shift"] + clean["intra_turn_inertia"] == clean["utterances"] - clean["turns"]
    assert sum(authors["speakers_by"]["gender"].values()) == authors["speakers"]


def test_format_tables_prints_table4() -> None:
    text = format_tables(split_stats(Corpus((TRACED,)), "clean"))
    assert "Table 4" in text and "gender: female" in text and "clean definitions" in text
