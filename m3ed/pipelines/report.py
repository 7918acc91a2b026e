"""``m3ed report OUT``: what a run produced, for the eye (``OUT/report.html``) and for scripts
(``OUT/report.json``, the same numbers).

Sections:

- run: configuration, versions, per-stage time, real-time factor (stage seconds per second of
  dialogue processed) and throughput (utterances per second), from ``run.json``;
- corpus: the paper's Tables 2 and 3 for the run's ``manifest.jsonl`` (:mod:`m3ed.stats`);
- features: per feature file, utterances covered, missing ones with their reasons (from
  ``failures.jsonl``), dim, frame counts, NaN/Inf counts and value range (:mod:`.inspect_h5`);
- ASD: share of utterance frames with a speaker face by assignment stage, a histogram of the
  speaking probabilities of every tracked face, and per dialogue a strip chart of the chosen face;
- plots: emotions per split, utterance length and duration histograms, a PCA of every
  utterance-level feature set coloured by emotion;
- failures grouped by reason, with counts and the first examples.

The HTML is self-contained (inline CSS, PNG images as data URIs, no script, no network). Plots are
drawn with matplotlib's Agg canvas (no display, the global backend untouched); names in Chinese
need a CJK font (``M3ED_FONT``, a common Noto/WenQuanYi path, or one matplotlib knows), and the
report says when there is none (speakers are then shown by their key).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..asd.assign import RULE_NAMES
from ..catalogue import COLUMN
from ..asd.faces import FEATURE_SET as SPEAKER_FACES, tracks_path
from ..corpus import EMOTIONS, SPLITS, Corpus, Dialogue
from ..stats import split_stats
from ..timecode import DEFAULT_FPS
from ..files import atomic_write_text, require_room
from ..store import Failure, FeatureReader, FeatureStore
from .inspect_h5 import summarize_file
from .viz import FONT_CANDIDATES

log = logging.getLogger(__name__)

REPORT_HTML, REPORT_JSON = "report.html", "report.json"
MAX_STRIP_CHARTS = 20        # dialogues drawn as strip charts (the rest are in the numbers only)
FAILURE_EXAMPLES = 3
SCORE_BINS = 20              # histogram of speaking probabilities over [0, 1]
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
                "WenQuanYi Zen Hei", "Droid Sans Fallback", "AR PL UMing CN", "SimHei", "Microsoft YaHei", "PingFang SC")
_STAGE_NAMES = RULE_NAMES   # the stage column's codes: which assignment rule chose the face


def write_report(out_dir: Path) -> Path:
    """Write ``OUT/report.json`` and ``OUT/report.html`` for the run in ``out_dir``; returns the html path."""
    out_dir = Path(out_dir)
    data, figures = build_report(out_dir)
    numbers = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    page = render_html(data, figures)
    path = out_dir / REPORT_HTML
    require_room(path, len(numbers.encode()) + len(page.encode()))   # both or neither: they tell the same story
    atomic_write_text(out_dir / REPORT_JSON, numbers)
    atomic_write_text(path, page)
    log.info("report: %s (%d images)", path, sum(len(v) for v in figures.values()))
    return path


def build_report(out_dir: Path) -> tuple[dict, dict[str, list[tuple[str, str]]]]:
    """The report's numbers, and its figures per section as (caption, base64 PNG)."""
    store = FeatureStore(out_dir)
    if not store.manifest_path.exists():
        raise FileNotFoundError(f"{store.manifest_path}: no manifest; `m3ed report` needs the output directory "
                                f"of an m3ed-extract run (OUT with manifest.jsonl, features/, run.json)")
    corpus = Corpus.from_jsonl(store.manifest_path)
    record = json.loads(store.run_path.read_text(encoding="utf-8")) if store.run_path.exists() else {}
    failures = store.read_failures()
    font = cjk_font()
    plots = Plots(font)
    data = {
        "out_dir": str(out_dir), "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cjk_font": font,
        "run": run_section(record, corpus),
        "corpus": split_stats(corpus),
        "features": {},
        "asd": None,
        "failures": failure_groups(failures),
    }
    figures: dict[str, list[tuple[str, str]]] = defaultdict(list)
    if data["run"]["stages"]:
        figures["run"].append(("Seconds per stage", plots.stage_times(data["run"]["stages"])))
    figures["corpus"] += [("Utterances per main emotion and split", plots.emotions(data["corpus"])),
                          ("Utterance length (characters, whitespace excluded)", plots.histogram(
                              [len("".join(u.text.split())) for u in corpus.utterances()], "characters")),
                          ("Utterance duration", plots.histogram([u.duration for u in corpus.utterances()], "seconds"))]
    for path in sorted(store.features_dir.glob("*.h5")) if store.features_dir.exists() else []:
        section = feature_section(path, corpus, failures)
        data["features"][section["feature_set"]] = section
        if section["level"] == "utterance":
            x, labels = utterance_matrix(path, corpus)
            pca = plots.pca(section["feature_set"], x, labels)
            section["pca"] = pca["numbers"]
            if pca["image"]:
                figures["features"].append((f"{section['feature_set']}: PCA of the utterance features", pca["image"]))
    if store.feature_path(SPEAKER_FACES).exists():
        data["asd"], figures["asd"] = asd_section(out_dir, corpus, plots)
    return data, dict(figures)


# ---- numbers ------------------------------------------------------------------------------------
def run_section(record: dict, corpus: Corpus) -> dict:
    """Configuration, versions and per-stage timing (real-time factor, throughput) of ``run.json``."""
    media = sum(d.duration for d in corpus)
    utterances = sum(len(d.utterances) for d in corpus)
    stages = []
    for name, stage in record.get("stages", {}).items():
        seconds = float(stage.get("seconds", 0.0))
        # A resumed stage processed only part of the corpus: scale by the share it did.
        done = stage.get("dialogues_done", len(corpus)) / len(corpus) if len(corpus) else 0.0
        timed = seconds > 0 and done > 0
        stages.append({
            "stage": name, "seconds": seconds, "dialogues_done": stage.get("dialogues_done"),
            # the cut may run beside the other stages: then its seconds overlap theirs
            "beside_other_stages": bool(stage.get("beside_other_stages", False)),
            "dialogues_skipped": stage.get("dialogues_skipped"), "dialogues_failed": len(stage.get("dialogues_failed", [])),
            "reused": bool(stage.get("reused", False)), "media_seconds": round(media * done, 3),
            "real_time_factor": round(seconds / (media * done), 4) if timed and media else None,
            "utterances_per_second": round(utterances * done / seconds, 3) if timed else None,
            # m3ed.usage: the cores kept busy on average, and on CUDA the GPU's busy share
            "cores_busy": stage.get("usage", {}).get("cores_busy"), "gpu_busy_pct": stage.get("usage", {}).get("gpu_busy_pct"),
        })
    return {"package_version": record.get("package_version"), "started": record.get("started"),
            "finished": record.get("finished"), "complete": record.get("complete"),
            "config": record.get("config", {}), "versions": record.get("versions", {}),
            "dialogues": len(corpus), "utterances": utterances, "media_seconds": round(media, 3),
            "total_seconds": record.get("seconds", round(sum(s["seconds"] for s in stages), 3)), "stages": stages}


def feature_section(path: Path, corpus: Corpus, failures: list[Failure]) -> dict:
    """Coverage of the corpus by one feature file, and the file's summary statistics."""
    summary = summarize_file(path)
    feature_set = summary["feature_set"]
    with FeatureReader(path) as reader:
        present = set(reader.keys())
    by_utterance = {f.utterance_id: f.reason for f in failures if f.feature_set == feature_set and f.utterance_id}
    by_dialogue = {f.dialogue_id: f.reason for f in failures if f.feature_set == feature_set and not f.utterance_id}
    ids = [u.id for u in corpus.utterances()]
    missing = [u for u in corpus.utterances() if u.id not in present]
    reasons = Counter(_first_line(by_utterance.get(u.id) or by_dialogue.get(u.dialogue_id) or "no failure recorded")
                      for u in missing)
    return {
        "feature_set": feature_set, "file": str(path), "dim": summary["dim"], "level": summary["level"],
        "model": summary["model"], "config_hash": summary["config_hash"],
        "utterances": len(ids), "covered": len(ids) - len(missing), "keys": summary["keys"],
        "keys_outside_manifest": len(present - set(ids)),
        "missing": len(missing), "missing_reasons": dict(reasons.most_common()),
        "missing_examples": [u.id for u in missing[:FAILURE_EXAMPLES]],
        "frames": summary.get("frames"), "values": summary["stats"],
    }


def utterance_matrix(path: Path, corpus: Corpus) -> tuple[np.ndarray, list[str]]:
    """The utterance-level features of the corpus's labelled utterances, in corpus order, with emotions."""
    rows, labels = [], []
    with FeatureReader(path) as reader:
        for u in corpus.utterances():
            if u.emotion in EMOTIONS and u.id in reader:
                rows.append(reader[u.id])
                labels.append(u.emotion)
    return (np.stack(rows).astype(np.float64) if rows else np.zeros((0, 0))), labels


def asd_section(out_dir: Path, corpus: Corpus, plots: "Plots") -> tuple[dict, list[tuple[str, str]]]:
    """Speaker-face shares by stage (overall and per dialogue), the speaking-score histogram, strip charts."""
    figures, per_dialogue = [], {}
    total = Counter()
    with FeatureReader.open(out_dir, SPEAKER_FACES) as reader:
        fps = float(reader.attrs.get("frame_rate", DEFAULT_FPS))
        for dialogue in corpus:
            arrays = {u.id: reader[u.id] for u in dialogue.utterances if u.id in reader}
            if not arrays:
                continue
            counts = Counter({name: 0 for name in _STAGE_NAMES.values()})
            for rows in arrays.values():
                counts.update(_STAGE_NAMES[int(s)] for s in rows[:, COLUMN["stage"]])
            total.update(counts)
            per_dialogue[dialogue.id] = _shares(counts)
            if len(figures) < MAX_STRIP_CHARTS:
                figures.append((f"{dialogue.id}: chosen face per frame", plots.strip_chart(dialogue, arrays, fps)))
    scores = _track_scores(out_dir, corpus)
    edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    counts, _ = np.histogram(scores, bins=edges)
    figures.insert(0, ("Speaking probability of every tracked face frame", plots.score_histogram(scores, edges)))
    section = {**_shares(total), "dialogues": per_dialogue,
               "strip_charts": min(len(per_dialogue), MAX_STRIP_CHARTS),
               "score_histogram": {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist(),
                                   "scores": int(len(scores))}}
    return section, figures


def _shares(counts: Counter) -> dict:
    frames = sum(counts.values())
    with_face = frames - counts[_STAGE_NAMES[0]]
    return {"frames": frames, "by_stage": {k: counts[k] for k in _STAGE_NAMES.values()},
            "share_with_face": round(with_face / frames, 4) if frames else None,
            "share_by_stage": {k: round(counts[k] / frames, 4) if frames else None for k in _STAGE_NAMES.values()}}


def _track_scores(out_dir: Path, corpus: Corpus) -> np.ndarray:
    """Every speaking probability the asd stage wrote to ``OUT/asd/{dialogue}.json`` (NaN frames left out)."""
    scores = []
    for dialogue in corpus:
        path = tracks_path(out_dir, dialogue.id)
        if path.exists():
            record = json.loads(path.read_text(encoding="utf-8"))
            scores += [p for t in record["tracks"] for p in t["asd_prob"] if p is not None]
    return np.asarray(scores, np.float64)


def failure_groups(failures: list[Failure]) -> list[dict]:
    """Failures grouped by reason (first line), most frequent first, with the first examples."""
    groups: dict[str, list[Failure]] = defaultdict(list)
    for f in failures:
        groups[_first_line(f.reason)].append(f)
    return [{"reason": reason, "count": len(items), "feature_sets": sorted({f.feature_set for f in items}),
             "examples": [{"feature_set": f.feature_set, "dialogue_id": f.dialogue_id, "utterance_id": f.utterance_id}
                          for f in items[:FAILURE_EXAMPLES]]}
            for reason, items in sorted(groups.items(), key=lambda kv: -len(kv[1]))]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "(no reason given)"


# ---- plots --------------------------------------------------------------------------------------
def cjk_font() -> str | None:
    """The family name of a font that covers Chinese, registered with matplotlib; None when there is none."""
    from matplotlib import font_manager

    for path in (os.environ.get("M3ED_FONT"), *FONT_CANDIDATES):
        if path and Path(path).is_file() and _covers_chinese(path):
            font_manager.fontManager.addfont(path)
            return font_manager.FontProperties(fname=path).get_name()
    for entry in font_manager.fontManager.ttflist:
        if entry.name in CJK_FAMILIES and _covers_chinese(entry.fname):
            return entry.name
    return None


def _covers_chinese(path: str) -> bool:
    from matplotlib.ft2font import FT2Font

    try:
        return FT2Font(str(path)).get_char_index(ord("中")) != 0
    except (OSError, RuntimeError):
        return False


class Plots:
    """Figures as base64 PNG, drawn on matplotlib's Agg canvas (no display, global state untouched)."""

    def __init__(self, font: str | None):
        self.font = font
        self.rc = {"font.family": "sans-serif", "font.sans-serif": [font, "DejaVu Sans"] if font else ["DejaVu Sans"],
                   "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}

    def label(self, key: str, name: str) -> str:
        """A speaker label: key and name, or the key alone when the name needs a font we lack."""
        return f"{key} {name}" if name and (self.font or name.isascii()) else key

    def _png(self, draw, size=(6.4, 3.2)) -> str:
        from matplotlib import rc_context
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        with rc_context(self.rc):
            figure = Figure(figsize=size, dpi=100, layout="constrained")
            FigureCanvasAgg(figure)
            draw(figure)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png")
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def stage_times(self, stages: list[dict]) -> str:
        def draw(fig):
            ax = fig.subplots()
            ax.barh([s["stage"] for s in stages][::-1], [s["seconds"] for s in stages][::-1], color="#4c72b0")
            ax.set_xlabel("seconds")
        return self._png(draw, (6.4, 0.5 + 0.35 * len(stages)))

    def emotions(self, stats: dict) -> str:
        def draw(fig):
            ax = fig.subplots()
            width = 0.8 / len(SPLITS)
            for i, split in enumerate(SPLITS):
                ax.bar(np.arange(len(EMOTIONS)) + (i - 1) * width, [stats[split]["emotions"][e] for e in EMOTIONS],
                       width, label=split)
            ax.set_xticks(range(len(EMOTIONS)), EMOTIONS)
            ax.set_ylabel("utterances")
            ax.legend()
        return self._png(draw)

    def histogram(self, values: list[float], unit: str) -> str:
        def draw(fig):
            ax = fig.subplots()
            ax.hist(values, bins=min(30, max(5, len(values) // 2)), color="#55a868")
            ax.set_xlabel(unit)
            ax.set_ylabel("utterances")
        return self._png(draw)

    def score_histogram(self, scores: np.ndarray, edges: np.ndarray) -> str:
        def draw(fig):
            ax = fig.subplots()
            ax.hist(scores, bins=edges, color="#c44e52")
            ax.set_xlabel("speaking probability sigmoid(s1 - s0)")
            ax.set_ylabel("face frames")
        return self._png(draw)

    def strip_chart(self, dialogue: Dialogue, arrays: dict[str, np.ndarray], fps: float) -> str:
        """Which face track was chosen over time (dots by stage), on the utterances shaded by speaker."""
        from matplotlib.patches import Patch

        rows = np.concatenate(list(arrays.values()))
        tracks = sorted({int(t) for t in rows[:, COLUMN["track"]] if t >= 0})
        level = {t: i + 1 for i, t in enumerate(tracks)}
        speakers = sorted(dialogue.speakers) or sorted({u.speaker for u in dialogue.utterances})
        palette = {key: f"C{i}" for i, key in enumerate(speakers)}

        def draw(fig):
            ax = fig.subplots()
            for u in dialogue.utterances:
                ax.axvspan(u.start, u.end, color=palette.get(u.speaker, "C7"), alpha=0.15, lw=0)
            t = rows[:, COLUMN["frame"]] / fps
            y = np.array([level.get(int(k), 0) for k in rows[:, COLUMN["track"]]])
            colours = ["#999999", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#d62728"]
            for stage, colour in zip(_STAGE_NAMES, colours):
                pick = rows[:, COLUMN["stage"]] == stage
                if pick.any():
                    ax.scatter(t[pick], y[pick], s=4, color=colour, label=_STAGE_NAMES[stage])
            ax.set_yticks(range(len(tracks) + 1), ["none"] + [f"track {k}" for k in tracks])
            ax.set_xlabel("seconds in the dialogue")
            handles, _ = ax.get_legend_handles_labels()
            handles += [Patch(color=colour, alpha=0.3, label=self.label(key, dialogue.speaker_name(key)))
                        for key, colour in palette.items()]
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, markerscale=3)
        return self._png(draw, (7.2, 1.2 + 0.35 * (len(tracks) + 1)))

    def pca(self, feature_set: str, x: np.ndarray, labels: list[str]) -> dict:
        """2-D PCA coloured by emotion; no image when fewer than 3 utterances or no variance."""
        if len(x) < 3 or not np.isfinite(x).all() or np.allclose(x.std(axis=0), 0):
            return {"numbers": {"utterances": len(x), "explained_variance_ratio": None}, "image": None}
        from sklearn.decomposition import PCA

        model = PCA(n_components=2, random_state=0)
        points = model.fit_transform(x)

        def draw(fig):
            ax = fig.subplots()
            for i, emotion in enumerate(EMOTIONS):
                pick = np.array([label == emotion for label in labels])
                if pick.any():
                    ax.scatter(points[pick, 0], points[pick, 1], s=14, color=f"C{i}", label=emotion)
            ratio = model.explained_variance_ratio_
            ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
            ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
            ax.set_title(feature_set)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        return {"numbers": {"utterances": len(x), "explained_variance_ratio":
                            [round(float(r), 4) for r in model.explained_variance_ratio_]},
                "image": self._png(draw)}


# ---- html ---------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI','Noto Sans CJK SC',sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:right;vertical-align:top}th{background:#f3f3f3}td.l,th.l{text-align:left}
figure{display:inline-block;margin:.5em 1em .5em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.note{color:#8a5a00;background:#fff6e0;padding:.4em .6em}
details{margin:.5em 0}code{font-size:.9em}
"""


def render_html(data: dict, figures: dict[str, list[tuple[str, str]]]) -> str:
    run = data["run"]
    parts = [f"<h1>m3ed run report</h1><p>{_e(data['out_dir'])} &middot; generated {_e(data['generated'])} &middot; "
             f"{run['dialogues']} dialogues, {run['utterances']} utterances, {run['media_seconds']:.1f} s of dialogue</p>"]
    if not data["cjk_font"]:
        parts.append('<p class="note">No font covering Chinese was found: speakers in the plots are shown by their '
                     "key. Install one (e.g. Debian's fonts-noto-cjk) or set M3ED_FONT to a .ttf/.ttc file.</p>")
    parts += [_run_html(run), _figures(figures.get("run", [])),
              "<h2>Corpus</h2>", _corpus_html(data["corpus"]), _figures(figures.get("corpus", [])),
              "<h2>Feature sets</h2>", _features_html(data["features"]), _figures(figures.get("features", []))]
    if data["asd"]:
        parts += ["<h2>Active speaker detection</h2>", _asd_html(data["asd"]), _figures(figures.get("asd", []))]
    parts += ["<h2>Failures</h2>", _failures_html(data["failures"])]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>m3ed report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _e(value) -> str:
    return html.escape(str(value))


def _num(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _e(value)


def _table(headers: list[str], rows: list[list], table_id: str | None = None, left: int = 1) -> str:
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="l">{_e(c)}</td>' if i < left else f"<td>{_num(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(items: list[tuple[str, str]]) -> str:
    return "".join(f'<figure><img src="data:image/png;base64,{png}" alt="{_e(caption)}">'
                   f"<figcaption>{_e(caption)}</figcaption></figure>" for caption, png in items)


def _run_html(run: dict) -> str:
    stages = _table(["stage", "seconds", "real-time factor", "utterances/s", "cores busy", "GPU busy %", "dialogues done",
                     "skipped", "failed", "reused"],
                    [[s["stage"] + (" (beside the others)" if s["beside_other_stages"] else ""), s["seconds"],
                      s["real_time_factor"], s["utterances_per_second"], s.get("cores_busy"), s.get("gpu_busy_pct"),
                      s["dialogues_done"], s["dialogues_skipped"], s["dialogues_failed"], "yes" if s["reused"] else "no"]
                     for s in run["stages"]],
                    "stages")
    options = {f"{section}.{k}" if isinstance(values, dict) else section: v
               for section, values in run["config"].items()
               for k, v in (values.items() if isinstance(values, dict) else [(section, values)])}
    config = _table(["option", "value"], [[k, json.dumps(v, ensure_ascii=False, default=str)]
                                          for k, v in options.items()], left=2)
    versions = _table(["library", "version"], [[k, v] for k, v in sorted(run["versions"].items())], left=2)
    return (f"<h2>Run</h2><p>package {_e(run['package_version'])}, started {_e(run['started'])}, finished "
            f"{_e(run['finished'])}, {run['total_seconds']:.1f} s in all. Real-time factor: stage seconds per "
            f"second of dialogue processed.</p>{stages}<details><summary>configuration</summary>{config}</details>"
            f"<details><summary>versions</summary>{versions}</details>")


def _corpus_html(stats: dict) -> str:
    columns = list(stats)
    keys = [k for k in stats["total"] if k != "emotions"]
    table2 = _table(["Table 2", *columns], [[k, *[stats[c][k] for c in columns]] for k in keys], "corpus-stats")
    table3 = _table(["Table 3", *columns], [[e, *[stats[c]["emotions"][e] for c in columns]] for e in EMOTIONS],
                    "corpus-emotions")
    return table2 + table3


def _features_html(features: dict) -> str:
    rows = []
    for name, f in features.items():
        frames = f["frames"]
        v = f["values"]
        rows.append([name, f["level"], f["dim"], f"{f['covered']} / {f['utterances']}", f["missing"],
                     frames["total"] if frames else None, frames["mean"] if frames else None,
                     v["nan"], v["inf"], v["min"], v["max"], v["mean"], v["std"]])
    reasons = "".join(f"<li><b>{_e(name)}</b>: " + "; ".join(f"{_e(r)} ({n})" for r, n in f["missing_reasons"].items())
                      + "</li>" for name, f in features.items() if f["missing"])
    return (_table(["feature set", "level", "dim", "covered", "missing", "frames", "frames/utt",
                    "NaN", "Inf", "min", "max", "mean", "std"], rows, "features", left=2)
            + (f"<p>Missing utterances, by reason:</p><ul>{reasons}</ul>" if reasons else ""))


def _asd_html(asd: dict) -> str:
    rows = [["all", asd["frames"], asd["share_with_face"], *asd["share_by_stage"].values()]]
    rows += [[d, s["frames"], s["share_with_face"], *s["share_by_stage"].values()] for d, s in asd["dialogues"].items()]
    return ("<p>Share of utterance frames with a speaker face, by the assignment rule that chose it (none: no decision).</p>"
            + _table(["dialogue", "frames", "with face", *asd["share_by_stage"]], rows, "asd"))


def _failures_html(groups: list[dict]) -> str:
    if not groups:
        return "<p>No failures recorded.</p>"
    rows = [[g["reason"], ", ".join(g["feature_sets"]),
             ", ".join(e["utterance_id"] or e["dialogue_id"] for e in g["examples"]), g["count"]] for g in groups]
    return _table(["reason", "feature sets", "first examples", "count"], rows, "failures", left=3)


# ---- command line -------------------------------------------------------------------------------
def add_report_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="write OUT/report.html (plots, tables) and OUT/report.json for a run")
    p.add_argument("out", type=Path, metavar="OUT", help="output directory of m3ed-extract")
    p.set_defaults(func=run_report)
    return p


def run_report(args: argparse.Namespace) -> int:
    path = write_report(args.out)
    print(f"report: {path}")
    return 0
