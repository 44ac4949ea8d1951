"""The docs cannot drift from the code (docs/contributing.md, "Docs").

- Every `mmlora ...` line of a ```bash block in README.md and docs/*.md that names a tiny id,
  a tiny recipe or file, or a shipped example runs, in its page's order, in a fresh folder per
  page (recipes/ and assets/ linked to the repository's), offline; a non-zero exit fails,
  naming page, line and command. They run through `mmlora.cli.main` in one child process, so
  torch is imported once for all pages.
- Every other `mmlora ...` line is parsed by the CLI's own parser: subcommands, options,
  override keys and shipped recipe names must exist.
- Relative links and anchors resolve, README.md stays short, and the measured table quoted in
  docs/performance.md matches bench/results/cpu.md.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200
SHELL_FENCES = {"bash", "sh", "shell"}
# A line runs when it names something that exists offline: a tiny id (tiny/qwen2-vl), a tiny
# recipe or a file made from one (tiny_vqa, my_tiny.yaml, models/tiny-llava), a shipped example.
RUNNABLE = re.compile(r"tiny[/_.-]|assets/examples/")
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "(", ")"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
RUN_TIMEOUT_S = 600


@dataclass
class Command:
    page: Path
    line: int  # 1-based line of the command's first line in the page
    text: str  # as written (continuations joined)
    env: dict
    argv: list  # after `mmlora`

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {self.text}"


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def fenced_blocks(page: Path):
    """(info word, [(line number, text), ...]) for every fenced code block of a page."""
    blocks, current, fence, info = [], None, None, ""
    for number, line in enumerate(page.read_text().splitlines(), 1):
        stripped = line.lstrip()
        if current is None:
            match = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match and len(line) - len(stripped) <= 3:
                fence, info, current = match.group(1), match.group(2).lower(), []
        elif stripped.startswith(fence) and not stripped[len(fence):].strip():
            blocks.append((info, current))
            current = None
        else:
            current.append((number, line))
    return blocks


def shell_lines(page: Path):
    """(line number, logical line) of the shell blocks, `\\` continuations joined."""
    for info, lines in fenced_blocks(page):
        if info not in SHELL_FENCES:
            continue
        pending, start = "", None
        for number, text in lines:
            if start is None:
                start = number
            if text.rstrip().endswith("\\"):
                pending += text.rstrip()[:-1] + " "
                continue
            yield start, pending + text
            pending, start = "", None
        if pending:
            yield start, pending


def tokens_of(text: str, where: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError as err:
        raise AssertionError(f"{where}: cannot split the command as bash would: {err}") from None


def mmlora_commands(page: Path) -> list[Command]:
    """The `mmlora ...` command lines of a page's shell blocks (`python -m mmlora.x` is not one)."""
    commands = []
    for number, text in shell_lines(page):
        where = f"{_rel(page)}:{number}: {text.strip()}"
        tokens = tokens_of(text, where)
        env = {}
        while tokens and ENV_ASSIGNMENT.match(tokens[0]):
            key, value = tokens.pop(0).split("=", 1)
            env[key] = value
        if not tokens or tokens[0] != "mmlora":
            continue
        operators = SHELL_OPERATORS.intersection(tokens)
        assert not operators, f"{where}: shell operators {sorted(operators)} in a documented mmlora command " \
                              "(tests/test_docs.py runs one command per line)"
        commands.append(Command(page, number, text.strip(), env, tokens[1:]))
    return commands


def is_runnable(command: Command) -> bool:
    return bool(RUNNABLE.search(" ".join(command.argv)))


def all_commands() -> list[Command]:
    return [command for page in PAGES for command in mmlora_commands(page)]


# --- links, length, quoted measurements (fast) ---------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # links: their text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    in_fence = {number for _, lines in fenced_blocks(page) for number, _ in lines}
    seen: dict[str, int] = {}
    result = set()
    for number, line in enumerate(page.read_text().splitlines(), 1):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match or number in in_fence:
            continue
        slug = _slug(match.group(1))
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


def links(page: Path):
    """(line number, target) of the Markdown links outside code."""
    in_fence = {number for _, lines in fenced_blocks(page) for number, _ in lines}
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if number in in_fence:
            continue
        prose = re.sub(r"`[^`]*`", "", line)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            yield number, target


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for number, target in links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{_rel(page)}:{number}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{_rel(page)}:{number}: {target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


# Paths the docs name in code spans (`mmlora/data/collate.py`, `tests/models/test_lora.py`) and
# modules they run (`python -m mmlora.models.tiny`): the layout must not move under the docs.
NAMED_PATH = re.compile(r"(?<![\w./-])((?:mmlora|tests|bench|recipes|assets)/[\w./<>*-]*[\w/>*])")
WRITTEN_BY_A_COMMAND = {"bench/results/gpu.md"}  # `make gpu-check` writes it on a GPU machine
NAMED_MODULE = re.compile(r"python -m (mmlora(?:\.\w+)*)")


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_paths_and_modules_exist(page):
    import importlib.util

    missing = []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        spans = re.findall(r"`([^`]+)`", line)
        if line.lstrip().startswith("python -m"):  # a shell block's module command
            spans.append(line)
        for span in spans:
            for path in NAMED_PATH.findall(span):
                if not {"<", "*"} & set(path) and path not in WRITTEN_BY_A_COMMAND and not (ROOT / path).exists():
                    missing.append(f"{_rel(page)}:{number}: {path} (no such file or folder)")
            for module in NAMED_MODULE.findall(span):
                if importlib.util.find_spec(module) is None:
                    missing.append(f"{_rel(page)}:{number}: python -m {module} (no such module)")
    assert not missing, "the docs name what is not there:\n" + "\n".join(missing)


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}: move detail to docs/)"


def test_every_docs_page_has_a_command_the_tests_run():
    """A docs page shows at least one offline example, and the filter above still finds it."""
    for page in PAGES:
        if page.parent.name != "docs" or page.name == "README.md":
            continue  # the README's quickstarts use real models; an index page needs none
        assert any(is_runnable(c) for c in mmlora_commands(page)), f"{_rel(page)}: no tiny-id mmlora command"


def _table_rows(lines: list[str]) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in lines if line.startswith("|") and not re.match(r"\|[-| ]+\|$", line.strip())]


def test_performance_page_quotes_the_measured_cpu_table():
    measured = (ROOT / "bench" / "results" / "cpu.md").read_text()
    workloads = {}
    for name, body in re.findall(r"^### (cpu[\w-]*):.*?\n(.*?)(?=^### |\Z)", measured, re.S | re.M):
        header, *rows = _table_rows(body.splitlines())
        tokens, memory = header.index("tokens/s") + 1, header.index("peak memory (MiB)") + 1
        workloads[name] = {row[0]: (row[tokens], row[header.index("padding")], row[memory]) for row in rows}
    assert set(workloads) == {"cpu", "cpu-no-checkpointing"}, sorted(workloads)

    page = (ROOT / "docs" / "performance.md").read_text()
    section = page.split("## Measured on CPU", 1)[1].split("\n## ", 1)[0]
    quoted = {row[0]: row[1:] for row in _table_rows(section.splitlines())[1:]}
    expected = {name: [workloads["cpu"][name][0], workloads["cpu-no-checkpointing"][name][0],
                       workloads["cpu"][name][1], workloads["cpu"][name][2]] for name in workloads["cpu"]}
    assert quoted == expected, ("docs/performance.md's table differs from bench/results/cpu.md: "
                                f"copy {expected} into it")


# --- every documented command parses (fast) -----------------------------------------------------

@pytest.fixture(scope="module")
def recipe_fields() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "mmlora", "recipes", "fields"], capture_output=True,
                         text=True, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    fields = set(re.findall(r"^([a-z_]+(?:\.[a-z_]+)?) \(default:", out, re.M))
    assert {"task", "lora.r", "train.max_steps"} <= fields, out[:500]
    return fields


SHIPPED = {path.stem for path in (ROOT / "recipes").glob("*.yaml")}
RECIPE_COMMANDS = {"train", "eval", "plan"}


def _is_recipe_name(item: str) -> bool:
    return "/" not in item and not item.endswith((".yaml", ".yml")) and "*" not in item


def parse_problems(command: Command, fields: set[str]) -> list[str]:
    from mmlora.cli import build_parser
    from mmlora.cli_checks import collect_overrides

    try:
        args = collect_overrides(build_parser(), list(command.argv))
    except SystemExit as exit_:
        return [f"the CLI refuses its arguments (exit {exit_.code})"] if exit_.code else []
    problems = []
    if args.command in RECIPE_COMMANDS | {"data"}:
        items = args.items if args.command == "data" else [args.recipe, *args.overrides]
        overrides = [item for item in items if "=" in item]
        recipes = [item for item in items if "=" not in item]
        problems += [f"unknown recipe field in {o!r}" for o in overrides if o.split("=", 1)[0] not in fields]
        problems += [f"no shipped recipe {r!r}" for r in recipes if _is_recipe_name(r) and r not in SHIPPED]
    if args.command == "demo":
        problems += [f"unknown recipe field in {o!r}" for o in args.overrides if o.split("=", 1)[0] not in fields]
    if args.command == "recipes" and args.action in ("show", "cp") and args.name not in SHIPPED:
        problems.append(f"no shipped recipe {args.name!r}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_documented_command_parses(page, recipe_fields, capsys):
    problems = []
    for command in mmlora_commands(page):
        problems += [f"{command.where()}\n    {problem}" for problem in parse_problems(command, recipe_fields)]
    err = capsys.readouterr().err
    assert not problems, "\n".join(problems) + ("\n" + err if err else "")


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_yaml_snippets_name_recipe_fields(page, recipe_fields):
    import yaml

    sections = {"model", "lora", "data", "train", "eval"}
    for info, lines in fenced_blocks(page):
        if info not in ("yaml", "yml"):
            continue
        snippet = yaml.safe_load("\n".join(text for _, text in lines))
        if not isinstance(snippet, dict) or not set(snippet) <= sections | {"task"}:
            continue  # not a recipe (e.g. an accelerate config)
        unknown = [f"{section}.{key}" for section, body in snippet.items() if section in sections
                   for key in (body or {}) if f"{section}.{key}" not in recipe_fields]
        assert not unknown, f"{_rel(page)}:{lines[0][0]}: unknown recipe fields {unknown}"


# --- the tiny-id commands run (slow) ------------------------------------------------------------

RUNNER = r"""
import glob, json, os, sys, time, traceback
from pathlib import Path

jobs = json.loads(sys.stdin.read())
from mmlora.cli import main

def say(text):
    sys.stdout.flush(); sys.stderr.flush()
    print(text, flush=True)

for job in jobs:
    os.chdir(job["cwd"])
    argv = []
    for token in job["argv"]:  # bash expands a glob that matches, and keeps it as typed otherwise
        matches = sorted(glob.glob(token)) if any(c in token for c in "*?[") else []
        argv += matches or [token]
    saved = {key: os.environ.get(key) for key in job["env"]}
    os.environ.update(job["env"])
    say("@@docs-start %d" % job["id"])
    start = time.monotonic()
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
        rc = 1
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    say("@@docs-end %d %d %.1f" % (job["id"], rc or 0, time.monotonic() - start))
"""


def page_folder(base: Path, page: Path) -> Path:
    folder = base / _rel(page).replace("/", "_").removesuffix(".md")
    folder.mkdir(parents=True)
    for name in ("recipes", "assets"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def run_commands(commands: list[Command], base: Path) -> dict[int, tuple]:
    """Run the commands in order, each page in its own folder; {index: (exit status, output, seconds)}."""
    folders = {}
    jobs = []
    for index, command in enumerate(commands):
        if command.page not in folders:
            folders[command.page] = page_folder(base, command.page)
        jobs.append({"id": index, "cwd": str(folders[command.page]), "argv": command.argv, "env": command.env})
    # One thread: the tiny models gain nothing from more, and on a busy machine (the suite runs
    # beside other work) extra torch threads only wait for each other.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(jobs), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env, cwd=base, timeout=RUN_TIMEOUT_S)
        output, status = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        status = f"killed after {RUN_TIMEOUT_S} s"
    results, current, buffer = {}, None, []
    for line in output.splitlines():
        if line.startswith("@@docs-start "):
            current, buffer = int(line.split()[1]), []
        elif line.startswith("@@docs-end "):
            _, index, rc, seconds = line.split()
            results[int(index)] = (int(rc), "\n".join(buffer), float(seconds))
            current = None
        elif current is not None:
            buffer.append(line)
    if current is not None:  # the child died inside this command
        results[current] = (None, "\n".join(buffer) + f"\n(the runner exited: {status})\n" + output[-3000:], None)
    return results


@pytest.fixture(scope="module")
def docs_runs(tmp_path_factory):
    commands = [command for command in all_commands() if is_runnable(command)]
    return commands, run_commands(commands, tmp_path_factory.mktemp("docs"))


def failures(commands: list[Command], results: dict, page: Path) -> list[str]:
    found = []
    for index, command in enumerate(commands):
        if command.page != page:
            continue
        rc, output, _ = results.get(index, (None, "(not run: an earlier command stopped the runner)", None))
        if rc != 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            found.append(f"{command.where()}\n    exit status {rc}\n    " + tail.replace("\n", "\n    "))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if any(map(is_runnable, mmlora_commands(page)))], ids=_rel)
def test_tiny_commands_of_the_docs_run(page, docs_runs):
    commands, results = docs_runs
    found = failures(commands, results, page)
    assert not found, f"documented commands failed in {_rel(page)}:\n" + "\n".join(found)
