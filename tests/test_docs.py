"""The commands and links of README.md and docs/*.md keep working, without running a training.

Every command of a fenced ``bash`` block, and every inline code span that starts with a command, is checked for what
can go wrong without running it: the script or Makefile target exists, every ``configs/...yml`` path exists, every
``--option`` appears in the script's ``--help``, and the ``KEY VALUE`` pairs load with the command's config (a sweep's
pairs with every row of its sweep file). Words the pages use for "fill in" (``<table>``, ``CFG``, ``KEY VALUE ...``)
leave out the checks they make impossible; ``$C`` is replaced by what its page defines it as. Every relative link and
image resolves to a file, every anchor to a heading of its page.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from configs import ConfigError, get_cfg_defaults, load_config
from experiments.sweep import SweepError, load_sweep, plan_runs

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

PYTHONS = {"python", "python3", ".venv/bin/python"}
RUNNERS = PYTHONS | {"torchrun", "make", "bash"}
# The words the pages use for a value the reader fills in; a command holding one is checked only where it can be.
PLACEHOLDER_WORDS = {"CFG", "BASE", "ROOT", "KEY", "VALUE", "..."}
_ANGLE = re.compile(r"<[A-Za-z][^<>]*>")
_DOTTED_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")  # as tools.common.is_config_key
_TOP_LEVEL_KEYS = {k for k, v in get_cfg_defaults().items() if not isinstance(v, dict)}  # OUTPUT_DIR
_FENCE = re.compile(r"^```(\w*)\s*$")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_INLINE = re.compile(r"`([^`]+)`")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ----------------------------------------------------------------------------------------------------------------------
# Reading the pages.

def split_page(text: str) -> tuple[list[tuple[int, str, list[str]]], list[tuple[int, str]]]:
    """The fenced blocks (first line number, language, lines) and the prose lines (line number, text)."""
    blocks, prose = [], []
    block: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(line.strip())
        if block is None and fence:
            block, lang, start = [], fence.group(1), number + 1
        elif block is not None and line.strip() == "```":
            blocks.append((start, lang, block))
            block = None
        elif block is not None:
            block.append(line)
        else:
            prose.append((number, line))
    return blocks, prose


def page_definitions(text: str) -> dict[str, str]:
    """Shell variables a page defines in its prose: "`C` stands for `--config_file ...`"."""
    return {m.group(1): m.group(2) for m in re.finditer(r"`(\w+)` stands for `([^`]+)`", text)}


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def page_commands(path: Path) -> list[Command]:
    text = path.read_text()
    blocks, prose = split_page(text)
    found = []
    for start, lang, lines in blocks:
        if lang not in ("bash", "sh"):
            continue
        joined, first = "", None
        for offset, line in enumerate(lines):
            first = start + offset if first is None else first
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            joined += line
            if joined.strip():
                found.append(Command(rel(path), first, joined.strip()))
            joined, first = "", None
    # Inline code spans may wrap over a line break of the prose; a paragraph is read as one line.
    paragraph: list[tuple[int, str]] = []
    for number, line in [*prose, (0, "")]:
        if line.strip():
            paragraph.append((number, line))
            continue
        if paragraph:
            joined = " ".join(p[1].strip() for p in paragraph)
            starts = [0]  # offset of each line in the joined paragraph
            for _, text in paragraph[:-1]:
                starts.append(starts[-1] + len(text.strip()) + 1)
            for m in _INLINE.finditer(joined):
                span = m.group(1).strip()
                words = span.split()
                if len(words) > 1 and (words[0] in RUNNERS or (words[0] == "time" and words[1] in RUNNERS)):
                    line = paragraph[sum(1 for s in starts if s <= m.start()) - 1][0]
                    found.append(Command(rel(path), line, span))
        paragraph = []
    return found


def all_commands() -> list[Command]:
    return [c for page in PAGES for c in page_commands(page)]


# ----------------------------------------------------------------------------------------------------------------------
# Parsing a command.

def tokens_of(command: Command) -> list[str]:
    """The words of a command: the page's variables substituted, optional ``[...]`` brackets and comments dropped."""
    text = command.text
    for name, value in page_definitions((REPO / command.page).read_text()).items():
        text = text.replace(f"${name}", value)
    text = re.sub(r"(?<!\S)\[(?=[-A-Z.])", "", text)  # "[--seed 0]", "[TEST.MISS r]", "[KEY VALUE ...]"
    text = re.sub(r"(?<=[\w.|/])\](?=\s|$)", "", text)
    return shlex.split(text, comments=True)


def is_placeholder(token: str) -> bool:
    return token in PLACEHOLDER_WORDS or bool(_ANGLE.search(token)) or token.startswith("ROOT/")


def is_config_key(token: str) -> bool:
    return token in _TOP_LEVEL_KEYS or bool(_DOTTED_KEY.match(token))


@dataclass
class Parsed:
    runner: str
    script: str  # a .py or .sh path, or the make targets joined by spaces
    args: list[str]


def parse(command: Command) -> Parsed | None:
    """The runner, the script and its arguments; None for a command that runs no script of the repository
    (``python -m pytest``)."""
    words = tokens_of(command)
    while words and (words[0] == "time" or re.match(r"^[A-Z_][A-Z0-9_]*=", words[0])):
        words = words[1:]
    assert words and words[0] in RUNNERS, f"{command.id}: not a command: {command.text}"
    runner, rest = words[0], words[1:]
    if runner == "make":
        return Parsed("make", " ".join(w for w in rest if "=" not in w and not w.startswith("-")), [])
    if runner == "torchrun":
        scripts = [i for i, w in enumerate(rest) if w.endswith(".py")]
        assert scripts, f"{command.id}: torchrun without a script: {command.text}"
        return Parsed("torchrun", rest[scripts[0]], rest[scripts[0] + 1:])
    if runner in PYTHONS and rest and rest[0] == "-m":
        return None
    assert rest, f"{command.id}: {runner} without a script: {command.text}"
    return Parsed(runner, rest[0], rest[1:])


def config_pairs(args: list[str]) -> list[str]:
    """The ``KEY VALUE`` pairs, wherever they stand (as the tools and train_net.py read them)."""
    pairs, i = [], 0
    while i < len(args):
        if is_config_key(args[i]):
            pairs.extend(args[i:i + 2])
            i += 2
        else:
            i += 1
    return pairs


def option_value(args: list[str], option: str) -> str | None:
    return args[args.index(option) + 1] if option in args and args.index(option) + 1 < len(args) else None


@functools.cache
def make_targets() -> frozenset[str]:
    text = (REPO / "Makefile").read_text()
    return frozenset(m.group(1) for m in re.finditer(r"^([\w.-]+)\s*:(?!=)", text, re.MULTILINE))


_HELP_DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for script in sys.argv[1:]:
    buffer, code = io.StringIO(), None
    sys.argv = [script, "--help"]
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as stop:
            code = stop.code
    out[script] = {"code": code, "text": buffer.getvalue()}
print(json.dumps(out))
"""


@functools.cache
def help_texts() -> dict[str, dict]:
    """``--help`` of every Python script the pages run, from one subprocess (the imports are paid once)."""
    scripts = sorted({p.script for c in all_commands() if (p := parse(c)) and p.script.endswith(".py")
                      and not is_placeholder(p.script) and (REPO / p.script).is_file()})
    proc = subprocess.run([sys.executable, "-c", _HELP_DRIVER, *scripts], cwd=REPO, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------------
# The checks.

def check_command(command: Command) -> None:
    parsed = parse(command)
    if parsed is None:
        return
    where = f"{command.id}: {command.text}"
    if parsed.runner == "make":
        targets = parsed.script.split()
        assert targets, f"{where}: make without a target"
        missing = [t for t in targets if t not in make_targets()]
        assert not missing, f"{where}: no Makefile target {missing}"
        return
    if is_placeholder(parsed.script):
        return
    assert (REPO / parsed.script).is_file(), f"{where}: {parsed.script} does not exist"
    if parsed.runner == "bash":
        return
    args = parsed.args
    placeholder = any(is_placeholder(a) for a in args) or bool(_ANGLE.search(command.text))
    for arg in args:
        if re.match(r"^configs/\S+\.ya?ml$", arg) and not is_placeholder(arg):
            assert (REPO / arg).is_file(), f"{where}: {arg} does not exist"
    result = help_texts()[parsed.script]
    assert result["code"] == 0, f"{where}: {parsed.script} --help failed:\n{result['text'][-2000:]}"
    for option in {a.split("=")[0] for a in args if a.startswith("--")}:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result["text"]), \
            f"{where}: {parsed.script} has no option {option} (see its --help)"
    if placeholder:
        return
    pairs = config_pairs(args)
    config = option_value(args, "--config_file")
    try:
        if parsed.script == "tools/sweep.py":
            check_sweep(where, args, pairs)
        elif config is not None:
            load_config(str(REPO / config), pairs)
        else:
            assert not pairs, f"{where}: KEY VALUE pairs without --config_file"
    except (ConfigError, SweepError) as err:
        raise AssertionError(f"{where}: {err}") from None


def check_sweep(where: str, args: list[str], pairs: list[str]) -> None:
    files = [a for a in args if a.endswith((".yml", ".yaml"))]
    assert files, f"{where}: no sweep file"
    sweep = load_sweep(str(REPO / files[0]))
    plan_runs(sweep, "/nonexistent/sweep-root", seeds=sweep.seeds[:1], trailing=pairs)  # checks every row's config


COMMANDS = all_commands()


def test_pages_have_commands():
    """The reader finds the pages' commands (a change of format would otherwise pass every check unseen)."""
    pages = {c.page for c in COMMANDS}
    assert {"README.md", "docs/getting_started.md", "docs/tools.md", "docs/reproducing.md"} <= pages
    assert len(COMMANDS) >= 40
    scripts = {p.script for c in COMMANDS if (p := parse(c))}
    assert {"train_net.py", "test_net.py", "tools/sweep.py", "tools/tsne.py", "demo", "test"} <= scripts


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_command_works(command):
    check_command(command)


def test_a_broken_command_fails(tmp_path):
    """The checks catch what they are for: a missing script, config, option or key, an invalid value."""
    good = Command("README.md", 0, "python test_net.py --config_file configs/demo/TOP-ReID.yml TEST.MISS all")
    check_command(good)
    for text in ("python test_nett.py --config_file configs/demo/TOP-ReID.yml",
                 "python test_net.py --config_file configs/demo/TOP-ReID2.yml",
                 "python tools/tsne.py --config_file configs/demo/TOP-ReID.yml --max-idz 10",
                 "python test_net.py --config_file configs/demo/TOP-ReID.yml TEST.MIS all",
                 "python test_net.py --config_file configs/demo/TOP-ReID.yml TEST.MISS everything",
                 "python tools/sweep.py configs/paper/demo_ablation.yml SOLVER.MAX_EPOCHS -1",
                 "make tests"):
        with pytest.raises(AssertionError, match="README.md:0"):
            check_command(Command("README.md", 0, text))


# ----------------------------------------------------------------------------------------------------------------------
# Links.

def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    names = set()
    for _, line in split_page(path.read_text())[1]:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.add(base if count == 0 else f"{base}-{count}")
    return frozenset(names)


def page_links(path: Path) -> list[tuple[int, str]]:
    links = []
    for number, line in split_page(path.read_text())[1]:
        prose = _INLINE.sub("code", line)
        links += [(number, m.group(1)) for m in _LINK.finditer(prose)]
    return links


@pytest.mark.parametrize("page", PAGES, ids=[rel(p) for p in PAGES])
def test_links_resolve(page):
    broken = []
    for number, target in page_links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        if not linked.exists():
            broken.append(f"{rel(page)}:{number}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{rel(page)}:{number}: {target}: no heading #{anchor} in {linked.name}")
    assert not broken, "\n".join(broken)


def test_every_page_is_listed():
    """Each docs page is reachable from the README and from docs/README.md."""
    for index in (REPO / "README.md", REPO / "docs" / "README.md"):
        linked = {(index.parent / t.partition("#")[0]).resolve() for _, t in page_links(index)}
        unlisted = [rel(p) for p in PAGES[1:] if p.name != "README.md" and p.resolve() not in linked]
        assert not unlisted, f"{rel(index)} does not link {unlisted}"
