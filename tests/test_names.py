"""One meaning per name: a public module-level name (a constant, a function, a class) is defined in one
module of ``orchestrator/`` and ``trainers/`` only, so an import or a search finds the one it means.
The command line's functions and the Python API's are the exception: each is a face (Typer's, Python's)
of the command of its name."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "orchestrator" / "cli" / "app.py"
API = ROOT / "orchestrator" / "api.py"


def public_definitions(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in names if not n.startswith("_") and n not in ("log", "app")]


def repeated(files: list[Path]) -> dict[str, list[str]]:
    where = defaultdict(list)
    for path in files:
        for name in public_definitions(path):
            where[name].append(
                str(path.relative_to(path.parents[2] if path.parent.name != "trainers" else path.parents[1]))
            )
    return {name: paths for name, paths in where.items() if len(paths) > 1}


def test_no_public_name_is_defined_in_two_modules(tmp_path):
    faces = (CLI, API)
    files = [p for package in ("orchestrator", "trainers") for p in (ROOT / package).rglob("*.py") if p not in faces]
    assert repeated(files) == {}
    # the rule catches what it is for: METRICS meaning five metrics here and three there
    for name in ("a", "b"):
        (tmp_path / "pkg" / "sub").mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / "sub" / f"{name}.py").write_text(f"METRICS = {('x',) * (3 if name == 'a' else 5)}\n")
    assert list(repeated(sorted((tmp_path / "pkg" / "sub").glob("*.py")))) == ["METRICS"]


def test_a_preset_a_setting_a_section_and_a_shipped_study_never_share_a_name():
    """``seed`` once meant the run's seed, an augmentation preset and a shipped study; ``model`` a
    section and the setting in it. Each such word now means one thing."""
    from cvstudy.trainers.config import AUG_PRESETS, TrainConfig

    kinds = {
        "preset": set(AUG_PRESETS),
        "setting": set(TrainConfig.keys()),
        "section": set(TrainConfig.SECTIONS),
        "study": {p.stem for p in (ROOT / "studies").glob("*.yaml")},
    }
    for a in kinds:
        for b in kinds:
            assert a == b or not kinds[a] & kinds[b], (a, b, kinds[a] & kinds[b])
