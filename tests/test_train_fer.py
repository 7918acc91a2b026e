"""m3ed train-fer on tiny datasets in each input format, made from a real face; the checkpoint feeds the visual stage."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from m3ed.extract.face import FaceConfig, FaceStage
from m3ed.models.densenet_fer import FER_PLUS_CLASSES, DenseNetFER
from m3ed.pipelines.train_fer import (CHECKPOINT_NAME, METRICS_NAME, FerDataError, add_train_fer_parser,
                                      ferplus_label, load_affectnet, load_datasets, load_ferplus)

AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal"]
FACE = (slice(20, 220), slice(150, 350))  # the astronaut's face in skimage.data.astronaut()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def real_faces(n: int, size: int | None = None) -> list[np.ndarray]:
    """``n`` gray variants of a real face: shifted, mirrored, rotated, brighter or darker."""
    gray = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY)
    faces = []
    for i in range(n):
        dy, dx = 4 * (i % 3), 5 * (i % 4)
        face = gray[20 + dy:220 + dy, 150 + dx:350 + dx]
        if i % 2:
            face = face[:, ::-1]
        rotation = cv2.getRotationMatrix2D((100, 100), 6.0 * (i % 5) - 12, 1.0)
        face = cv2.warpAffine(np.ascontiguousarray(face), rotation, (200, 200), borderMode=cv2.BORDER_REFLECT)
        face = np.clip(face * (0.7 + 0.1 * (i % 6)), 0, 255).astype(np.uint8)
        faces.append(cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA) if size else face)
    return faces


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def one_vote_set(label: int) -> list[int]:
    votes = [0] * 10
    votes[label] = 8
    votes[(label + 1) % 8] = 2
    return votes


@pytest.fixture(scope="module")
def ferplus(tmp_path_factory) -> tuple[Path, Path]:
    """fer2013.csv + fer2013new.csv: one training face per class, 8 validation faces, 1 test face,
    and three rows FER+ drops (no image name, unknown majority, no majority)."""
    root = tmp_path_factory.mktemp("ferplus")
    faces = real_faces(20, 48)
    usages = ["Training"] * 8 + ["PublicTest"] * 8 + ["PrivateTest"] + ["Training"] * 3
    votes = [one_vote_set(i % 8) for i in range(17)]
    votes += [one_vote_set(0), [0] * 8 + [10, 0], [3, 3, 3, 0, 0, 0, 0, 0, 1, 0]]
    names = [f"fer{i:07d}.png" for i in range(20)]
    names[17] = ""  # FER+ removed this image
    pixels = [" ".join(map(str, face.ravel())) for face in faces]
    fer = write_csv(root / "fer2013.csv", ["emotion", "pixels", "Usage"], [[0, p, u] for p, u in zip(pixels, usages)])
    new = write_csv(root / "fer2013new.csv", ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness",
                                              "anger", "disgust", "fear", "contempt", "unknown", "NF"],
                    [[u, n, *v] for u, n, v in zip(usages, names, votes)])
    return fer, new


@pytest.fixture(scope="module")
def affectnet_folders(tmp_path_factory) -> Path:
    """DIR/{train,val}/{class}/*.jpg, classes as AffectNet codes in train and as names in val."""
    root = tmp_path_factory.mktemp("affectnet_dirs")
    faces = iter(real_faces(18))
    for code in range(9):  # code 8 ("none") is not an expression and is dropped
        (root / "train" / str(code)).mkdir(parents=True)
        cv2.imwrite(str(root / "train" / str(code) / f"{code}.jpg"), next(faces))
    for name in ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt", "angry"):
        (root / "val" / name).mkdir(parents=True)
        cv2.imwrite(str(root / "val" / name / "a.jpg"), next(faces))
    return root


@pytest.fixture(scope="module")
def affectnet_csv(tmp_path_factory) -> tuple[Path, Path, Path]:
    """training.csv / validation.csv over whole photos, the face given by its box (as AffectNet does)."""
    root = tmp_path_factory.mktemp("affectnet_csv")
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    (root / "images" / "101").mkdir(parents=True)
    files = []
    for i, face in enumerate(real_faces(17)):
        picture = photo.copy()
        picture[FACE] = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(root / "images" / "101" / f"img{i}.jpg"), picture)
        files.append(f"101/img{i}.jpg")
    row = lambda i, code: [files[i], 150, 20, 200, 200, "1;2;3", code, 0.1, -0.2]  # noqa: E731
    train = write_csv(root / "training.csv", AFFECTNET_HEADER, [row(i, i) for i in range(8)] + [row(8, 9)])
    val = write_csv(root / "validation.csv", AFFECTNET_HEADER, [row(9 + i, i) for i in range(8)])
    return train, val, root / "images"


def test_ferplus_majority_rule():
    assert ferplus_label([6, 0, 1, 1, 0, 0, 0, 0, 2, 0]) == 0      # single votes are outliers
    assert ferplus_label([4, 0, 0, 1, 3, 2, 0, 0, 0, 0]) is None   # 4 of 9 is no majority
    assert ferplus_label([0, 0, 0, 0, 0, 0, 0, 0, 10, 0]) is None  # unknown
    assert ferplus_label([0, 1, 0, 0, 0, 0, 0, 0, 0, 9]) is None   # not a face
    assert ferplus_label([0, 0, 0, 0, 0, 0, 0, 7, 3, 0]) == 7      # contempt


def test_load_ferplus(ferplus):
    data = load_ferplus(*ferplus)
    assert {split: len(faces) for split, faces in data.items()} == {"train": 8, "val": 8, "test": 1}
    assert data["train"].images.shape == (8, 64, 64) and data["train"].images.dtype == np.uint8
    assert data["train"].labels.tolist() == list(range(8))


def test_load_affectnet_folders_remaps_to_ferplus_order(affectnet_folders):
    data = load_affectnet(affectnet_folders)
    # codes 0..7 = neutral, happy, sad, surprise, fear, disgust, anger, contempt -> FER+ indices
    assert sorted(data["train"].labels.tolist()) == list(range(8))
    by_name = dict(zip(sorted(("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt", "angry")),
                       data["val"].labels.tolist()))
    assert by_name["sad"] == FER_PLUS_CLASSES.index("sadness") and by_name["angry"] == FER_PLUS_CLASSES.index("anger")


def test_load_affectnet_csv_crops_the_face_box(affectnet_csv):
    train_csv, val_csv, images = affectnet_csv
    train = load_affectnet(train_csv, images)["train"]
    assert len(train) == 8  # expression 9 (uncertain) dropped
    assert train.labels.tolist() == [0, 1, 3, 2, 6, 5, 4, 7]
    assert set(load_affectnet(val_csv, images)) == {"val"}


def test_bad_inputs_are_explained(tmp_path, ferplus):
    with pytest.raises(FerDataError, match="missing columns"):
        load_ferplus(ferplus[1], ferplus[0])
    with pytest.raises(FerDataError, match="no train/ or val/"):
        load_affectnet(tmp_path)
    args = argparse.Namespace(ferplus_csv=str(ferplus[0]), ferplus_labels=None, affectnet=None, affectnet_images=None)
    with pytest.raises(FerDataError, match="both"):
        load_datasets(args)


def test_combined_datasets_as_in_table_7(ferplus, affectnet_folders):
    args = argparse.Namespace(ferplus_csv=str(ferplus[0]), ferplus_labels=str(ferplus[1]),
                              affectnet=[str(affectnet_folders)], affectnet_images=None)
    data = load_datasets(args)
    assert {split: len(faces) for split, faces in data.items()} == {"train": 16, "val": 17, "test": 1}


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="m3ed")
    add_train_fer_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("fmt", ["ferplus", "affectnet_folders", "affectnet_csv"])
def test_train_a_few_steps_then_extract_with_the_checkpoint(fmt, request, tmp_path):
    if fmt == "ferplus":
        fer, new = request.getfixturevalue("ferplus")
        data = ["--ferplus-csv", str(fer), "--ferplus-labels", str(new)]
    elif fmt == "affectnet_folders":
        data = ["--affectnet", str(request.getfixturevalue("affectnet_folders"))]
    else:
        train_csv, val_csv, images = request.getfixturevalue("affectnet_csv")
        data = ["--affectnet", str(train_csv), "--affectnet", str(val_csv), "--affectnet-images", str(images)]
    out = tmp_path / "fer"
    assert run_cli(["train-fer", *data, "--out", str(out), "--epochs", "1", "--batch-size", "4", "--max-steps", "1"]) == 0

    metrics = json.loads((out / METRICS_NAME).read_text())
    assert metrics["steps"] == 1 and set(metrics["val"]) == {"WA", "UA", "F1", "n"} and metrics["val"]["n"] >= 8
    assert 0.0 <= metrics["val"]["WA"] <= 1.0
    state = DenseNetFER.from_checkpoint(out / CHECKPOINT_NAME).state_dict()  # strict: the authors' key set
    assert all(k.startswith(("features.", "classifier.")) for k in state)

    stage = FaceStage(FaceConfig(checkpoint=str(out / CHECKPOINT_NAME)))
    assert stage.provenance()["checkpoint_sha256"] and len(stage.provenance()["checkpoint_sha256"]) == 16
    features = stage.features({"u": real_faces(2, 64)})["u"]
    assert features.shape == (2, 342) and np.isfinite(features).all()
