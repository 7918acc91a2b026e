"""The asd stage: :class:`m3ed.asd.pipeline.AsdPipeline` over a run's dialogues, its output written.

Per dialogue: the feature set ``speaker_faces`` (per utterance float32 ``[T, 9]``, columns
:data:`m3ed.asd.assign.COLUMNS`) and ``OUT/asd/{dialogue}.json`` (:mod:`m3ed.asd.faces`), written
atomically. The stage is built from the run's ``asd`` options (:class:`m3ed.asd.options.AsdOptions`);
a bad value or missing weights stop the run before any work, with a message that names the flag.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..corpus import Dialogue
from ..errors import ConfigurationError
from ..media import MediaError
from ..stage import DialogueResult, RunContext, Stage, failed_dialogue, register_stage
from ..store import Failure, atomic_write_text
from .assign import COLUMNS, RULE_NAMES
from .detectors import detector_provenance
from .crop import TrackCrops
from .faces import FEATURE_SET, DialogueFaces, tracks_path
from .find import FrontHalf
from .options import AsdConfig, AsdOptions, with_flags
from .pipeline import AsdPipeline
from .score import checkpoint_provenance
from .speaker_crops import crops_path, speaker_crops


@register_stage
class AsdStage(Stage):
    name = "asd"
    feature_sets = (FEATURE_SET,)
    options = AsdOptions

    def __init__(self, config: AsdConfig, profile, device: str = "cpu", out_dir: str | Path | None = None,
                 precision: str = "fp32"):
        self.config = config
        self.profile = profile
        self.out_dir = Path(out_dir) if out_dir else None
        self.precision = precision
        self.pipeline = AsdPipeline(config, profile, device, precision)
        # recorded now: close() releases the models
        embedder = self.pipeline.embedder
        self.embedder_provenance = {"face_embedder": embedder.name, "face_embedder_weights": embedder.source,
                                    "face_embedder_authors_cast": embedder.authors_cast}
        self.detector_provenance = detector_provenance(config, profile)

    @classmethod
    def from_config(cls, options: AsdOptions, context: RunContext) -> "AsdStage":
        config = options.config(context.profile, context.media.timing.fps)
        try:
            return cls(config, context.profile, context.device, context.store.root, precision=context.precision)
        except ConfigurationError as e:   # missing weights: the message names the flags that provide them
            raise type(e)(with_flags(str(e))) from e

    def provenance(self) -> dict:
        c = self.config
        return {"preset": c.preset, **self.detector_provenance, "asd_model": c.model,
                **checkpoint_provenance(self.profile, c.model, c.checkpoint),
                **self.embedder_provenance,
                "detection": asdict(c.detector_params), "shots": asdict(c.shots), "tracking": asdict(c.tracking),
                "scoring": asdict(c.scoring), "assign": asdict(c.assign), "embed_every": c.embed_every,
                "embed_frames": c.embed_frames, "fps": c.fps,
                **({"precision": self.precision} if self.precision != "fp32" else {})}

    def attrs(self, feature_set: str) -> dict:
        return {"columns": list(COLUMNS), "frame_rate": self.config.fps, "box_units": "native video pixels",
                "asd_model": self.config.model, "assign_rules": self.config.assign.rules,
                "stage_codes": ", ".join(f"{code} {name}" for code, name in RULE_NAMES.items())}

    def process(self, dialogues: list[Dialogue], context: RunContext,
                prepared: Mapping[str, Any] | None = None) -> Iterator[DialogueResult]:
        for dialogue in dialogues:
            try:
                found = (prepared or {}).get(dialogue.id)
                if isinstance(found, BaseException):   # the worker's error for this dialogue
                    raise found
                faces, speaker_faces, crops = self.pipeline.run(dialogue, context.media, found=found,
                                                                fer=context.fer_crop)
            except (MediaError, OSError) as e:
                yield failed_dialogue(dialogue, f"asd: {e}")
                continue
            self._write_tracks(faces)
            if context.fer_crop:
                self._leave_crops(context, dialogue, faces, speaker_faces, crops)
            yield self._result(dialogue, speaker_faces)

    def host_work(self, context: RunContext) -> FrontHalf:
        return self.pipeline.front_half(context.fer_crop)

    def _leave_crops(self, context: RunContext, dialogue: Dialogue, faces: DialogueFaces,
                     speaker_faces: dict[str, np.ndarray], crops: TrackCrops) -> None:
        """The speaker's FER crops, for the visual stage that follows in this run."""
        handed = speaker_crops(speaker_faces, faces.tracks, crops, *context.fer_crop)
        if handed is not None:
            handed.save(crops_path(context.store, dialogue.id))

    def _result(self, dialogue: Dialogue, speaker_faces: dict[str, np.ndarray]) -> DialogueResult:
        result = DialogueResult(dialogue.id, features={FEATURE_SET: {}})
        for u in dialogue.utterances:
            rows = speaker_faces.get(u.id)
            if rows is None or len(rows) == 0:
                result.failures.append(Failure(FEATURE_SET, dialogue.id, u.id,
                                               "utterance covers no video frame (empty or outside the dialogue)"))
            else:
                result.features[FEATURE_SET][u.id] = np.asarray(rows, np.float32)
        return result

    def _write_tracks(self, faces: DialogueFaces) -> None:
        if self.out_dir is None:
            return
        path = tracks_path(self.out_dir, faces.dialogue_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, faces.to_json())

    def close(self) -> None:
        self.pipeline.close()
