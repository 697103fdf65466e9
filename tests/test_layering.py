"""The package's layers: data -> models -> training | inference | validation -> analysis -> CLIs; nothing imports
upward or sideways (docs/DESIGN.md, section 2). Checked on every import statement, function-level ones included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vqvae_transformer"
# Sub-package -> layer. Top-level modules (errors, atomic, layout, cli, output_folder, images, figures, hub, ...)
# are the base layer 0: they import nothing above themselves.
LAYERS = {"data": 1, "models": 2, "training": 3, "inference": 3, "validation": 3, "analysis": 4}


def _part(module: str) -> str | None:
    """The sub-package of a dotted name inside vqvae_transformer (None for a top-level module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted module) of every vqvae_transformer import in ``path``."""
    here = ("vqvae_transformer", *path.relative_to(PACKAGE).with_suffix("").parts)
    package = here[:-1] if path.name != "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join((*base, node.module)) if node.module else ".".join(base)
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names if n.startswith("vqvae_transformer.")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("vqvae_transformer.")]
    return found


def test_no_module_imports_a_higher_or_sibling_layer():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _part("vqvae_transformer." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts) + ".x")
        own_layer = LAYERS.get(own, 0)
        for line, target in _imports(path):
            other = _part(target + ".x") if target.count(".") == 1 else _part(target)
            if other is None or other == own:
                continue
            if LAYERS[other] >= own_layer:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} ({other}, layer "
                           f"{LAYERS[other]}) from layer {own_layer}")
    assert not bad, "\n".join(bad)
