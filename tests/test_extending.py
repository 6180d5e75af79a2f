"""docs/adding.md as a user follows it: a toy method and a toy generator, each one module and
one YAML file in a folder outside the repository, run through run.py with no other edit."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "adding.md").read_text()


def snippet(name: str) -> str:
    """The code block of docs/adding.md whose first line names ``name``."""
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", DOC, flags=re.S)
    (block,) = [b for b in blocks if b.splitlines()[0].strip().endswith(name)]
    return "\n".join(line[3:] if line.startswith("   ") else line for line in block.splitlines())


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "ext")}
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        f"hydra.searchpath=[file://{tmp_path / 'ext' / 'conf'}]",
        "task=distill",
        "logger=none",
        "debug=tiny",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_a_new_method_is_one_module_and_one_yaml(tmp_path):
    write(tmp_path / "ext" / "my_methods" / "__init__.py", "")
    write(tmp_path / "ext" / "my_methods" / "constant.py", snippet("my_methods/constant.py"))
    write(
        tmp_path / "ext" / "conf" / "method" / "constant.yaml",
        snippet("conf/method/constant.yaml (or <your folder>/method/constant.yaml)"),
    )
    proc = run(tmp_path, "method=constant", "ipc=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted((tmp_path / "run" / "distilled").rglob("*.png"))
    assert len(pngs) == 20
    manifest = json.loads((tmp_path / "run" / "distilled" / "manifest.json").read_text())
    assert manifest["config"]["method"]["value"] == 0.25


def test_a_new_generator_is_one_module_and_one_yaml(tmp_path):
    write(tmp_path / "ext" / "my_generators" / "__init__.py", "")
    write(tmp_path / "ext" / "my_generators" / "tiny.py", snippet("my_generators/tiny.py"))
    write(
        tmp_path / "ext" / "conf" / "generator" / "tiny.yaml",
        "_target_: my_generators.tiny.load_tiny\nlayers: 1\n",
    )
    proc = run(tmp_path, "generator=tiny", "method=mgd3", "method.steps=4", "method.t_sg=1", "ipc=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "run" / "distilled").rglob("*.png"))) == 20
