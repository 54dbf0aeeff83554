"""Every fenced code block of README.md and docs/*.md is run or checked, so the docs
cannot rot.

- ```python blocks run, in order, in one namespace per file, in a temporary directory.
- ```diff blocks (a change to a user's code): both sides compile; the new side runs
  statement by statement, except statements that use names left to the user's own
  app (``grid``, ``arrays``): their calls are checked against the callees' signatures.
- ```bash blocks (commands that take too long or need a deployment to run here):
  every ``fedpress ...`` command parses against the real command line (nothing runs),
  every ``make X`` names a Makefile target, every ``python FILE`` / ``python -m MOD``
  names a file of the repository (paths outside it, ``../``, are not checked) / an
  importable module, every ``pip install`` names extras that pyproject.toml defines,
  and every argument that names a path in the repository exists.
- ```yaml blocks parse (APPFL configurations);
- ```toml blocks parse (on the simulator's page: as settings the simulator accepts);
  ```text blocks are output or prose and are not checked.
- Relative links between the pages name files, and headings, that exist.

A block in any other language, or none, fails the test: every block is one of these.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "diff", "bash", "toml", "yaml", "text"}
#: third-party packages the python blocks use (the dev set-up installs them all)
OPTIONAL = ("flwr", "torch", "pysz", "zfpy", "hdf5plugin", "blosc2", "lz4")
#: argument prefixes that name paths in the repository
REPO_PATHS = ("benchmarks/", "docs/", "examples/", "scripts/", "src/", "tests/", "fuzz/")
#: names a diff block may leave to the user's own app
USER_NAMES = {"grid", "arrays", "context"}

FENCE = re.compile(r"^(\s*)```(.*)$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file (fences may be indented in list items)."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2).strip(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: fence never closed"
        found.append(Block(path, start + 1, lang, "\n".join(body) + "\n"))
        i += 1
    return found


ALL = [b for p in DOCS for b in blocks(p)]


def _of(lang: str) -> list[Block]:
    return [b for b in ALL if b.lang == lang]


def test_docs_found() -> None:
    names = {p.name for p in DOCS}
    assert {"README.md", "index.md", "codecs.md", "flower.md", "results.md"} <= names
    assert _of("python") and _of("bash")


@pytest.mark.parametrize("block", ALL, ids=lambda b: b.id)
def test_every_block_has_a_checked_language(block: Block) -> None:
    assert block.lang in LANGUAGES, (
        f"{block.id}: fence language {block.lang!r}; use one of {sorted(LANGUAGES)} "
        "(python runs, bash commands are checked, text is not)")


# -- python --------------------------------------------------------------------------


def _needs_extras() -> None:
    for mod in OPTIONAL:
        pytest.importorskip(mod)


@pytest.mark.parametrize("path", [p for p in DOCS if any(
    b.path == p and b.lang == "python" for b in ALL)], ids=lambda p: p.name)
def test_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's python blocks, in order, in one namespace, in a scratch directory."""
    _needs_extras()
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__docs__"}
    for block in (b for b in ALL if b.path == path and b.lang == "python"):
        code = compile(block.code, block.id, "exec")
        exec(code, ns)  # a failure's traceback names the file and line of the block


# -- diff ----------------------------------------------------------------------------


def _sides(code: str) -> tuple[str, str]:
    old, new = [], []
    for line in code.splitlines():
        mark, text = line[:1], line[1:]
        assert mark in (" ", "+", "-", ""), f"not a diff line: {line!r}"
        if mark in (" ", "", "-"):
            old.append(text)
        if mark in (" ", "", "+"):
            new.append(text)
    return "\n".join(old) + "\n", "\n".join(new) + "\n"


def _check_calls(node: ast.AST, ns: dict, where: str) -> None:
    """Each call in ``node`` whose callee resolves here binds to its signature."""
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        try:
            func = eval(compile(ast.Expression(call.func), where, "eval"), ns)
        except NameError:
            continue
        if any(isinstance(a, ast.Starred) for a in call.args) or any(
                k.arg is None for k in call.keywords):
            continue
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            continue
        sig.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})


@pytest.mark.parametrize("block", _of("diff"), ids=lambda b: b.id)
def test_diff_blocks(block: Block) -> None:
    _needs_extras()
    old, new = _sides(block.code)
    compile(old, block.id + " (before)", "exec")
    tree = ast.parse(new, block.id + " (after)")
    ns: dict = {"__name__": "__docs__"}
    for stmt in tree.body:
        used = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        if used & USER_NAMES - ns.keys():
            _check_calls(stmt, ns, block.id)
            continue
        exec(compile(ast.Module([stmt], []), block.id, "exec"), ns)


# -- shell ---------------------------------------------------------------------------


def _make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?![=:])", line)
        if m and not line.startswith("."):
            targets.update(m.group(1).split())
    return targets


def _extras() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(meta["project"]["optional-dependencies"])


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments,
    redirections and the wrappers ``nohup``/``sudo``/``env``/``VAR=x`` dropped, lists
    and pipelines split."""
    out: list[list[str]] = []
    for line in code.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens = list(lex)
        cmd: list[str] = []
        skip = False
        for i, tok in enumerate(tokens):
            if skip:
                skip = False
                continue
            if tok in (";", "&&", "||", "|", "&"):
                out.append(cmd)
                cmd = []
            elif set(tok) <= set("<>&") and ("<" in tok or ">" in tok):
                skip = True  # a redirection and its target
            elif tok.isdigit() and i + 1 < len(tokens) and tokens[i + 1][:1] in "<>":
                continue  # the descriptor of a redirection
            else:
                cmd.append(tok)
        out.append(cmd)
    result = []
    for cmd in out:
        while cmd and (cmd[0] in ("nohup", "sudo", "env", "time")
                       or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[0])):
            cmd = cmd[1:]
        if cmd:
            result.append(cmd)
    return result


def _cli() -> click.Group:
    import typer.main

    from fedpress.cli import app

    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    return group


def parse_fedpress(group: click.Group, args: list[str]) -> None:
    """Parse ``fedpress ARGS`` as the command line would, without running it."""
    ctx = click.Context(group, info_name="fedpress")
    if not args or args[0].startswith("-"):
        try:
            group.make_context("fedpress", list(args))
        except click.exceptions.Exit:
            pass  # --help, --version
        return
    cmd = group.get_command(ctx, args[0])
    assert cmd is not None, f"no command {args[0]!r}"
    with cmd.make_context(args[0], list(args[1:]), parent=ctx):
        pass


def _check_command(cmd: list[str], group: click.Group, targets: set[str],
                   extras: set[str], where: str) -> None:
    word = cmd[0]
    for arg in cmd[1:]:
        if arg.startswith(REPO_PATHS):
            assert (ROOT / arg).exists(), f"{where}: {arg} is not in the repository"
    if word == "fedpress":
        try:
            parse_fedpress(group, cmd[1:])
        except click.ClickException as exc:
            pytest.fail(f"{where}: {shlex.join(cmd)}: {exc.format_message()}")
    elif word == "make":
        for target in (a for a in cmd[1:] if not a.startswith("-") and "=" not in a):
            assert target in targets, f"{where}: no make target {target!r}"
    elif word in ("python", "python3") or word.endswith("/python"):
        rest = cmd[1:]
        if rest[:1] == ["-m"]:
            module = rest[1]
            assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
            if module == "pip":
                _check_command(["pip", *rest[2:]], group, targets, extras, where)
        elif rest and not rest[0].startswith("../"):
            assert (ROOT / rest[0]).is_file(), f"{where}: no file {rest[0]}"
    elif word == "pip" and cmd[1:2] == ["install"]:
        for arg in cmd[2:]:
            m = re.fullmatch(r"(?:fedpress|\.)\[([a-z0-9,_-]+)\]", arg)
            if m:
                unknown = set(m.group(1).split(",")) - extras
                assert not unknown, f"{where}: pyproject.toml defines no extra {unknown}"


@pytest.mark.parametrize("block", _of("bash"), ids=lambda b: b.id)
def test_shell_commands_are_real(block: Block) -> None:
    group, targets, extras = _cli(), _make_targets(), _extras()
    for cmd in commands(block.code):
        _check_command(cmd, group, targets, extras, block.id)


def test_shell_parsing() -> None:
    """The checker itself: it sees through redirections, lists and continuations, and
    refuses a bad option, an unknown make target and an unknown extra."""
    code = ("nohup python x.py --out a > log 2>&1 &\n"
            "FOO=1 fedpress compress m.pt \\\n    --eb 1e-2  # comment\n"
            "make demo && make test\n")
    assert commands(code) == [["python", "x.py", "--out", "a"],
                              ["fedpress", "compress", "m.pt", "--eb", "1e-2"],
                              ["make", "demo"], ["make", "test"]]
    group, targets, extras = _cli(), _make_targets(), _extras()
    assert {"demo", "test", "demo-fedsz", "setup"} <= targets
    with pytest.raises(click.ClickException):
        parse_fedpress(group, ["compress", "m.pt", "--no-such-option"])
    with pytest.raises(click.ClickException):
        parse_fedpress(group, ["simulate", "--rounds", "three"])
    with pytest.raises(AssertionError):
        _check_command(["make", "no-such-target"], group, targets, extras, "t")
    with pytest.raises(AssertionError):
        _check_command(["pip", "install", "fedpress[nope]"], group, targets, extras, "t")
    with pytest.raises(AssertionError):
        _check_command(["python", "examples/none.py"], group, targets, extras, "t")


# -- yaml ----------------------------------------------------------------------------


@pytest.mark.parametrize("block", _of("yaml"), ids=lambda b: b.id)
def test_yaml_blocks_parse(block: Block) -> None:
    yaml = pytest.importorskip("yaml")
    assert isinstance(yaml.safe_load(block.code), dict), f"{block.id}: not a mapping"


# -- toml ----------------------------------------------------------------------------


@pytest.mark.parametrize("block", _of("toml"), ids=lambda b: b.id)
def test_toml_blocks_parse(block: Block, tmp_path: Path) -> None:
    """TOML parses; on the simulator's page it is a settings file the simulator takes."""
    tomllib.loads(block.code)
    if block.path.name == "simulator.md":
        from fedpress.sim.run import check_settings, load_config

        path = tmp_path / "run.toml"
        path.write_text(block.code)
        check_settings(load_config(path))


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped,
    spaces to dashes, ``-1``, ``-2`` ... on repeats)."""
    seen: dict[str, int] = {}
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        if n:
            seen[f"{slug}-{n}"] = 1
    return set(seen)


def test_links_between_pages_resolve() -> None:
    """Relative links name files that exist, and anchors into pages name headings."""
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            dest = path.parent / target if target else path
            assert dest.exists(), f"{path.name}: broken link {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), f"{path.name}: no heading #{anchor} in {target}"
