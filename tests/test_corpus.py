"""Loading the release format and generic manifests, JSONL round trip, validation, statistics."""
import json

import pytest

from m3ed.corpus import Corpus
from m3ed.loaders import AnnotationError, load_corpus, load_m3ed, load_manifest
from m3ed.stats import split_stats
from m3ed.validate import CorpusError, check, validate


def _utt(start, end, text, speaker, main, votes, mul=None):
    return {"StartTime": start, "EndTime": end, "Text": text, "Speaker": speaker,
            "EmoAnnotation": {"EmoAnnotator1": votes[0], "EmoAnnotator2": votes[1], "EmoAnnotator3": votes[2],
                              "final_mul_emo": mul or main, "final_main_emo": main}}


def _speakers(a, b):
    return {"A": {"Name": a, "Age": "mid", "Gender": "male", "OtherName": ""},
            "B": {"Name": b, "Age": "young", "Gender": "female", "OtherName": ""}}


@pytest.fixture
def release(tmp_path):
    """A hand-built two-show release whose statistics are worked out by hand in the tests below."""
    annotation = {
        "showA": {"showA_1": {"SpeakerInfo": _speakers("张三", "李四"), "Dialog": {
            "showA_1_1": _utt("00:00:00:00", "00:00:02:00", "你好啊", "A", "Happy", ["Happy", "Happy", "Happy"]),
            "showA_1_2": _utt("00:00:02:00", "00:00:04:00", "今天 好", "A", "Happy", ["Happy", "Happy", "Neutral"]),
            "showA_1_3": _utt("00:00:04:00", "00:00:06:00", "不好", "B", "Sad", ["Sad", "Sad", "Sad"]),
            "showA_1_4": _utt("00:00:06:00", "00:00:08:00", "为什么", "A", "Sad", ["Sad", "Sad", "Anger"], "Sad,Anger"),
            "showA_1_5": _utt("00:00:08:00", "00:00:10:00", "没事", "B", "Neutral", ["Neutral"] * 3),
        }}},
        "showB": {"showB_1": {"SpeakerInfo": _speakers("王五", "赵六"), "Dialog": {
            # Listed out of order on purpose: numbers sort numerically, not as strings.
            "showB_1_3": _utt("00:00:05:00", "00:00:07:00", "讨厌", "A", "Disgust", ["Disgust", "Disgust", "Anger"]),
            "showB_1_1": _utt("00:00:00:00", "00:00:02:00", "滚", "A", "Anger", ["Anger", "Anger", "Disgust"]),
            "showB_1_2": _utt("00:00:02:00", "00:00:05:00", "快滚", "A", "Anger", ["Anger"] * 3, ["Anger", "Disgust"]),
            "showB_1_4": _utt("00:00:07:00", "00:00:09:00", "啊", "B", "Fear", ["Fear"] * 3),
        }}},
    }
    relation = {"showA": {"showA_1": {"episode": 3, "start_time": "00:00:10:00", "end_time": "00:00:30:00"}},
                "showB": {"showB_1": {"episode": 1, "start_time": "00:01:00:00", "end_time": "00:01:15:00"}}}
    splits = tmp_path / "splitInfo"
    splits.mkdir()
    (splits / "movie_list_train.txt").write_text("showA\n")
    (splits / "movie_list_val.txt").write_text("")
    (splits / "movie_list_test.txt").write_text("showB\n")
    (tmp_path / "annotation.json").write_text(json.dumps(annotation, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "relation.json").write_text(json.dumps(relation))
    return tmp_path / "annotation.json", tmp_path / "relation.json", splits


def test_release_loader(release):
    corpus = load_m3ed(*release)
    a, b = corpus["showA_1"], corpus["showB_1"]
    assert [u.id for u in b.utterances] == ["showB_1_1", "showB_1_2", "showB_1_3", "showB_1_4"]
    assert (a.split, b.split, a.episode) == ("train", "test", 3)
    assert (a.start, a.end) == (10.0, 30.0)
    u = a.utterances[3]
    assert (u.emotion, u.emotions, u.speaker, u.start, u.end) == ("sad", ("sad", "anger"), "A", 6.0, 8.0)
    assert u.annotations == (("sad",), ("sad",), ("anger",))
    assert a.speaker_name("B") == "李四"
    assert validate(corpus, require_split=True) == []


def test_jsonl_round_trip(release, tmp_path):
    corpus = load_m3ed(*release)
    corpus.to_jsonl(tmp_path / "corpus.jsonl")
    again = Corpus.from_jsonl(tmp_path / "corpus.jsonl")
    assert again == corpus
    assert load_corpus(tmp_path / "corpus.jsonl") == corpus


def test_stats_match_hand_computed_numbers(release):
    stats = split_stats(load_m3ed(*release))
    assert set(stats) == {"train", "val", "test", "total"}
    train, test, total = stats["train"], stats["test"], stats["total"]
    # showA_1 turns: [1,2] [3] [4] [5]; showB_1 turns: [1,2,3] [4].
    assert (train["turns"], test["turns"], total["turns"]) == (4, 2, 6)
    assert (total["tv_series"], total["dialogues"], total["utterances"], total["speakers"]) == (2, 2, 9, 4)
    # inter-turn pairs: happy->sad, sad->sad, sad->neutral | disgust->fear
    assert (train["inter_turn_shift"], train["inter_turn_inertia"]) == (2, 1)
    assert (total["inter_turn_shift"], total["inter_turn_inertia"]) == (3, 1)
    # intra-turn pairs: happy->happy | anger->anger, anger->disgust
    assert (total["intra_turn_shift"], total["intra_turn_inertia"]) == (1, 2)
    assert total["blended"] == 2
    assert train["avg_utterance_length"] == 2.6       # 13 characters / 5, the space not counted
    assert test["avg_utterance_length"] == 1.5
    assert total["avg_dialogue_duration"] == 17.5     # (20 s + 15 s) / 2
    assert train["avg_turns_per_dialogue"] == 4.0 and test["avg_utterances_per_turn"] == 2.0
    # Fleiss' kappa for train worked by hand: P = 165/225, Pe = 67/225 -> 98/158.
    assert train["fleiss_kappa"] == round(98 / 158, 3)
    assert train["emotions"] == {"happy": 2, "neutral": 1, "sad": 2, "disgust": 0, "anger": 0, "fear": 0, "surprise": 0}
    assert test["emotions"]["anger"] == 2 and test["emotions"]["fear"] == 1
    assert stats["val"]["dialogues"] == 0 and stats["val"]["fleiss_kappa"] is None


def test_validation_reports_every_problem_with_its_location(release, tmp_path):
    path, relation, splits = release
    data = json.loads(path.read_text(encoding="utf-8"))
    dialog = data["showA"]["showA_1"]["Dialog"]
    dialog["showA_1_1"]["EndTime"] = "00:00:00:00"                 # end <= start
    dialog["showA_1_5"]["EndTime"] = "00:00:40:00"                 # beyond the 20 s dialogue
    dialog["showA_1_3"]["EmoAnnotation"]["final_main_emo"] = "Joy"  # unknown label
    dialog["showA_1_4"]["Speaker"] = "C"                           # not in SpeakerInfo
    data["showC"] = {"showC_1": data["showB"].pop("showB_1")}      # show in no split list
    text = json.dumps(data, ensure_ascii=False)
    # A duplicate utterance key, which plain json.load would silently drop.
    text = text.replace('"showA_1_2": {', '"showA_1_2": {"StartTime": "00:00:01:00", "EndTime": "00:00:02:00", '
                        '"Speaker": "A", "Text": "x"}, "showA_1_2": {', 1)
    path.write_text(text, encoding="utf-8")
    corpus = load_m3ed(path, relation, splits)
    problems = [str(p) for p in validate(corpus, require_split=True)]
    expected = [
        ("showA_1/showA_1_1", "not after start"),
        ("showA_1/showA_1_5", "outside its dialogue"),
        ("showA_1/showA_1_3", "unknown emotion label(s) ['joy']"),
        ("showA_1/showA_1_4", "speaker 'C' is not in SpeakerInfo"),
        ("showC_1", "in no split list"),
        ("showA_1/showA_1_2", "appears 2 times"),
    ]
    for where, what in expected:
        assert any(p.startswith(where) and what in p for p in problems), (where, what, problems)
    with pytest.raises(CorpusError) as error:
        check(corpus, require_split=True)
    assert len(error.value.problems) == len(problems) and "showA_1_5" in str(error.value)


def test_relation_timecode_anomalies_are_tolerated(release, tmp_path):
    path, relation, splits = release
    data = json.loads(relation.read_text())
    data["showA"]["showA_1"]["start_time"] = "00:00: 09:30"   # space and frame 30 >= 25 fps
    relation.write_text(json.dumps(data))
    assert load_m3ed(path, relation, splits)["showA_1"].start == pytest.approx(10.2)
    with pytest.raises(ValueError, match="showA_1"):
        load_m3ed(path, relation, splits, strict=True)


def test_bad_annotation_files_name_the_file(tmp_path):
    bad = tmp_path / "annotation.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="annotation.json"):
        load_m3ed(bad)
    with pytest.raises(AnnotationError, match="not found"):
        load_m3ed(tmp_path / "missing.json")


def test_generic_manifest_csv_and_jsonl(tmp_path):
    rows = [
        {"dialogue_id": "d1", "utterance_id": "u1", "speaker": "Joey", "start": 0.0, "end": 1.5,
         "text": "How you doin'?", "emotion": "happy", "video": "clips/d1.mp4", "split": "train"},
        {"dialogue_id": "d1", "utterance_id": "u2", "speaker": "Rachel", "start": 1.5, "end": 3.0,
         "text": "Ugh.", "emotion": "disgust|anger", "video": "clips/d1.mp4", "split": "train"},
    ]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    csv_path = tmp_path / "m.csv"
    header = list(rows[0])
    csv_path.write_text(",".join(header) + "\n" + "\n".join(",".join(str(r[h]) for h in header) for r in rows))
    for path in (jsonl, csv_path):
        corpus = load_corpus(path)
        d = corpus["d1"]
        assert [u.id for u in d.utterances] == ["u1", "u2"]
        assert d.utterances[1].emotions == ("disgust", "anger") and d.utterances[1].emotion == "disgust"
        assert d.video == str((tmp_path / "clips" / "d1.mp4").resolve()) and d.split == "train"
        assert validate(corpus) == []
    (tmp_path / "bad.csv").write_text("dialogue_id,speaker\nd1,A\n")
    with pytest.raises(AnnotationError, match="bad.csv: the header lacks columns"):
        load_manifest(tmp_path / "bad.csv")


def test_bundled_sample_is_valid(sample_corpus, sample_paths):
    assert validate(sample_corpus, require_split=True) == []
    assert {d.split for d in sample_corpus} == {"train", "val", "test"}
    manifest = load_corpus(sample_paths["manifest"])
    assert [u.id for u in manifest.utterances()] == [u.id for u in sample_corpus.utterances()]
