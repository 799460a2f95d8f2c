"""The package map (DESIGN §8) holds: the core `cdp` imports no feature package except in
the composition root (`cdp/app.py`, `cdp/cli.py`); `ingestion` and `rules` import only the
core; `activation` imports the core and the published data types of `rules`
(`rules.changes`); no route module imports the composition root."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ("ingestion", "rules", "activation")
COMPOSITION_ROOT = {"cdp/app.py", "cdp/cli.py"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def modules(package: str) -> dict[str, set[str]]:
    return {
        str(path.relative_to(ROOT)): imports(path)
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def top(name: str) -> str:
    return name.split(".")[0]


def test_the_core_imports_no_feature_package_outside_the_composition_root() -> None:
    wrong = {
        module: sorted(name for name in names if top(name) in FEATURES)
        for module, names in modules("cdp").items()
        if module not in COMPOSITION_ROOT
    }
    assert {module: names for module, names in wrong.items() if names} == {}


def test_ingestion_and_rules_import_only_the_core() -> None:
    for package, others in (("ingestion", ("rules", "activation")), ("rules", ("ingestion",
                            "activation"))):  # fmt: skip
        wrong = {m: sorted(n for n in names if top(n) in others)
                 for m, names in modules(package).items()}  # fmt: skip
        assert {m: n for m, n in wrong.items() if n} == {}, package


def test_activation_takes_only_published_types_from_rules() -> None:
    for module, names in modules("activation").items():
        assert not [n for n in names if top(n) == "ingestion"], module
        assert not [n for n in names if top(n) == "rules" and n != "rules.changes"], module


def test_no_route_module_reaches_for_the_composition_root() -> None:
    for module, names in {**modules("cdp/api"), **modules("ingestion")}.items():
        assert not {"cdp.app", "cdp.cli"} & names, module


def test_the_map_sees_every_package() -> None:
    assert "cdp/app.py" in modules("cdp") and "ingestion/routes.py" in modules("ingestion")
    assert "cdp.settings" in imports(ROOT / "cdp" / "app.py")
