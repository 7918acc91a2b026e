"""The Python API: a run configured with ExtractConfig, no command line, recorded in run.json."""
import json

import h5py

from m3ed.config import ExtractConfig
from m3ed.pipelines.extract import extract, media_of_run


def test_a_notebook_runs_the_pipeline_and_run_json_reads_back(tmp_path, models_cache):
    config = ExtractConfig()
    config.run.out, config.run.profile, config.run.stages = str(tmp_path / "out"), "tiny", ("text",)
    config.run.progress, config.run.device, config.run.threads = False, "cpu", 1
    config.corpus.dialogues = ("sampleshow_1",)
    config.text.special_tokens = "drop"
    record = extract(config)
    assert record["complete"] and record["stages"]["text"]["dialogues_done"] == 1
    with h5py.File(tmp_path / "out" / "features" / "roberta_frame.h5") as h5:
        assert h5.attrs["special_tokens"] == "drop"
    saved = json.loads((tmp_path / "out" / "run.json").read_text())["config"]
    back = ExtractConfig.from_dict(saved)
    assert back.text.special_tokens == "drop" and back.run.stages == ("text",)
    assert back.corpus.annotations.endswith("annotation.json"), "the sample's files, resolved, are recorded"
    assert media_of_run(tmp_path / "out").videos_dir.name == "videos", "the videos the run used, from run.json"
