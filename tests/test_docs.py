"""The documentation a user reads: short README, links that resolve, commands that compose, and
headline numbers that are the report's own.

Fast and offline: commands are composed in-process through Hydra's compose API (what
``python run.py ... --cfg job`` does before printing), not run.
"""

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"  # conftest.py registers the schemas before collection
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
REPORT = ROOT / "results" / "reference.md"
MAX_README_LINES = 250
# Reports a make target writes when it runs (not committed before its first run): a link to one
# is the place the user will find it, so it is not a broken link.
WRITTEN_BY_MAKE = {ROOT / "results" / "rehearsal" / "README.md"}  # make rehearse

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
RUN_PY = re.compile(r"(?:^|\s)(?:\S*/)?python3? run\.py(?=\s|$)(.*)")
PLACEHOLDER = re.compile(r"<[^<>\s]+>")
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?%|(?<![\w.])\d+\.\d+(?![\w.])")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())  # code blocks hold no Markdown links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def run_commands(page: Path) -> list[str]:
    """Every ``python run.py ...`` line in the page's code blocks, continuation lines joined."""
    found = []
    for block in FENCE.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            match = RUN_PY.search(line)
            if match:
                found.append(match.group(1).split(" #")[0].strip())
    return found


def overrides(args: str, tmp: Path) -> list[str]:
    """The command's overrides, placeholders filled with a tmp path, a sweep at its first point."""
    out = []
    for token in shlex.split(PLACEHOLDER.sub(str(tmp), args)):
        if token in ("-m", "--multirun", "...") or token.startswith("--"):
            continue
        key, _, value = token.partition("=")
        if value and not value.startswith(("[", "{", "'", '"')) and "," in value:
            value = value.split(",")[0]  # one point of the sweep
        out.append(f"{key}={value}" if value or token.endswith("=") else token)
    return out


COMMANDS = [(rel(page), command) for page in PAGES for command in run_commands(page)]


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path = target.split("#")[0]
        if not path:  # an anchor within the page
            continue
        resolved = (page.parent / path).resolve()
        if not resolved.exists() and resolved not in WRITTEN_BY_MAKE:
            broken.append(target)
    assert not broken, f"{rel(page)} links to missing files: {broken}"


def test_readme_indexes_every_docs_page():
    targets = {(README.parent / t.split("#")[0]).resolve() for t in links(README)}
    missing = [rel(page) for page in DOCS if page.resolve() not in targets]
    assert not missing, f"README.md's docs index lacks {missing}"


def test_commands_were_found():
    assert len(COMMANDS) > 20 and any(page == "README.md" for page, _ in COMMANDS)


@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[f"{p}: {c[:60]}" for p, c in COMMANDS])
def test_documented_command_composes(page, command, tmp_path):
    if re.search(r"(?:^|\s)[\w/@]+=<[^<>\s]+>", command):
        pytest.skip("a template: a config group option is left to the reader (e.g. experiment=<name>)")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            compose("config", overrides=overrides(command, tmp_path), return_hydra_config=True)
    except Exception as exc:  # noqa: BLE001 (the message is the finding)
        pytest.fail(f"{page}: `python run.py {command}` does not compose: {exc}")
    finally:
        GlobalHydra.instance().clear()


def headline_section() -> str:
    text = README.read_text()
    match = re.search(r"^## Headline results.*?(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Headline results' section"
    return match.group(0)


def test_headline_numbers_are_the_reports():
    report = REPORT.read_text()
    quoted = NUMBER.findall(headline_section())
    assert quoted, "the headline section quotes no number"
    missing = []
    for number in quoted:
        value = number.rstrip("%")
        if not re.search(rf"(?<![\d.]){re.escape(value)}(?![\d])", report):
            missing.append(number)
    assert not missing, f"README headline numbers not in results/reference.md: {missing}"


def test_the_headline_block_is_written_from_the_reports_json():
    """The README quotes the reference report: its headline block is exactly what
    ``python experiments/reference_report.py --readme`` writes from results/reference.json."""
    import json

    from experiments.reference_report import README_BEGIN, README_END, headline

    text = README.read_text()
    block = text[text.index(README_BEGIN) : text.index(README_END) + len(README_END)]
    summary = json.loads((ROOT / "results" / "reference.json").read_text())
    assert block == headline(summary), "run python experiments/reference_report.py --readme"


def test_overrides_take_one_sweep_point(tmp_path):
    got = overrides("-m method=mgd3 ipc=10,50 eval.distilled_dir=<folder>/x ...", tmp_path)
    assert got == ["method=mgd3", "ipc=10", f"eval.distilled_dir={tmp_path}/x"]
