"""README.md and docs/ as a checked guide: the README stays short with its commands on the first screen, links and
named files exist, the Layout table lists exactly the scripts and package parts in the tree, and every documented
command line uses flags its command's --help lists and config keys its schema knows (no network, no training:
commands run in-process with --help, and `key=value` overrides go through the trainers' own parse functions)."""

import contextlib
import csv
import functools
import importlib
import inspect
import io
import re
import runpy
import shlex
import sys
import warnings
from pathlib import Path

import pytest
import tomllib

from density.config import ConfigError
from density.config import parse_config as parse_train_config
from density.evaluation.train_classifier import parse_config as parse_classifier_config
from density.vocoders.train import parse_config as parse_vocoder_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
EXPERIMENTS = ROOT / "docs" / "experiments"
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"^(density|bench|tests|configs|docs)/[\w./-]*?(\.(py|md|yaml|sh|csv)|/)$")
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")
# Mandatory run settings of the trainers: filled in when a documented command leaves them out, so that the
# parse functions go on to check every key and value the command does give.
PLACEHOLDERS = {
    "vocoder": ("train_csv", "valid_csv", "checkpoint_path"),
    "classifier": ("train_csv", "valid_csv", "checkpoint_path"),
}
# Trainer modules (the module of a command's `main`) -> which schema their `key=value` arguments belong to.
SCHEMAS = {
    "density.gan.train": "asgan",
    "density.gan.diagnose": "asgan",  # `diagnose.py fit` takes train_asgan.py overrides
    "density.vocoders.train": "vocoder",
    "density.evaluation.train_classifier": "classifier",
}
IGNORED_ERRORS = re.compile(r"is mandatory|no such file|does not exist", re.IGNORECASE)


def prose_and_blocks(path):
    """A page -> (its lines outside fenced blocks, [(language, dedented lines of the block)])."""
    prose, blocks, block, lang, indent = [], [], None, "", ""
    for line in path.read_text().splitlines():
        fence = FENCE.match(line)
        if fence and block is None:
            block, indent, lang = [], fence.group(1), fence.group(2)
        elif fence and block is not None:
            blocks.append((lang, block))
            block = None
        elif block is not None:
            block.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
        else:
            prose.append(line)
    return prose, blocks


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    for line in prose_and_blocks(path)[0]:
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            out.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return out


def test_readme_is_a_short_guide_with_both_commands_on_the_first_screen():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move reference material to docs/"
    first_screen = "\n".join(lines[:40])
    assert "make test" in first_screen and "make demo" in first_screen


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files_and_headings(page):
    broken = []
    for line in prose_and_blocks(page)[0]:
        for target in LINK.findall(line):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def code_spans(page):
    return [span for line in prose_and_blocks(page)[0] for span in CODE_SPAN.findall(line)]


def resolves(dotted):
    """`density.x.y` names a module or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repository_files_and_python_names_exist(page):
    """Every `density/...py`, `bench/...`, `configs/...` path and every `density.x.y` name in inline code exists."""
    spans = code_spans(page)
    paths = {s for s in spans if REPO_PATH.match(s)}
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    names = {m for s in spans for m in re.findall(r"(?<![\w/])density(?:\.\w+)+", s)}
    unresolved = sorted(n for n in names if not resolves(n))
    assert not missing and not unresolved, f"{page.relative_to(ROOT)}: no such file {missing} / name {unresolved}"


def test_no_page_cites_an_issue_number():
    for page in PAGES:
        found = re.findall(r"\bissues?\s*#?\d+", page.read_text(), flags=re.IGNORECASE)
        assert not found, f"{page.relative_to(ROOT)} cites {found}: say what it is instead"


def layout_entries():
    """The backticked names in the first column of the README's Layout table."""
    text = README.read_text()
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    cells = [row.split("|")[1] for row in section.splitlines() if row.startswith("| ")]
    return {name for cell in cells for name in re.findall(r"`([^`]+)`", cell)}


def test_layout_table_lists_exactly_the_scripts_and_package_parts_in_the_tree():
    listed = layout_entries()
    scripts = {p.name for p in ROOT.glob("*.py")}
    package = {f"density/{p.parent.name}/" for p in (ROOT / "density").glob("*/__init__.py")}
    package |= {f"density/{p.name}" for p in (ROOT / "density").glob("*.py") if p.name != "__init__.py"}
    listed_scripts = {n for n in listed if n.endswith(".py") and "/" not in n}
    listed_package = {n for n in listed if n.startswith("density/")}
    assert listed_scripts == scripts, (
        f"scripts: undocumented {scripts - listed_scripts}, gone {listed_scripts - scripts}"
    )
    assert listed_package == package, (
        f"density/: undocumented {package - listed_package}, gone {listed_package - package}"
    )
    assert {"bench/", "configs/", "docs/", "tests/"} <= listed


def shell_segments(lines):
    """Fenced shell lines -> token lists of the simple commands in them (continuations joined, comments dropped,
    split at ; && || | and parentheses)."""
    text = "\n".join(lines).replace("\\\n", " ")
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        segment = []
        for token in lexer:
            if set(token) <= set(";&|()"):
                yield segment
                segment = []
            elif token not in ("<", ">"):
                segment.append(token)
        yield segment


def command_of(tokens):
    """Tokens of one simple command -> (kind, target, arguments), or None for a command that is not ours.
    kind: 'script' (a .py file of the checkout), 'module' (python -m), 'console' (asgan-*) or 'make'."""
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens = tokens[1:]  # environment assignments
    if not tokens:
        return None
    head = tokens[0]
    if head == "make":
        return "make", None, tokens[1:]
    if head.startswith("asgan-"):
        return "console", head, tokens[1:]
    if head in ("python", "python3") and len(tokens) > 2 and tokens[1] == "-m" and tokens[2].startswith("density"):
        return "module", tokens[2], tokens[3:]
    if head in ("python", "python3", "torchrun", "deepspeed"):
        for k, token in enumerate(tokens[1:], start=1):
            if token.endswith(".py"):
                return "script", token, tokens[k + 1 :]
    return None


def documented_commands():
    """Every command line of ours in the fenced shell blocks of README.md and docs/ -> [(page, line, command)]."""
    found = []
    for page in PAGES:
        for lang, lines in prose_and_blocks(page)[1]:
            if lang not in SHELL_BLOCKS:
                continue
            for tokens in shell_segments(lines):
                cmd = command_of(tokens)
                if cmd:
                    found.append((page.relative_to(ROOT), " ".join(tokens), cmd))
    return found


@functools.cache
def console_main(name):
    """The `main` an asgan-* console script runs (pyproject.toml [project.scripts] -> density.commands)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert name in scripts, f"{name} is not a console script of pyproject.toml"
    module, attr = scripts[name].split(":")
    commands = importlib.import_module(module)
    captured = []
    real = commands.command
    commands.command = captured.append  # the entry point hands its main to `command`: keep it instead of running
    try:
        getattr(commands, attr)()
    finally:
        commands.command = real
    return captured[0]


@functools.cache
def command_main(kind, target):
    """The `main(argv)` function of a documented command."""
    if kind == "console":
        return console_main(target)
    if kind == "module":
        return importlib.import_module(target).main
    path = ROOT / target
    assert path.is_file(), f"{target}: no such script"
    return runpy.run_path(str(path), run_name="documented_command")["main"]


@functools.cache
def help_text(kind, target, subcommand=None):
    """What `<command> [subcommand] --help` prints, run in-process."""
    main = command_main(kind, target)
    argv = [*([subcommand] if subcommand else []), "--help"]
    out = io.StringIO()
    saved = sys.argv
    sys.argv = [str(target), *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), contextlib.suppress(SystemExit):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if inspect.signature(main).parameters:
                    main(argv)
                else:
                    main()  # a bench script's main reads sys.argv
    finally:
        sys.argv = saved
    return out.getvalue()


def subcommand_of(kind, target, args):
    """The subcommand a command line names (`edit.py mix ...`), if its command has subcommands."""
    choices = re.search(r"\{([\w,-]+)\}", help_text(kind, target))
    if args and choices and args[0] in choices.group(1).split(","):
        return args[0]
    return None


def test_documented_commands_exist_and_use_only_flags_their_help_lists():
    commands = documented_commands()
    assert len(commands) > 40, "the fenced command lines of README.md and docs/ were not found"
    targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    stale = []
    for page, line, (kind, target, args) in commands:
        if kind == "make":
            variables = re.findall(r"\$\((\w+)\)", (ROOT / "Makefile").read_text())
            for a in args:
                name, assigned, _ = a.partition("=")
                if assigned and name not in variables:
                    stale.append(f"{page}: {line}: the Makefile reads no variable {name}")
                elif not assigned and a not in targets:
                    stale.append(f"{page}: {line}: no make target {a}")
            continue
        sub = subcommand_of(kind, target, args)
        text = help_text(kind, target, sub)
        assert "usage" in text.lower() or "default config" in text.lower(), f"{page}: {line}: no --help output"
        flags = {a.strip("[]").split("=", 1)[0] for a in args if a.strip("[").startswith("--")}
        stale += [
            f"{page}: {line}: {flag} is not in `{target} {sub or ''} --help`"
            for flag in sorted(flags)
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)
        ]
    assert not stale, "\n".join(stale)


def schema_placeholders(schema):
    return [f"{key}=placeholder" for key in PLACEHOLDERS.get(schema, ())]


def schema_of(kind, target, args):
    """('asgan' | 'vocoder' | 'classifier', argv for its parse function) of a trainer command, else None."""
    module = command_main(kind, target).__module__
    schema = SCHEMAS.get(module)
    if schema is None or (module == "density.gan.diagnose" and args[:1] != ["fit"]):
        return None
    argv = [a for a in args if "=" in a and not a.startswith(("-", "["))]
    if "--config" in args:
        argv = ["--config", args[args.index("--config") + 1], *argv]
    given = {a.split("=", 1)[0] for a in argv}
    return schema, argv + [p for p in schema_placeholders(schema) if p.split("=", 1)[0] not in given]


def check_overrides(schema, argv):
    """None if the trainer's own parse function accepts argv, else its error."""
    parse = {"asgan": parse_train_config, "vocoder": parse_vocoder_config, "classifier": parse_classifier_config}
    try:
        parse[schema](argv)
    except ConfigError as e:
        return None if IGNORED_ERRORS.search(str(e)) else str(e)
    except Exception as e:  # a value the parser cannot read at all (e.g. bad YAML) is a stale command too
        return f"{type(e).__name__}: {e}"
    return None


def test_documented_overrides_are_known_config_keys_and_values(monkeypatch):
    monkeypatch.chdir(ROOT)  # `--config configs/...` as documented, from the checkout's root
    checked, errors = 0, []
    for page, line, (kind, target, args) in documented_commands():
        found = kind != "make" and schema_of(kind, target, args)
        if found:
            checked += 1
            error = check_overrides(*found)
            errors += [f"{page}: {line}:\n  {error}"] if error else []
    assert checked > 10, "no trainer command lines were found in the docs"
    assert not errors, "\n".join(errors)


def read_tries(name):
    with open(EXPERIMENTS / name, newline="") as f:
        return list(csv.DictReader(f))


def test_demo_tries_are_numbered_rows_whose_overrides_configure_the_demo_preset(monkeypatch):
    monkeypatch.chdir(ROOT)
    rows = read_tries("demo_tries.csv")
    assert [int(r["try"]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) == 81
    assert {r["kind"] for r in rows} <= {"config", "code", "corpus"}
    assert all(r["change"] and r["result"] for r in rows)
    errors = [
        f"try {r['try']}: {error}"
        for r in rows
        if (error := check_overrides("asgan", ["preset=mel_small", *shlex.split(r["overrides"])]))
    ]
    assert not errors, "\n".join(errors)


def test_vocoder_tries_overrides_are_train_vocoder_settings():
    rows = read_tries("vocoder_tries.csv")
    assert [int(r["try"]) for r in rows] == list(range(1, len(rows) + 1))
    errors = [
        f"try {r['try']}: {error}"
        for r in rows
        if (error := check_overrides("vocoder", [*shlex.split(r["overrides"]), *schema_placeholders("vocoder")]))
    ]
    assert not errors, "\n".join(errors)


def test_python_api_example_runs():
    """The code of docs/python-api.md runs as written (a full-size generator and discriminator, 4 latents)."""
    blocks = [lines for lang, lines in prose_and_blocks(ROOT / "docs" / "python-api.md")[1] if lang == "python"]
    assert blocks
    namespace = {}
    exec(compile("\n".join(blocks[0]), "docs/python-api.md", "exec"), namespace)
    assert tuple(namespace["c"].shape) == (4, 48, 768) and tuple(namespace["logits"].shape) == (4, 1)
