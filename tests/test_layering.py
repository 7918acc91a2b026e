"""The package's layers: the stage contract sits below the stages, and the library below the CLI."""
import ast
from pathlib import Path

import pytest

from m3ed.stage import register_stage, stage_names, stage_registry

PACKAGE = Path(__file__).resolve().parents[1] / "m3ed"


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
    return names


@pytest.mark.parametrize("layer", ["extract", "asd", "models"])
def test_stages_and_models_never_import_the_pipelines(layer):
    offenders = [f"{path.relative_to(PACKAGE)} imports {name}" for path in sorted((PACKAGE / layer).rglob("*.py"))
                 for name in _imports(path) if name.startswith("m3ed.pipelines")]
    assert offenders == []


def test_the_package_imports_itself_relatively():
    offenders = [f"{path.relative_to(PACKAGE)}" for path in sorted(PACKAGE.rglob("*.py"))
                 for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("m3ed")]
    assert offenders == []


def test_the_import_walk_sees_a_violation(tmp_path):
    """The check above can fail: a module importing upward is reported."""
    bad = PACKAGE / "extract" / "_layering_probe.py"
    bad.write_text("from ..pipelines import cli\n", encoding="utf-8")
    try:
        assert "m3ed.pipelines" in _imports(bad)
    finally:
        bad.unlink()


def test_registry_holds_the_builtin_stages_in_run_order():
    import m3ed.extract.face  # noqa: F401  (imported out of order on purpose: the run order must not change)
    import m3ed.asd.pipeline  # noqa: F401

    registry = stage_registry()
    assert list(registry) == ["text", "audio", "asd", "visual"] and stage_names()[0] == "cut"
    for position, (name, cls) in enumerate(registry.items()):
        assert cls.name == name and all(list(registry).index(n) < position for n in cls.needs)


def test_two_stages_cannot_share_a_name():
    text = stage_registry()["text"]

    class Impostor(text):
        pass

    Impostor.name = "text"
    with pytest.raises(ValueError, match="two stages are named 'text'"):
        register_stage(Impostor)


def test_only_the_commands_parse_arguments():
    """argparse belongs to m3ed.pipelines (the commands); the library is configured with dataclasses."""
    offenders = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
                 if "argparse" in _imports(path) and path.relative_to(PACKAGE).parts[0] != "pipelines"]
    assert offenders == []
    assert "argparse" in _imports(PACKAGE / "pipelines" / "cli.py"), "the walk sees an argparse import"


def test_every_stage_builds_from_its_section_of_the_configuration():
    from m3ed.config import STAGE_SECTIONS, ExtractConfig

    config = ExtractConfig()
    for name, cls in stage_registry().items():
        assert name in STAGE_SECTIONS and isinstance(config.stage_options(name), cls.options)


def test_the_configuration_reads_back_from_its_json(tmp_path):
    """run.json holds asdict(config); the same dataclass tree comes back, tuples included."""
    import json

    from m3ed.config import ExtractConfig

    config = ExtractConfig()
    config.run.stages, config.corpus.dialogues = ("text", "asd"), ("a", "b")
    config.asd.detect_every, config.text.special_tokens, config.media.audio_shift = 3, "drop", 0.0
    back = ExtractConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and back.run.stages == ("text", "asd")
    assert back != ExtractConfig(), "a changed option changes the configuration"


def test_command_line_and_python_api_give_the_same_configuration():
    from m3ed.config import ExtractConfig
    from m3ed.pipelines.cli import build_extract_parser, config_from_args

    parser = build_extract_parser()
    assert config_from_args(parser.parse_args([])) == ExtractConfig()
    args = parser.parse_args(["--stages", "asd,text", "--detect-every", "3", "--no-report", "--strict", "--threads", "2"])
    config = config_from_args(args)
    assert config.run.stages == ("asd", "text") and config.asd.detect_every == 3 and config.run.threads == 2
    assert config.run.report is False and config.corpus.strict is True
