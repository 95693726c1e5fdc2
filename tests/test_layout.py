"""The package stays in small rooms: modules of at most 300 lines, functions of at most 60, common.smk under
150 lines (issue: one resolved experiment plan)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted((REPO / "workflow" / "kdflow").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > 300:
            too_long.append(f"{path.relative_to(REPO)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                lines = node.end_lineno - node.lineno + 1
                too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, too_long
    assert len((REPO / "workflow" / "rules" / "common.smk").read_text().splitlines()) < 150
