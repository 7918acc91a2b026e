"""Read annotations into a :class:`~m3ed.corpus.Corpus`.

Two sources: the official M3ED release (``annotation.json`` + ``relation_annotation_release.json``
+ ``splitInfo/``) and a generic manifest (JSONL or CSV, one utterance per row) so that MELD,
IEMOCAP or a user's own data go through the same pipeline.
"""
from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path

from .corpus import SPLITS, Corpus, Dialogue, Problem, Speaker, Utterance, dialogue_problems, utterance_number
from .timecode import DEFAULT_FPS, TimecodeError, TimecodeParser

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
            data = json.load(f, object_pairs_hook=_no_duplicate_keys)
    except FileNotFoundError as e:
        raise AnnotationError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise AnnotationError(f"{path}: a folder, not a JSON file") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: {_not_utf8(e)}") from e
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: the top level is {_shape(data)}; expected an object {{show: {{dialog_id: ...}}}}")
    return data


def _not_utf8(error: UnicodeDecodeError) -> str:
    return (f"not UTF-8 text ({error.reason} at byte {error.start}); convert it, e.g. "
            f"`iconv -f GBK -t UTF-8 FILE > FILE.utf8` for a GBK file")


def _shape(value) -> str:
    """``a list``, ``a string``... for messages about a value of the wrong kind."""
    names = {list: "a list", dict: "an object", str: "a string", int: "a number", float: "a number",
             bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _entries(mapping: dict):
    """The entries of a JSON object, without the duplicate-key record of :func:`_no_duplicate_keys`."""
    return [(k, v) for k, v in mapping.items() if k != "__duplicates__"]


def read_splits(splits_dir: str | Path) -> dict[str, str]:
    """``{show: split}`` from ``movie_list_{train,val,test}.txt``."""
    splits_dir = Path(splits_dir)
    show_split: dict[str, str] = {}
    for split in SPLITS:
        path = splits_dir / f"movie_list_{split}.txt"
        if not path.exists():
            raise AnnotationError(f"{path}: split list not found (expected movie_list_{{train,val,test}}.txt)")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{path}: {_not_utf8(e)}") from e
        for line in lines:
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

    Timecode anomalies follow :mod:`m3ed.timecode` (warned, or errors with ``strict``). A dialogue
    whose records cannot be read (a bad timecode, a list where an object belongs, a missing field)
    is kept with a blocking problem naming the file and the entry: a run refuses that dialogue alone,
    and :func:`m3ed.validate.validate` reports every such problem at once. With ``strict`` any of
    them stops the load, all listed.
    """
    annotations = Path(annotations)
    parse = timecodes or TimecodeParser(fps=fps, strict=strict)
    data = _read_json(annotations)
    relations = _read_json(Path(relation)) if relation else {}
    show_split = read_splits(splits) if splits else {}
    dialogues, problems = [], []
    for show, show_dialogues in _entries(data):
        if not isinstance(show_dialogues, dict):
            raise AnnotationError(f"{annotations}: show {show!r} is {_shape(show_dialogues)}; expected an object "
                                  f"{{dialog_id: {{'SpeakerInfo': ..., 'Dialog': ...}}}}")
        for dialogue_id, record in _entries(show_dialogues):
            where = f"{annotations.name}: {show}/{dialogue_id}"
            placed = f"{Path(relation).name}: {show}/{dialogue_id}" if relation else where
            found: list[Problem] = []
            refuse = _refuser(dialogue_id, found)
            placement = _placement(relations, show, dialogue_id, placed, refuse)
            dialogue = _release_dialogue(show, dialogue_id, record, placement, show_split, parse, where, placed, refuse)
            dialogues.append(dialogue)
            problems += _with_record_problems(dialogue, found, lambda u: f"{annotations.name}: ")
    if strict and problems:
        raise AnnotationError(f"{annotations}: {len(problems)} problem(s) (strict mode):\n"
                              + "\n".join(f"  {p}" for p in problems))
    return Corpus(tuple(dialogues), tuple(problems))


def _refuser(dialogue_id: str, found: list[Problem]):
    """``refuse(message, utterance_id=None)``: record a problem that refuses the dialogue."""
    def refuse(message: str, utterance_id: str | None = None) -> None:
        where = f"{dialogue_id}/{utterance_id}" if utterance_id is not None else dialogue_id
        found.append(Problem(where, message, dialogue_id=dialogue_id, blocking=True))
    return refuse


def _with_record_problems(dialogue: Dialogue, found: list[Problem], located) -> list[Problem]:
    """``found``, and the record problems of :func:`dialogue_problems` at places not named already
    (an unreadable time, read as NaN, is reported once, as unreadable)."""
    named = {p.where for p in found}
    return found + [p for p in dialogue_problems(dialogue, located) if p.where not in named]


def _placement(relations: dict, show: str, dialogue_id: str, placed: str, refuse) -> dict:
    """The relation file's entry of a dialogue (``{}`` when it has none)."""
    show_entries = relations.get(show, {})
    if not isinstance(show_entries, dict):
        refuse(f"{placed}: show {show!r} is {_shape(show_entries)} in the relation file; expected an object "
               f"{{dialog_id: {{'episode', 'start_time', 'end_time'}}}}")
        return {}
    placement = show_entries.get(dialogue_id, {})
    if not isinstance(placement, dict):
        refuse(f"{placed}: is {_shape(placement)}; expected an object with 'episode', 'start_time', 'end_time'")
        return {}
    return placement


def _release_dialogue(show, dialogue_id, record, placement, show_split, parse, where, placed, refuse) -> Dialogue:
    if not isinstance(record, dict) or not isinstance(record.get("Dialog"), dict):
        shown = _shape(record) if not isinstance(record, dict) else f"its 'Dialog' {_shape(record.get('Dialog'))}"
        refuse(f"{where}: expected an object with a 'Dialog' object of utterances; got {shown}")
        record = {"Dialog": {}}
    speakers = {}
    info_of = record.get("SpeakerInfo", {})
    if not isinstance(info_of, dict):
        refuse(f"{where}: 'SpeakerInfo' is {_shape(info_of)}; expected an object {{'A': {{'Name': ...}}, ...}}")
        info_of = {}
    for key, info in _entries(info_of):
        if not isinstance(info, dict):
            refuse(f"{where}: SpeakerInfo {key!r} is {_shape(info)}; expected an object with 'Name', 'Gender', ...")
            info = {}
        speakers[key] = Speaker(key=key, name=str(info.get("Name", "")), gender=str(info.get("Gender", "")),
                                age=str(info.get("Age", "")), other_name=str(info.get("OtherName", "")))
    items = _entries(record["Dialog"])
    duplicates = record["Dialog"].get("__duplicates__", [])
    # Order by the utterance number, numerically ("_10" after "_9"); unnumbered ids keep file order.
    items.sort(key=lambda kv: (utterance_number(kv[0], dialogue_id) is None, utterance_number(kv[0], dialogue_id) or 0))
    utterances = []
    for utt_id, u in items:
        if isinstance(u, dict):
            utterances.append(_release_utterance(dialogue_id, utt_id, u, parse, f"{where}/{utt_id}", refuse))
        else:
            refuse(f"{where}/{utt_id}: is {_shape(u)}; expected an object with 'StartTime', 'EndTime', 'Text', "
                   f"'Speaker', 'EmoAnnotation'", utt_id)
    # A duplicated key survives in the JSON only once; keep a second record so validation reports it.
    utterances += [u for u in utterances if u.id in duplicates]
    start = end = episode = None
    if placement:
        start = _timecode(placement, "start_time", parse, placed, refuse)
        end = _timecode(placement, "end_time", parse, placed, refuse)
        episode = _episode(placement.get("episode"), placed, refuse)
    return Dialogue(
        id=dialogue_id, show=show, utterances=tuple(utterances), speakers=speakers,
        split=show_split.get(show), episode=episode, start=start, end=end,
    )


def _timecode(record: dict, key: str, parse: TimecodeParser, where: str, refuse, utterance_id: str | None = None) -> float:
    """Seconds of ``record[key]``; NaN, with a problem that refuses the dialogue, when it cannot be read."""
    if key not in record:
        refuse(f"{where}: missing field {key!r} (a timecode HH:MM:SS:FF)", utterance_id)
        return math.nan
    try:
        return parse(record[key], f"{where} {key}")
    except TimecodeError as e:
        refuse(str(e), utterance_id)
        return math.nan


def _episode(value, where: str, refuse) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    refuse(f"{where}: episode {value!r} is not a whole number (the episode's number in its show)")
    return None


def _release_utterance(dialogue_id, utt_id, record, parse, where, refuse) -> Utterance:
    emo = record.get("EmoAnnotation", {}) or {}
    if not isinstance(emo, dict):
        refuse(f"{where}: 'EmoAnnotation' is {_shape(emo)}; expected an object with 'final_main_emo', ...", utt_id)
        emo = {}
    emotions = split_labels(emo.get("final_mul_emo"))
    main = split_labels(emo.get("final_main_emo"))
    main_emotion = main[0] if main else (emotions[0] if emotions else None)
    if main_emotion and main_emotion in emotions:
        emotions = (main_emotion,) + tuple(e for e in emotions if e != main_emotion)
    elif main_emotion:
        emotions = (main_emotion,) + emotions
    annotators = sorted(k for k in emo if k.lower().startswith("emoannotator"))
    return Utterance(
        id=utt_id, dialogue_id=dialogue_id, speaker=str(record.get("Speaker", "")),
        start=_timecode(record, "StartTime", parse, where, refuse, utt_id),
        end=_timecode(record, "EndTime", parse, where, refuse, utt_id),
        text=str(record.get("Text", "")), emotion=main_emotion, emotions=emotions,
        annotations=tuple(split_labels(emo[k]) for k in annotators),
    )


# Generic manifest: one utterance per row. Column names (the CSV header or the JSON keys).
MANIFEST_COLUMNS = ("dialogue_id", "utterance_id", "speaker", "start", "end", "text", "emotion", "video")
# No sane value is this long; a field that is has swallowed other rows (an unterminated quote).
MAX_FIELD_CHARS = 10_000


def load_manifest(path: str | Path) -> Corpus:
    """Load a generic manifest (``.jsonl`` or ``.csv``).

    Required columns: dialogue_id, utterance_id, speaker, start, end (seconds from the dialogue's
    start), text, emotion (``anger`` or ``anger|disgust``, main first; empty for unlabelled),
    video (a file path, relative to the manifest, of the dialogue's clip or of the episode).
    Optional: show, split, video_start / video_end (where the dialogue sits in ``video``, seconds),
    speaker_name. Rows keep their order within a dialogue.

    A row that cannot be read refuses its dialogue (a blocking problem naming the file and the line);
    one that belongs to no dialogue (broken JSON, a field running over lines) is a problem with no
    dialogue, which stops a run before any work (:func:`m3ed.config.load_corpus`).
    """
    path = Path(path)
    rows, problems = _manifest_rows(path)
    by_dialogue: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for number, row in rows:
        by_dialogue[row["dialogue_id"]].append((number, row))
    dialogues = []
    for dialogue_id, dialogue_rows in by_dialogue.items():
        first_line, first = dialogue_rows[0]
        found: list[Problem] = []
        refuse = _refuser(dialogue_id, found)
        video = str(first.get("video") or "") or None
        if video and not Path(video).is_absolute():
            video = str((path.parent / video).resolve())
        speakers = {str(r["speaker"]): Speaker(key=str(r["speaker"]), name=str(r.get("speaker_name") or ""))
                    for _, r in dialogue_rows}
        utterances = tuple(_manifest_utterance(r, f"{path.name}:{n}", refuse) for n, r in dialogue_rows)
        lines = {id(u): n for u, (n, _) in zip(utterances, dialogue_rows)}
        where = f"{path.name}:{first_line}"
        dialogue = Dialogue(
            id=dialogue_id, show=str(first.get("show") or dialogue_id), utterances=utterances, speakers=speakers,
            split=str(first.get("split") or "") or None, video=video,
            start=_seconds(first, "video_start", where, refuse, optional=True),
            end=_seconds(first, "video_end", where, refuse, optional=True),
        )
        dialogues.append(dialogue)
        problems += _with_record_problems(dialogue, found, lambda u: f"{path.name}:{lines[id(u)]}: ")
    return Corpus(tuple(dialogues), tuple(problems))


def _manifest_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """``(line, row)`` of each readable row, and the problems of the others: a blocking problem for
    a row that lacks a required value (its dialogue is then refused by a run; the others go on)."""
    try:
        if path.suffix.lower() == ".csv":
            numbered, problems = _csv_rows(path)
        else:
            numbered, problems = _jsonl_rows(path)
    except FileNotFoundError as e:
        raise AnnotationError(f"{path}: file not found") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: {_not_utf8(e)}") from e
    rows = []
    for number, row in numbered:
        line = f"{path.name}:{number}"
        ids = [row.get("dialogue_id"), row.get("utterance_id")]
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip() for v in ids):
            problems.append(Problem(line, f"the row has no dialogue_id or utterance_id, or one that is not text "
                                          f"(got {ids}; required: {list(MANIFEST_COLUMNS)})", blocking=True))
            continue
        row = {**row, "dialogue_id": str(row["dialogue_id"]), "utterance_id": str(row["utterance_id"])}
        problems += _row_problems(row, line)
        rows.append((number, {k: ("" if v is None else v) for k, v in row.items()}))
    return rows, problems


def _row_problems(row: dict, line: str) -> list[Problem]:
    """Blocking problems of one row that names its dialogue: missing, mistyped or overlong values."""
    found: list[Problem] = []
    refuse = _refuser(row["dialogue_id"], found)
    utterance = row["utterance_id"]
    # A key absent from a JSON row, or a CSV row shorter than its header (the value is None).
    missing = [c for c in MANIFEST_COLUMNS if c != "video" and row.get(c) is None]
    if missing:
        refuse(f"{line}: missing value(s) for {missing} (required: {list(MANIFEST_COLUMNS[:-1])}; "
               f"an empty emotion means unlabelled, but it must be present)", utterance)
    mistyped = [f"{k} is {_shape(v)}" for k, v in row.items() if not isinstance(v, (str, int, float, type(None)))]
    if mistyped:
        refuse(f"{line}: {', '.join(mistyped)}; every value must be text or a number", utterance)
    overlong = [f"{k} ({len(v)} characters)" for k, v in row.items() if isinstance(v, str) and len(v) > MAX_FIELD_CHARS]
    if overlong:
        refuse(f"{line}: {', '.join(overlong)} longer than any sane value (over {MAX_FIELD_CHARS} characters); "
               f"an unterminated quote?", utterance)
    return found


def _csv_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """The CSV's rows by their first line. A field that runs over lines (an unterminated quote swallows
    the rows after it) is a problem of the file, not of one dialogue: the rows it swallowed are lost."""
    rows, problems = [], []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        absent = [c for c in MANIFEST_COLUMNS if c not in header and c != "video"]
        if absent:
            raise AnnotationError(f"{path}: the header lacks columns {absent} (required: {list(MANIFEST_COLUMNS)})")
        while True:
            first = reader.line_num + 1   # csv yields blank lines too, as empty rows
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise AnnotationError(f"{path}:{reader.line_num}: cannot parse the row ({e}); an unterminated "
                                      f"quote swallows the rows after it") from e
            if not fields:
                continue   # a blank line
            last, line = reader.line_num, f"{path.name}:{first}"
            if any("\n" in v or "\r" in v for v in fields):
                problems.append(Problem(line, f"a field runs over lines {first}–{last}, swallowing the rows there: "
                                              f"an unterminated quote? Close it (a quote inside a quoted field is "
                                              f"written twice: \"\")", blocking=True))
                continue
            row = dict(zip(header, fields))
            if len(fields) > len(header):
                problems.append(Problem(line, f"{len(fields)} fields, but the header has {len(header)}: an unquoted "
                                              f"comma? Quote fields that contain commas",
                                        dialogue_id=row.get("dialogue_id") or None, blocking=True))
            rows.append((first, {**{c: None for c in header}, **row}))
    return rows, problems


def _jsonl_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    rows, problems = [], []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            line = f"{path.name}:{number}"
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(Problem(line, f"not valid JSON ({e.msg} at column {e.colno})", blocking=True))
                continue
            if not isinstance(row, dict):
                problems.append(Problem(line, f"is {_shape(row)}; expected a JSON object with the columns "
                                              f"{list(MANIFEST_COLUMNS)}", blocking=True))
                continue
            rows.append((number, row))
    return rows, problems


def _manifest_utterance(row: dict, line: str, refuse) -> Utterance:
    emotions = split_labels(row.get("emotion"))
    return Utterance(
        id=row["utterance_id"], dialogue_id=row["dialogue_id"], speaker=str(row["speaker"]),
        start=_seconds(row, "start", line, refuse, utterance_id=row["utterance_id"]),
        end=_seconds(row, "end", line, refuse, utterance_id=row["utterance_id"]),
        text=str(row.get("text", "")), emotion=emotions[0] if emotions else None, emotions=emotions,
    )


def _seconds(row: dict, key: str, where: str, refuse, *, optional: bool = False, utterance_id: str | None = None):
    """``row[key]`` as seconds; NaN, with a problem that refuses the dialogue, when it is not a finite number."""
    value = row.get(key)
    if optional and value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        refuse(f"{where}: {key} {value!r} is not a number of seconds", utterance_id)
        return math.nan
    if not math.isfinite(seconds):
        refuse(f"{where}: {key} {value!r} is not a finite number of seconds", utterance_id)
    return seconds


def load_corpus(annotations: str | Path, relation=None, splits=None, *, fps=DEFAULT_FPS, strict=False) -> Corpus:
    """Load either format, chosen by the file: the release JSON, a manifest JSONL/CSV, or our corpus JSONL."""
    annotations = Path(annotations)
    if annotations.suffix.lower() in (".csv",):
        return load_manifest(annotations)
    if annotations.suffix.lower() == ".jsonl":
        first = _first_record(annotations)
        if isinstance(first, dict) and "utterances" in first:
            try:
                return Corpus.from_jsonl(annotations)
            except UnicodeDecodeError as e:
                raise AnnotationError(f"{annotations}: {_not_utf8(e)}") from e
        return load_manifest(annotations)
    return load_m3ed(annotations, relation, splits, fps=fps, strict=strict)


def _first_record(path: Path):
    """The first line's JSON value (None when it is not JSON: the manifest reader names it)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = next((line for line in f if line.strip()), "")
    except FileNotFoundError as e:
        raise AnnotationError(f"{path}: file not found") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: {_not_utf8(e)}") from e
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
