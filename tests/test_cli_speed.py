"""The command line starts fast: its options come from modules that import no model code (torch,
transformers, the ASD stack); a stage's module loads only when a command runs it."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HELP_CPU_SECONDS = 1.0
HEAVY = ("torch", "transformers", "torchvision", "cv2", "facenet_pytorch", "m3ed.extract.text", "m3ed.extract.audio",
         "m3ed.extract.face", "m3ed.asd.stage", "m3ed.asd.pipeline")


def _child_cpu_seconds(code: str, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """User + system CPU time of a fresh ``python -c code args`` (CPU, not wall: a busy machine does not count)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done


@pytest.mark.parametrize("command, main", [("m3ed", "main"), ("m3ed-extract", "extract_main")])
def test_help_takes_under_a_second_of_cpu(command, main):
    # What the console scripts run (pyproject.toml [project.scripts]).
    code = f"import sys; from m3ed.pipelines.cli import {main}; sys.argv[0] = {command!r}; sys.exit({main}())"
    seconds, done = _child_cpu_seconds(code, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"usage: {command}" in done.stdout
    assert seconds <= HELP_CPU_SECONDS, f"{command} --help took {seconds:.2f} s of CPU"


def test_building_the_parsers_imports_no_model_code():
    code = ("import json, sys; from m3ed.pipelines.cli import build_extract_parser, build_parser; "
            "build_parser(); build_extract_parser(); import m3ed.config; m3ed.config.ExtractConfig(); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    _, done = _child_cpu_seconds(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == []


def test_the_check_sees_model_code():
    """The check above can fail: asking for a stage's class loads its module, and torch with it."""
    code = ("import json, sys; from m3ed.stage import stage_class; stage_class('text'); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    _, done = _child_cpu_seconds(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"torch", "m3ed.extract.text"} <= set(json.loads(done.stdout))


def test_every_subcommand_is_built_from_its_module_when_named():
    """``m3ed --help`` lists each subcommand with the help line of the table in m3ed.pipelines.cli; naming
    the command builds its module's own parser, whose name and help line are the table's."""
    from m3ed.pipelines.cli import SUBCOMMANDS, build_parser

    for name, (_, _, help_line) in SUBCOMMANDS.items():
        choices = _subcommand_choices(build_parser(name))
        assert choices[name] == help_line, f"m3ed {name}: the module's help line differs from SUBCOMMANDS"
        assert _subcommand_choices(build_parser())[name] == help_line
        with pytest.raises(SystemExit) as exit_:
            build_parser(name).parse_args([name, "--help"])
        assert exit_.value.code == 0


def _subcommand_choices(parser) -> dict[str, str]:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {choice.dest: choice.help for choice in action._choices_actions}


def test_light_copies_of_constants_match_the_modules_that_import_torch():
    """The option defaults that cannot import their home modules (torch) keep the same values."""
    from m3ed.config import PRECISIONS
    from m3ed.device import PRECISIONS as DEVICE_PRECISIONS
    from m3ed.extract.options import AUTHORS_FACE_MEAN, AUTHORS_FACE_STD
    from m3ed.models.densenet_fer import M3ED_FACE_MEAN, M3ED_FACE_STD

    assert PRECISIONS == DEVICE_PRECISIONS
    assert (AUTHORS_FACE_MEAN, AUTHORS_FACE_STD) == (M3ED_FACE_MEAN, M3ED_FACE_STD)
