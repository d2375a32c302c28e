"""Read desired-state/ from the working tree, git's index or a git revision, keeping every line;
one spec file at a time, from disk or from git, without trusting what sits in desired-state/.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.desired import Problem, RawDesiredState, SourceDoc
from reconciler.source.repo import SourceError, open_repo, relative_dir, resolve, subtree
from reconciler.source.yamldoc import MAX_DEPTH, MAX_NODES, parse_document

MAX_SPEC_BYTES = 1 << 20
"""1 MiB: a spec is a few hundred bytes; a file past this is an accident or an attack."""

GIT_LINK_MODE = 0o120000
"""The mode git records for a symbolic link (its blob holds the link's target)."""

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def problem(display: str, message: str) -> Problem:
    return Problem(display, 1, "", message)


def too_large(display: str, size: int) -> Problem:
    return problem(display, f"{size} bytes: a spec may hold at most {MAX_SPEC_BYTES} bytes (1 MiB)")


def decode(display: str, data: bytes) -> str | Problem:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return problem(display, f"not UTF-8 text: {exc.reason}")


def repository_top(directory: Path) -> Path:
    """The working tree holding `directory` (found by its .git), else the directory itself:
    the boundary a symbolic link may not leave."""
    start = directory.resolve()
    for candidate in (start, *start.parents):
        if (candidate / ".git").exists():
            return candidate
    return start


def read_spec_file(path: Path, boundary: Path, display: str) -> str | Problem:
    """The text of one spec file on disk, or the problem that keeps it from being read."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return problem(display, f"cannot read: {exc.strerror}")
    if stat.S_ISLNK(info.st_mode):
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return problem(display, "a symbolic link that leads nowhere (broken or a loop)")
        if not target.is_relative_to(boundary.resolve()):
            return problem(
                display,
                f"a symbolic link to {target}, outside the repository {boundary}: "
                "only files inside it are read",
            )
        info = os.stat(target)
    refusal = _refusal(display, info)
    if refusal is not None:
        return refusal
    try:
        # O_NONBLOCK: a file swapped for a FIFO after the check above still cannot block us
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        return problem(display, f"cannot read: {exc.strerror}")
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        refusal = _refusal(display, info)
        if refusal is not None:
            return refusal
        # read(MAX_SPEC_BYTES + 1) would allocate a MiB per file (15 ms for 1,000 specs): ask
        # for the size seen, and read on to the limit only when the file grew since
        data = f.read(info.st_size + 1)
        if len(data) > info.st_size:
            data += f.read(MAX_SPEC_BYTES + 1 - len(data))
    if len(data) > MAX_SPEC_BYTES:
        return too_large(display, len(data))
    return decode(display, data)


def _refusal(display: str, info: os.stat_result) -> Problem | None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        return problem(display, f"cannot read: {kind}, not a regular file (a spec must be one)")
    if info.st_size > MAX_SPEC_BYTES:
        return too_large(display, info.st_size)
    return None


def link_target(link_path: str, target: str) -> str | None:
    """Where a symbolic link recorded in git points, relative to the repository's top; None when
    it leaves the repository (absolute, or `..` past the top)."""
    if target.startswith("/"):
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        return None
    return joined


def outside_link(display: str, target: str) -> Problem:
    return problem(
        display,
        f"a symbolic link to {target}, which is not a file inside the repository: "
        "only files inside it are read",
    )


if TYPE_CHECKING:
    import git

__all__ = [
    "CLUSTER_FILE",
    "HOSTS_DIR",
    "MAX_DEPTH",
    "MAX_NODES",
    "MODELS_DIR",
    "LoadError",
    "is_spec_path",
    "load_directory",
    "load_revision",
    "load_revision_bare",
    "load_staged",
    "load_tree",
    "parse_document",
]

CLUSTER_FILE = "cluster.yaml"
MODELS_DIR = "models"
HOSTS_DIR = "hosts"
"""a fleet: one file per host, hosts/<name>.yaml"""
SPEC_DIRS = {MODELS_DIR: "model", HOSTS_DIR: "host"}

Text = str | Problem
"""A spec file's text, or the problem that kept it from being read."""


class LoadError(Exception):
    """The desired-state location itself cannot be read (not a directory, unknown revision)."""


def is_spec_path(inner: str) -> bool:
    """Paths (relative to the desired-state directory) that hold specs."""
    return _kind_of(inner) is not None


def _kind_of(inner: str) -> str | None:
    """The kind of spec a path holds (cluster, model or host), else None."""
    if inner == CLUSTER_FILE:
        return "cluster"
    head, _, name = inner.partition("/")
    if head in SPEC_DIRS and "/" not in name and _is_spec_name(name):
        return SPEC_DIRS[head]
    return None


def _is_spec_name(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and not name.startswith(".")


# ---- the working tree ------------------------------------------------------------------------


def load_directory(root: str | os.PathLike[str]) -> RawDesiredState:
    """Read desired-state from a directory of the working tree."""
    base = Path(root)
    if not base.is_dir():
        raise LoadError(f"{root}: not a directory")
    boundary = repository_top(base)
    files: list[tuple[str, Path]] = []
    cluster = base / CLUSTER_FILE
    if os.path.lexists(cluster):  # not is_file(): a FIFO or dangling link is reported too
        files.append(("cluster", cluster))
    for dirname, kind in SPEC_DIRS.items():
        spec_dir = base / dirname
        if spec_dir.is_dir():
            found = sorted(p for p in spec_dir.iterdir() if _is_spec_name(p.name))
            files.extend((kind, p) for p in found)
    shown = ((k, p, _display(p)) for k, p in files)
    triples = ((k, d, read_spec_file(p, boundary, d)) for k, p, d in shown)
    return _assemble(str(root), None, triples)


# ---- git: the index (pre-commit) and revisions -------------------------------------------------


def _repo_of(root: str | os.PathLike[str]) -> git.Repo:
    repo = open_repo(root)
    if repo is None:
        raise LoadError(f"{root}: not inside a git repository")
    return repo


def _relative(repo: git.Repo, root: str | os.PathLike[str]) -> str:
    try:
        return relative_dir(repo, root)
    except SourceError as exc:
        raise LoadError(str(exc)) from exc


def load_staged(root: str | os.PathLike[str]) -> RawDesiredState:
    """Read desired-state as it would be committed: the blobs in git's index (pre-commit)."""
    import git

    repo = _repo_of(root)
    rel = _relative(repo, root)
    prefix = "" if rel == "." else rel + "/"
    # `git commit -a` and `git commit PATH` stage into a temporary index that git names in
    # GIT_INDEX_FILE for the hooks; that index, not .git/index, is what will be committed.
    index_file = os.environ.get("GIT_INDEX_FILE")
    index = git.IndexFile(repo, os.path.abspath(index_file)) if index_file else repo.index
    entries = {
        os.fspath(path): entry for (path, stage), entry in index.entries.items() if stage == 0
    }

    def blob(path: str) -> tuple[int, bytes] | None:
        entry = entries.get(path)
        return (entry.mode, entry.binsha) if entry is not None else None

    def files() -> Iterator[tuple[str, str, Text]]:
        for path in sorted(entries):
            inner = path[len(prefix) :]
            kind = _kind_of(inner) if path.startswith(prefix) else None
            if kind is not None:
                entry = entries[path]
                yield (
                    kind,
                    path,
                    _git_text(repo, path, entry.mode, entry.binsha, blob),
                )

    return _assemble(str(root), None, files())


def load_revision(root: str | os.PathLike[str], rev: str) -> RawDesiredState:
    """Read desired-state as committed at `rev`, straight from the commit's tree (no checkout)."""
    repo = _repo_of(root)
    return load_tree(repo, _relative(repo, root), rev, str(root))


def load_tree(repo: git.Repo, rel_dir: str, rev: str, root: str | None = None) -> RawDesiredState:
    """Desired state at `rev` read from the object database: works in bare repositories too.

    `rel_dir` is relative to the repository's top; `root` is what RawDesiredState.root says.
    """
    try:
        commit = resolve(repo, rev)
    except SourceError as exc:
        raise LoadError(str(exc)) from exc
    rel = rel_dir.strip("/") or "."
    tree = subtree(commit, rel)
    if tree is None:
        raise LoadError(f"{rel}: not present at revision {rev}")
    if tree.type != "tree":
        raise LoadError(f"{rel}: not a directory at revision {rev}")
    return _assemble(root or rel, commit.hexsha, _tree_files(repo, commit, tree, rel))


def load_revision_bare(
    repo_path: str | os.PathLike[str], rel_dir: str, rev: str
) -> RawDesiredState:
    """load_revision for a repository given by path, bare or not (a pre-receive hook's)."""
    import git

    try:
        repo = git.Repo(repo_path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise LoadError(f"{repo_path}: not a git repository") from exc
    try:
        return load_tree(repo, rel_dir, rev)
    finally:
        repo.close()


def _tree_files(
    repo: git.Repo, commit: git.Commit, tree: git.Tree, rel: str
) -> Iterator[tuple[str, str, Text]]:
    prefix = "" if rel == "." else rel + "/"

    def blob(path: str) -> tuple[int, bytes] | None:
        item = subtree(commit, path)
        return (item.mode, item.binsha) if item is not None and item.type == "blob" else None

    names = {item.name: item for item in tree}
    cluster = names.get(CLUSTER_FILE)
    if cluster is not None and cluster.type == "blob":
        path = prefix + CLUSTER_FILE
        yield "cluster", path, _git_text(repo, path, cluster.mode, cluster.binsha, blob)
    for dirname, kind in SPEC_DIRS.items():
        spec_dir = names.get(dirname)
        if spec_dir is None or spec_dir.type != "tree":
            continue
        for item in sorted(spec_dir, key=lambda b: b.name):
            if item.type == "blob" and _is_spec_name(item.name):
                path = f"{prefix}{dirname}/{item.name}"
                yield kind, path, _git_text(repo, path, item.mode, item.binsha, blob)


def _git_text(
    repo: git.Repo,
    path: str,
    mode: int,
    binsha: bytes,
    lookup: Callable[[str], tuple[int, bytes] | None],
) -> Text:
    """A blob's text, the same rules as for files on disk: a symbolic link is followed (once) to
    a regular file inside the repository, and nothing over the size limit is read."""
    if mode & 0o170000 == GIT_LINK_MODE:
        target = repo.odb.stream(binsha).read(4096).decode("utf-8", "replace")
        inside = link_target(path, target)
        found = lookup(inside) if inside is not None else None
        if found is None or found[0] & 0o170000 != 0o100000:
            return outside_link(path, target)
        mode, binsha = found
    size = repo.odb.info(binsha).size
    if size > MAX_SPEC_BYTES:
        return too_large(path, size)
    return decode(path, repo.odb.stream(binsha).read())


# ---- parsing ---------------------------------------------------------------------------------


def _assemble(
    root: str, revision: str | None, files: Iterable[tuple[str, str, Text]]
) -> RawDesiredState:
    """Parse (kind, display path, text) triples into one raw desired state."""
    cluster = None
    models: list[SourceDoc] = []
    hosts: list[SourceDoc] = []
    problems = []
    for kind, path, text in files:
        if isinstance(text, Problem):
            problems.append(text)
            continue
        doc, problem = parse_document(path, text)  # one of the two, never both
        if problem is not None:
            problems.append(problem)
        if doc is not None and kind == "cluster":
            cluster = doc
        elif doc is not None:
            (hosts if kind == "host" else models).append(doc)
    return RawDesiredState(root, revision, cluster, models, problems, hosts)


def with_revision(raw: RawDesiredState, sha: str) -> RawDesiredState:
    return replace(raw, revision=sha)


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
