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


def _module_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its body (at the top or inside a
    function); ``m3ed.pipelines.cli`` also imports, by name, the modules of its subcommands."""
    from m3ed.pipelines.cli import SUBCOMMANDS

    paths = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {m: {n for n in _imports(p) if n in paths and n != m} for m, p in paths.items()}
    graph["m3ed.pipelines.cli"] |= {module for module, _, _ in SUBCOMMANDS.values()}
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module == goal:
            return True
        if module not in seen:
            seen.add(module)
            todo += graph.get(module, ())
    return False


CYCLES_REMOVED = [("m3ed.pipelines.extract", "m3ed.pipelines.ray_engine"), ("m3ed.pipelines.finetune", "m3ed.pipelines.cli")]


@pytest.mark.parametrize("first, second", CYCLES_REMOVED)
def test_no_import_cycle_between(first, second):
    """The runner and its engines, and the command line and its subcommands, import in one direction only."""
    graph = _module_graph()
    assert _reaches(graph, second, first) or _reaches(graph, first, second), "the walk sees the modules"
    assert not (_reaches(graph, first, second) and _reaches(graph, second, first))


def test_no_pipelines_module_is_in_an_import_cycle():
    graph = _module_graph()
    cycles = [f"{a} <-> {b}" for a in graph if a.startswith("m3ed.pipelines.") for b in graph[a]
              if _reaches(graph, b, a)]
    assert cycles == []


def test_the_cycle_check_sees_a_cycle():
    """The checks above can fail: an engine importing the job back is a cycle."""
    graph = _module_graph()
    graph["m3ed.pipelines.ray_engine"].add("m3ed.pipelines.extract")
    first, second = CYCLES_REMOVED[0]
    assert _reaches(graph, first, second) and _reaches(graph, second, first)


def test_the_stage_contract_imports_no_stage():
    """``m3ed.stage`` sits below the stages: no import of theirs, not even inside a function."""
    offenders = [name for name in _imports(PACKAGE / "stage.py") if name.startswith(("m3ed.extract", "m3ed.asd"))]
    assert offenders == []


def test_registry_holds_the_builtin_stages_in_run_order():
    import m3ed.extract.face  # noqa: F401  (imported out of order on purpose: the run order must not change)
    import m3ed.asd.stage  # noqa: F401

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
