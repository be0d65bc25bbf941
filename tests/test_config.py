"""Guards on the code base itself: njit flags from config, the oracle stays independent."""

import ast
import pathlib
import re

PKG = pathlib.Path(__file__).resolve().parents[1] / "tfkernels"


def test_njit_flags_come_from_config():
    bad = []
    for path in PKG.rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for flag in ("fastmath", "cache", "parallel"):
                m = re.search(rf"\b{flag}=([^,)\s]+)", line)
                if m and "njit" in line and not m.group(1).startswith("config."):
                    bad.append(f"{path.name}:{lineno}: {line.strip()}")
    assert not bad, "njit flags must come from tfkernels.config:\n" + "\n".join(bad)


def test_fastmath_keeps_nan_and_inf_checks():
    from tfkernels import config

    assert not {"nnan", "ninf", "fast"} & set(config.FASTMATH)


def test_reference_imports_no_kernel_code():
    tree = ast.parse((PKG / "reference.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." if node.level else node.module.split(".")[0])
    assert imported <= {"numpy", "scipy", "math", "numbers", "functools", "itertools"}, imported
