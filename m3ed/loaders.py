"""Read annotations into a :class:`~m3ed.corpus.Corpus`.

Two sources: the official M3ED release (``annotation.json`` + ``relation_annotation_release.json``
+ ``splitInfo/``) and a generic manifest (JSONL or CSV, one utterance per row) so that MELD,
IEMOCAP or a user's own data go through the same pipeline.
"""
from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path

from .corpus import SPLITS, Corpus, Dialogue, Problem, Speaker, Utterance, utterance_number
from .timecode import DEFAULT_FPS, TimecodeParser

_LABEL_SEPARATORS = re.compile(r"[,，;；|&/、\s]+")


class AnnotationError(ValueError):
    """An annotation file that cannot be read; the message names the file and the entry."""


def split_labels(value) -> tuple[str, ...]:
    """Emotion labels from a list or from a string such as ``"Anger,Disgust"``, lower-cased."""
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else _LABEL_SEPARATORS.split(str(value))
    return tuple(str(item).strip().lower() for item in items if str(item).strip())


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object hook that keeps duplicate keys visible (plain json keeps only the last)."""
    result: dict = {}
    for key, value in pairs:
        if key in result:
            result.setdefault("__duplicates__", []).append(key)
        result[key] = value
    return result


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_no_duplicate_keys)
    except FileNotFoundError as e:
        raise AnnotationError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from e


def read_splits(splits_dir: str | Path) -> dict[str, str]:
    """``{show: split}`` from ``movie_list_{train,val,test}.txt``."""
    splits_dir = Path(splits_dir)
    show_split: dict[str, str] = {}
    for split in SPLITS:
        path = splits_dir / f"movie_list_{split}.txt"
        if not path.exists():
            raise AnnotationError(f"{path}: split list not found (expected movie_list_{{train,val,test}}.txt)")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                show_split[line.strip()] = split
    return show_split


def load_m3ed(
    annotations: str | Path,
    relation: str | Path | None = None,
    splits: str | Path | None = None,
    *,
    fps: float = DEFAULT_FPS,
    strict: bool = False,
    timecodes: TimecodeParser | None = None,
) -> Corpus:
    """Load the official release. Utterances are ordered by their number, dialogues by file order.

    Timecode anomalies follow :mod:`m3ed.timecode` (warned, or errors with ``strict``); structural
    problems are left for :func:`m3ed.validate.validate` to report all at once.
    """
    annotations = Path(annotations)
    parse = timecodes or TimecodeParser(fps=fps, strict=strict)
    data = _read_json(annotations)
    relations = _read_json(Path(relation)) if relation else {}
    show_split = read_splits(splits) if splits else {}
    dialogues = []
    for show, show_dialogues in data.items():
        if show == "__duplicates__":
            continue
        for dialogue_id, record in show_dialogues.items():
            if dialogue_id == "__duplicates__":
                continue
            where = f"{annotations.name}: {show}/{dialogue_id}"
            placed = f"{Path(relation).name}: {show}/{dialogue_id}" if relation else where
            placement = relations.get(show, {}).get(dialogue_id, {})
            dialogues.append(_release_dialogue(show, dialogue_id, record, placement, show_split, parse, where, placed))
    return Corpus(tuple(dialogues))


def _release_dialogue(show, dialogue_id, record, placement, show_split, parse, where, placed) -> Dialogue:
    if not isinstance(record, dict) or "Dialog" not in record:
        raise AnnotationError(f"{where}: dialogue has no 'Dialog' entry")
    speakers = {
        key: Speaker(key=key, name=str(info.get("Name", "")), gender=str(info.get("Gender", "")),
                     age=str(info.get("Age", "")), other_name=str(info.get("OtherName", "")))
        for key, info in record.get("SpeakerInfo", {}).items()
    }
    items = [(k, v) for k, v in record["Dialog"].items() if k != "__duplicates__"]
    duplicates = record["Dialog"].get("__duplicates__", [])
    # Order by the utterance number, numerically ("_10" after "_9"); unnumbered ids keep file order.
    items.sort(key=lambda kv: (utterance_number(kv[0], dialogue_id) is None, utterance_number(kv[0], dialogue_id) or 0))
    utterances = [_release_utterance(dialogue_id, utt_id, u, parse, f"{where}/{utt_id}") for utt_id, u in items]
    # A duplicated key survives in the JSON only once; keep a second record so validation reports it.
    utterances += [u for u in utterances if u.id in duplicates]
    start = end = None
    if placement:
        start = parse(placement["start_time"], f"{placed} start_time")
        end = parse(placement["end_time"], f"{placed} end_time")
    return Dialogue(
        id=dialogue_id, show=show, utterances=tuple(utterances), speakers=speakers,
        split=show_split.get(show), episode=int(placement["episode"]) if placement else None,
        start=start, end=end,
    )


def _release_utterance(dialogue_id, utt_id, record, parse, where) -> Utterance:
    emo = record.get("EmoAnnotation", {}) or {}
    emotions = split_labels(emo.get("final_mul_emo"))
    main = split_labels(emo.get("final_main_emo"))
    main_emotion = main[0] if main else (emotions[0] if emotions else None)
    if main_emotion and main_emotion in emotions:
        emotions = (main_emotion,) + tuple(e for e in emotions if e != main_emotion)
    elif main_emotion:
        emotions = (main_emotion,) + emotions
    annotators = sorted(k for k in emo if k.lower().startswith("emoannotator"))
    try:
        return Utterance(
            id=utt_id, dialogue_id=dialogue_id, speaker=str(record.get("Speaker", "")),
            start=parse(record["StartTime"], f"{where} StartTime"),
            end=parse(record["EndTime"], f"{where} EndTime"),
            text=str(record.get("Text", "")), emotion=main_emotion, emotions=emotions,
            annotations=tuple(split_labels(emo[k]) for k in annotators),
        )
    except KeyError as e:
        raise AnnotationError(f"{where}: missing field {e}") from e


# Generic manifest: one utterance per row. Column names (the CSV header or the JSON keys).
MANIFEST_COLUMNS = ("dialogue_id", "utterance_id", "speaker", "start", "end", "text", "emotion", "video")


def load_manifest(path: str | Path) -> Corpus:
    """Load a generic manifest (``.jsonl`` or ``.csv``).

    Required columns: dialogue_id, utterance_id, speaker, start, end (seconds from the dialogue's
    start), text, emotion (``anger`` or ``anger|disgust``, main first; empty for unlabelled),
    video (a file path, relative to the manifest, of the dialogue's clip or of the episode).
    Optional: show, split, video_start / video_end (where the dialogue sits in ``video``, seconds),
    speaker_name. Rows keep their order within a dialogue.
    """
    path = Path(path)
    rows, problems = _manifest_rows(path)
    by_dialogue: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_dialogue[row["dialogue_id"]].append(row)
    dialogues = []
    for dialogue_id, dialogue_rows in by_dialogue.items():
        first = dialogue_rows[0]
        video = first.get("video") or None
        if video and not Path(video).is_absolute():
            video = str((path.parent / video).resolve())
        speakers = {r["speaker"]: Speaker(key=r["speaker"], name=r.get("speaker_name") or "") for r in dialogue_rows}
        utterances = tuple(_manifest_utterance(r, f"{path.name}: {dialogue_id}/{r['utterance_id']}", problems)
                           for r in dialogue_rows)
        dialogues.append(Dialogue(
            id=dialogue_id, show=first.get("show") or dialogue_id, utterances=utterances, speakers=speakers,
            split=first.get("split") or None, video=video,
            start=_optional_float(first.get("video_start")), end=_optional_float(first.get("video_end")),
        ))
    return Corpus(tuple(dialogues), tuple(problems))


def _manifest_rows(path: Path) -> tuple[list[dict], list[Problem]]:
    """The rows, and a blocking problem for each row that lacks a required value (its dialogue is
    then refused by a run; the others go on)."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
            absent = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or []) and c != "video"]
            if absent:
                raise AnnotationError(f"{path}: the header lacks columns {absent} (required: {list(MANIFEST_COLUMNS)})")
        else:
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError as e:
        raise AnnotationError(f"{path}: file not found") from e
    except (json.JSONDecodeError, csv.Error) as e:
        raise AnnotationError(f"{path}: cannot parse manifest ({e})") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    problems = []
    header = 1 if path.suffix.lower() == ".csv" else 0   # the CSV header is line 1
    for number, row in enumerate(rows, 1):
        line = f"{path.name}:{number + header}"
        if not str(row.get("dialogue_id") or "").strip() or not str(row.get("utterance_id") or "").strip():
            raise AnnotationError(f"{line}: the row has no dialogue_id or utterance_id (required: {list(MANIFEST_COLUMNS)})")
        # A key absent from a JSON row, or a CSV row shorter than its header (the value is None).
        missing = [c for c in MANIFEST_COLUMNS if c != "video" and row.get(c) is None]
        if missing:
            problems.append(Problem(f"{row['dialogue_id']}/{row['utterance_id']}",
                                    f"{line}: missing value(s) for {missing} (required: {list(MANIFEST_COLUMNS[:-1])}; "
                                    f"an empty emotion means unlabelled, but it must be present)",
                                    dialogue_id=str(row["dialogue_id"]), blocking=True))
    return [{k: ("" if v is None else v) for k, v in row.items() if k is not None} for row in rows], problems


def _manifest_utterance(row: dict, where: str, problems: list[Problem]) -> Utterance:
    emotions = split_labels(row.get("emotion"))
    try:
        start, end = float(row["start"]), float(row["end"])
    except ValueError as e:
        # Recorded, and the dialogue refused; the rest of the manifest stays usable.
        problems.append(Problem(f"{row['dialogue_id']}/{row['utterance_id']}", f"{where}: start/end must be seconds ({e})",
                                dialogue_id=str(row["dialogue_id"]), blocking=True))
        start = end = 0.0
    return Utterance(
        id=str(row["utterance_id"]), dialogue_id=str(row["dialogue_id"]), speaker=str(row["speaker"]),
        start=start, end=end, text=str(row.get("text", "")),
        emotion=emotions[0] if emotions else None, emotions=emotions,
    )


def _optional_float(value) -> float | None:
    return float(value) if value not in (None, "") else None


def load_corpus(annotations: str | Path, relation=None, splits=None, *, fps=DEFAULT_FPS, strict=False) -> Corpus:
    """Load either format, chosen by the file: the release JSON, a manifest JSONL/CSV, or our corpus JSONL."""
    annotations = Path(annotations)
    if annotations.suffix.lower() in (".csv",):
        return load_manifest(annotations)
    if annotations.suffix.lower() == ".jsonl":
        with open(annotations, encoding="utf-8") as f:
            first = next((json.loads(line) for line in f if line.strip()), {})
        return Corpus.from_jsonl(annotations) if "utterances" in first else load_manifest(annotations)
    return load_m3ed(annotations, relation, splits, fps=fps, strict=strict)
