"""``m3ed train-fer``: train the authors' DenseNet-BC-100 facial-expression model (paper A.2, Table 7).

The M3ED authors' FER checkpoint is not public, so the visual stage's ``paper`` profile needs one
made here. Data, separately or combined as in Table 7 (8 classes in FER+ order):

- FER+: ``fer2013.csv`` (``emotion,pixels,Usage``: 48x48 space-separated gray pixels; Usage
  Training / PublicTest / PrivateTest -> train / val / test) with the FER+ vote counts
  ``fer2013new.csv`` (``Usage,Image name,neutral,...,contempt,unknown,NF``, same row order).
  Labels by FER+'s majority rule: votes of 1 are dropped as outliers, the top class needs more
  than half of the remaining votes; rows without an image name, without a majority, or whose
  majority is unknown / not-a-face are dropped.
- AffectNet: image folders ``DIR/{train,val}/{class}/*.jpg`` (class = AffectNet code 0-7 or a name
  such as ``happy``), or its CSV (``subDirectory_filePath,face_x,face_y,face_width,face_height,
  facial_landmarks,expression,...``; images under ``--affectnet-images``, default the CSV's folder;
  the face box is cropped when given; a CSV whose name contains "val" is the validation split).
  Codes 0-7 are neutral, happy, sad, surprise, fear, disgust, anger, contempt (remapped to the FER+
  order); 8-10 (none, uncertain, no face) are dropped.

Training follows the authors' ``code/denseface`` (AIM3-RUC/MEmoBert): Adam, lr 1e-3 halved every 40
epochs, batch 64, cross-entropy, augmentation by zero-padding 8 px + random 64x64 crop, horizontal
flip and a rotation of up to 15 degrees; the epoch with the best validation macro-F1 is kept.
Metrics, with the authors' definitions: WA = overall accuracy (``accuracy_score``), UA = macro
recall, F1 = macro F1 (the paper's 63.54 / 52.94 on the combined validation set are WA / F1).

Outputs in ``--out``: ``densenet_fer.pt`` (a plain state dict with ``features.*`` and
``classifier.*``, the authors' format, loadable by ``--fer-checkpoint``) and ``metrics.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score
from torch import nn

from ..files import atomic_open, atomic_write_text, make_folder
from ..models.densenet_fer import FACE_SIZE, FER_PLUS_CLASSES, M3ED_FACE_MEAN, M3ED_FACE_STD, DenseNetFER, preprocess

CHECKPOINT_NAME, METRICS_NAME = "densenet_fer.pt", "metrics.json"
FERPLUS_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_VOTE_COLUMNS = FER_PLUS_CLASSES + ("unknown", "NF")
#: AffectNet expression code -> FER+ class index (codes 8-10 are not expressions and are dropped).
AFFECTNET_TO_FERPLUS = {0: 0, 1: 1, 2: 3, 3: 2, 4: 6, 5: 5, 6: 4, 7: 7}
#: Folder names accepted for AffectNet classes, besides the codes themselves.
CLASS_NAMES = {
    **{name: i for i, name in enumerate(FER_PLUS_CLASSES)},
    "happy": 1, "sad": 3, "angry": 4, "disgusted": 5, "fearful": 6, "surprised": 2,
    "neu": 0, "hap": 1, "sur": 2, "ang": 4, "dis": 5, "fea": 6, "con": 7,
}
AUGMENT_PAD, AUGMENT_MAX_ROTATION = 8, 15  # the authors' augmentation (pixels, degrees)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class FerDataError(ValueError):
    """A FER dataset file is missing or not in the expected format."""


@dataclass
class FaceSet:
    """Gray 64x64 uint8 faces with FER+ class indices."""

    images: np.ndarray   # [N, 64, 64] uint8
    labels: np.ndarray   # [N] int64

    @staticmethod
    def empty() -> "FaceSet":
        return FaceSet(np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8), np.zeros(0, np.int64))

    def __add__(self, other: "FaceSet") -> "FaceSet":
        return FaceSet(np.concatenate([self.images, other.images]), np.concatenate([self.labels, other.labels]))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class FerTrainConfig:
    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    lr_half_every: int = 40          # epochs between halvings of the learning rate (authors: 40)
    patience: int = 8                # epochs without a better validation F1 before stopping (authors: 8)
    max_steps: int | None = None     # stop after this many optimiser steps (smoke tests)
    mean: float = M3ED_FACE_MEAN     # normalisation; keep the visual stage's --fer-mean/--fer-std equal
    std: float = M3ED_FACE_STD
    device: str = "cpu"
    seed: int = 0


# ---- data ---------------------------------------------------------------------------------------
def to_face(gray: np.ndarray) -> np.ndarray:
    interpolation = cv2.INTER_AREA if gray.shape[0] > FACE_SIZE else cv2.INTER_LINEAR
    return cv2.resize(gray, (FACE_SIZE, FACE_SIZE), interpolation=interpolation)


def ferplus_label(votes: list[float]) -> int | None:
    """FER+ majority label over the 10 vote columns, or None when the row is dropped."""
    kept = [v if v > 1 else 0.0 for v in votes]  # a single vote is an outlier (FER+ reference code)
    total = sum(kept)
    if total <= 0 or max(kept) <= total / 2:
        return None
    best = int(np.argmax(kept))
    return best if best < len(FER_PLUS_CLASSES) else None  # unknown / not a face


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise FerDataError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise FerDataError(f"{path}: missing columns {missing}; found {header}")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def load_ferplus(pixels_csv: str | Path, labels_csv: str | Path) -> dict[str, FaceSet]:
    """FER2013 pixels + FER+ votes -> split -> faces (see the module docstring)."""
    pixels_csv, labels_csv = Path(pixels_csv), Path(labels_csv)
    images = _read_csv(pixels_csv, ("pixels", "Usage"))
    votes = _read_csv(labels_csv, ("Usage", "Image name") + FERPLUS_VOTE_COLUMNS)
    if len(images) != len(votes):
        raise FerDataError(f"{labels_csv} has {len(votes)} rows but {pixels_csv} has {len(images)}; "
                           f"FER+ labels must be row-aligned with fer2013.csv")
    faces: dict[str, list] = {}
    for line, (image, vote) in enumerate(zip(images, votes), start=2):
        if not vote["Image name"]:
            continue  # FER+ removed this image
        label = ferplus_label([float(vote[c] or 0) for c in FERPLUS_VOTE_COLUMNS])
        split = FERPLUS_USAGE.get(vote["Usage"])
        if label is None or split is None:
            continue
        pixels = np.array(image["pixels"].split(), dtype=np.uint8)
        if pixels.size != 48 * 48:
            raise FerDataError(f"{pixels_csv}:{line}: {pixels.size} pixels, expected 48x48 = 2304")
        faces.setdefault(split, []).append((to_face(pixels.reshape(48, 48)), label))
    return {split: _face_set(items) for split, items in faces.items()}


def _face_set(items: list[tuple[np.ndarray, int]]) -> FaceSet:
    if not items:
        return FaceSet.empty()
    return FaceSet(np.stack([i for i, _ in items]), np.array([label for _, label in items], np.int64))


def _read_gray(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)  # imdecode: works for non-ASCII paths too
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise FerDataError(f"{path}: not a readable image")
    return image


def _affectnet_class(name: str, where: Path) -> int | None:
    if name.isdigit():
        return AFFECTNET_TO_FERPLUS.get(int(name))
    if name.lower() in CLASS_NAMES:
        return CLASS_NAMES[name.lower()]
    raise FerDataError(f"{where}: unknown class folder {name!r}; use AffectNet codes 0-7 or one of {sorted(CLASS_NAMES)}")


def load_affectnet(source: str | Path, images_root: str | Path | None = None) -> dict[str, FaceSet]:
    """AffectNet image folders or CSV -> split -> faces (see the module docstring)."""
    source = Path(source)
    if source.is_dir():
        return _affectnet_folders(source)
    if source.suffix.lower() == ".csv":
        split = "val" if "val" in source.stem.lower() else "train"
        return {split: _affectnet_csv(source, Path(images_root) if images_root else source.parent)}
    raise FerDataError(f"{source}: not an AffectNet folder (DIR/train/CLASS/*.jpg) or CSV file")


def _affectnet_folders(root: Path) -> dict[str, FaceSet]:
    found = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            continue
        items = []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            label = _affectnet_class(class_dir.name, class_dir)
            if label is None:
                continue
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    items.append((to_face(_read_gray(path)), label))
        found[split] = _face_set(items)
    if not found:
        raise FerDataError(f"{root}: no train/ or val/ folder; expected {root}/{{train,val}}/{{class}}/*.jpg")
    return found


def _affectnet_csv(path: Path, images_root: Path) -> FaceSet:
    items = []
    for line, row in enumerate(_read_csv(path, ("subDirectory_filePath", "expression")), start=2):
        if not row["expression"].isdigit():
            raise FerDataError(f"{path}:{line}: expression {row['expression']!r} is not an AffectNet code 0-10")
        label = AFFECTNET_TO_FERPLUS.get(int(row["expression"]))
        if label is None:
            continue
        image = _read_gray(images_root / row["subDirectory_filePath"])
        box = [row.get(k, "") for k in ("face_x", "face_y", "face_width", "face_height")]
        if all(v.replace(".", "", 1).isdigit() for v in box):
            x, y, w, h = (int(float(v)) for v in box)
            if w > 0 and h > 0:
                image = image[y:y + h, x:x + w]
        if image.size == 0:
            raise FerDataError(f"{path}:{line}: the face box {box} lies outside the image")
        items.append((to_face(image), label))
    return _face_set(items)


def load_datasets(args: argparse.Namespace) -> dict[str, FaceSet]:
    """The union of every requested dataset, per split."""
    parts: list[dict[str, FaceSet]] = []
    if args.ferplus_csv or args.ferplus_labels:
        if not (args.ferplus_csv and args.ferplus_labels):
            raise FerDataError("FER+ needs both --ferplus-csv fer2013.csv and --ferplus-labels fer2013new.csv")
        parts.append(load_ferplus(args.ferplus_csv, args.ferplus_labels))
    for source in args.affectnet or []:
        parts.append(load_affectnet(source, args.affectnet_images))
    if not parts:
        raise FerDataError("no training data: give --ferplus-csv/--ferplus-labels and/or --affectnet")
    merged: dict[str, FaceSet] = {}
    for part in parts:
        for split, faces in part.items():
            merged[split] = merged.get(split, FaceSet.empty()) + faces
    return merged


# ---- training -----------------------------------------------------------------------------------
def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The authors' augmentation: zero-pad, random crop back to 64x64, random flip, small rotation."""
    out = np.empty_like(images)
    padded = np.pad(images, ((0, 0), (AUGMENT_PAD, AUGMENT_PAD), (AUGMENT_PAD, AUGMENT_PAD)))
    centre = (FACE_SIZE / 2, FACE_SIZE / 2)
    for i in range(len(images)):
        y, x = rng.integers(0, 2 * AUGMENT_PAD + 1, size=2)
        face = padded[i, y:y + FACE_SIZE, x:x + FACE_SIZE]
        if rng.random() < 0.5:
            face = face[:, ::-1]
        angle = float(rng.integers(-AUGMENT_MAX_ROTATION, AUGMENT_MAX_ROTATION + 1))
        out[i] = cv2.warpAffine(np.ascontiguousarray(face), cv2.getRotationMatrix2D(centre, angle, 1.0),
                                (FACE_SIZE, FACE_SIZE))
    return out


@torch.inference_mode()
def evaluate(model: DenseNetFER, faces: FaceSet, config: FerTrainConfig) -> dict[str, float]:
    """WA (accuracy), UA (macro recall) and F1 (macro), as the authors report them."""
    model.eval()
    predictions = []
    for first in range(0, len(faces), 256):
        x = preprocess(faces.images[first:first + 256], config.mean, config.std).to(config.device)
        predictions.append(model(x).argmax(dim=1).cpu().numpy())
    predicted = np.concatenate(predictions)
    labels = list(range(len(FER_PLUS_CLASSES)))
    return {"WA": float(accuracy_score(faces.labels, predicted)),
            "UA": float(recall_score(faces.labels, predicted, labels=labels, average="macro", zero_division=0)),
            "F1": float(f1_score(faces.labels, predicted, labels=labels, average="macro", zero_division=0)),
            "n": int(len(faces))}


def train(data: dict[str, FaceSet], config: FerTrainConfig, out_dir: str | Path) -> dict:
    """Train, keep the best epoch by validation F1, write the checkpoint and metrics; return the metrics."""
    if "train" not in data or len(data["train"]) == 0:
        raise FerDataError("no training images after filtering (check the files and their Usage/split columns)")
    out_dir = Path(out_dir)
    make_folder(out_dir)   # now: a folder that cannot be made stops the run before training
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = DenseNetFER().to(config.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=config.lr_half_every, gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()
    trainset, valset = data["train"], data.get("val")
    best, best_state, history, steps, waited = None, None, [], 0, 0
    started = time.time()
    for epoch in range(config.epochs):
        model.train()
        order = rng.permutation(len(trainset))
        for first in range(0, len(order), config.batch_size):
            batch = order[first:first + config.batch_size]
            x = preprocess(augment(trainset.images[batch], rng), config.mean, config.std).to(config.device)
            y = torch.from_numpy(trainset.labels[batch]).to(config.device)
            loss = loss_fn(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            steps += 1
            if config.max_steps and steps >= config.max_steps:
                break
        schedule.step()
        val = evaluate(model, valset, config) if valset is not None and len(valset) else None
        history.append({"epoch": epoch, "steps": steps, "loss": float(loss.detach()), "val": val})
        print(f"epoch {epoch}: loss {float(loss.detach()):.4f}" + (f", val WA {val['WA']:.4f} F1 {val['F1']:.4f}" if val else ""))
        if val is None or best is None or val["F1"] > best["F1"]:  # without validation: the latest epoch
            best, best_state, waited = {"epoch": epoch, "F1": val["F1"] if val else None, "val": val}, _copy_state(model), 0
        else:
            waited += 1
        if waited > config.patience or (config.max_steps and steps >= config.max_steps):
            break
    with atomic_open(out_dir / CHECKPOINT_NAME) as f:   # a killed run never leaves half a checkpoint
        torch.save(best_state, f)   # to a file, not a path: torch's own writer hides a full disk
    model.load_state_dict(best_state)
    metrics = {
        "checkpoint": str(out_dir / CHECKPOINT_NAME), "classes": list(FER_PLUS_CLASSES), "config": asdict(config),
        "sizes": {split: len(faces) for split, faces in data.items()},
        "best_epoch": best["epoch"], "steps": steps, "seconds": round(time.time() - started, 1),
        "val": best["val"],  # computed on the kept weights during training
        "test": evaluate(model, data["test"], config) if len(data.get("test", FaceSet.empty())) else None,
        "history": history,
        "metric_definitions": {"WA": "overall accuracy", "UA": "macro recall", "F1": "macro F1"},
    }
    atomic_write_text(out_dir / METRICS_NAME, json.dumps(metrics, indent=2) + "\n")
    return metrics


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


# ---- command line -------------------------------------------------------------------------------
def add_train_fer_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train-fer", help="train the DenseNet FER model (FER+ and/or AffectNet) for the visual stage",
        description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data (FER+, AffectNet, or both combined)")
    data.add_argument("--ferplus-csv", metavar="fer2013.csv", help="FER2013 pixels (emotion,pixels,Usage)")
    data.add_argument("--ferplus-labels", metavar="fer2013new.csv", help="FER+ vote counts, row-aligned with fer2013.csv")
    data.add_argument("--affectnet", metavar="DIR_OR_CSV", action="append",
                      help="AffectNet DIR/{train,val}/{class}/*.jpg, or training.csv / validation.csv (repeatable)")
    data.add_argument("--affectnet-images", metavar="DIR", help="root of the AffectNet CSV's subDirectory_filePath")
    parser.add_argument("--out", required=True, metavar="DIR", help=f"writes {CHECKPOINT_NAME} and {METRICS_NAME}")
    defaults = FerTrainConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="most epochs (authors: 200)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="authors: 64")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate, halved every 40 epochs")
    parser.add_argument("--patience", type=int, default=defaults.patience,
                        help="stop after this many epochs without a better validation macro-F1")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    parser.add_argument("--mean", type=float, default=defaults.mean, help="gray-value normalisation mean")
    parser.add_argument("--std", type=float, default=defaults.std, help="gray-value normalisation std")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run_train_fer)
    return parser


def run_train_fer(args: argparse.Namespace) -> int:
    config = FerTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                         max_steps=args.max_steps, mean=args.mean, std=args.std, device=args.device, seed=args.seed)
    data = load_datasets(args)
    print("images: " + ", ".join(f"{split} {len(faces)}" for split, faces in sorted(data.items())))
    metrics = train(data, config, args.out)
    if metrics["val"]:
        print(f"validation: WA {metrics['val']['WA'] * 100:.2f}  UA {metrics['val']['UA'] * 100:.2f}  "
              f"F1 {metrics['val']['F1'] * 100:.2f}  (best epoch {metrics['best_epoch']})")
    print(f"checkpoint: {metrics['checkpoint']} (use with --fer-checkpoint)")
    return 0
