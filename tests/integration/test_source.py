"""Following git: a local working tree (HEAD + dirty mark) and a remote branch (fast-forward only).

Real repositories made with GitPython in tmp_path: a bare "remote", clones that push to it, and
the reconciler's own clone under a state directory.
"""

from __future__ import annotations

from pathlib import Path

import git
import pytest

from reconciler.source.commits import validate_raw
from reconciler.source.git_remote import RemoteSource
from reconciler.source.load import LoadError, load_revision_bare
from reconciler.source.local import LocalSource
from reconciler.source.repo import Source, SourceError

MODEL = (
    "id: {id}\nframework: vllm\nmodel_path: /models/{id}\npriority: {priority}\n"
    "resource_requirements: {{gpu_count: 1, gpu_memory_mb: 4000}}\nenabled: true\n"
)
CLUSTER = "gpus:\n  - {index: 0, name: sim, memory_mb: 24000}\n"


def init_repo(path: Path, bare: bool = False) -> git.Repo:
    repo = git.Repo.init(path, bare=bare, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test Operator")
        config.set_value("user", "email", "ops@example.com")
    return repo


def write(repo: git.Repo, files: dict[str, str | None]) -> None:
    """Write (or with None delete) files relative to the working tree."""
    for name, text in files.items():
        path = Path(repo.working_tree_dir) / name
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def commit(repo: git.Repo, files: dict[str, str | None], message: str) -> str:
    write(repo, files)
    repo.git.add("-A")
    repo.git.commit("-q", "-m", message)
    return repo.head.commit.hexsha


def model(model_id: str, priority: int = 5) -> str:
    return MODEL.format(id=model_id, priority=priority)


@pytest.fixture
def local(tmp_path: Path) -> git.Repo:
    repo = init_repo(tmp_path / "specs")
    commit(
        repo,
        {"desired-state/cluster.yaml": CLUSTER, "desired-state/models/a.yaml": model("a")},
        "Add model a",
    )
    return repo


# ---- local ----------------------------------------------------------------------------------


def test_clean_working_tree_is_head(local: git.Repo) -> None:
    source = LocalSource(Path(local.working_tree_dir) / "desired-state")
    revision = source.revision()
    assert revision is not None
    assert revision.sha == local.head.commit.hexsha == source.head_sha()
    assert not revision.dirty and revision.dirty_summary == ""
    assert revision.subject == "Add model a"
    assert revision.author == "Test Operator <ops@example.com>"
    assert revision.time is not None
    assert revision.label() == revision.sha[:12]
    raw = source.load()
    assert raw.revision == revision.sha  # exactly a commit: say which
    assert [doc.data["id"] for doc in raw.models] == ["a"]
    assert isinstance(source, Source)  # what the loop types against


def test_uncommitted_spec_edit_is_marked_dirty_with_its_effect(local: git.Repo) -> None:
    source = LocalSource(Path(local.working_tree_dir) / "desired-state")
    write(local, {"desired-state/models/a.yaml": model("a", priority=9)})
    write(local, {"desired-state/models/b.yaml": model("b")})
    revision = source.revision()
    assert revision is not None and revision.dirty
    assert revision.sha == local.head.commit.hexsha
    assert "added b" in revision.dirty_summary
    assert "changed a (priority)" in revision.dirty_summary
    assert "a 5 -> 9" in revision.dirty_summary
    assert "models/a.yaml" in revision.dirty_summary  # the files, too
    assert revision.label().endswith("+dirty")
    raw = source.load()
    assert raw.revision is None  # not a commit: revision() says which commit it is on
    assert {doc.data["id"] for doc in raw.models} == {"a", "b"}


def test_invalid_uncommitted_edit_is_summarised_by_file(local: git.Repo) -> None:
    source = LocalSource(Path(local.working_tree_dir) / "desired-state")
    write(local, {"desired-state/models/a.yaml": "id: a\nframework: vllm\npriorty: 3\n"})
    revision = source.revision()
    assert revision is not None and revision.dirty
    assert revision.dirty_summary == "uncommitted: models/a.yaml"


def test_files_that_are_not_specs_do_not_make_it_dirty(local: git.Repo) -> None:
    source = LocalSource(Path(local.working_tree_dir) / "desired-state")
    write(local, {"desired-state/README.md": "notes", "elsewhere.txt": "x"})
    revision = source.revision()
    assert revision is not None and not revision.dirty


def test_committed_only_reads_head_not_the_working_tree(local: git.Repo) -> None:
    source = LocalSource(Path(local.working_tree_dir) / "desired-state", committed_only=True)
    write(local, {"desired-state/models/b.yaml": model("b")})
    raw = source.load()
    assert [doc.data["id"] for doc in raw.models] == ["a"]
    assert raw.revision == local.head.commit.hexsha
    revision = source.revision()
    assert revision is not None and not revision.dirty  # what is applied is exactly HEAD


def test_head_sha_follows_new_commits(local: git.Repo) -> None:
    source = LocalSource(Path(local.working_tree_dir) / "desired-state")
    before = source.head_sha()
    after = commit(local, {"desired-state/models/b.yaml": model("b")}, "Add b")
    assert before != after
    assert source.head_sha() == after


def test_directory_outside_git_still_loads(tmp_path: Path) -> None:
    directory = tmp_path / "plain"
    (directory / "models").mkdir(parents=True)
    (directory / "models" / "a.yaml").write_text(model("a"))
    source = LocalSource(directory)
    assert not source.in_git
    assert source.revision() is None and source.head_sha() is None
    raw = source.load()
    assert raw.revision is None and len(raw.models) == 1
    with pytest.raises(LoadError):
        LocalSource(directory, committed_only=True).load()


def test_repository_without_commits_has_no_revision(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "fresh")
    write(repo, {"desired-state/models/a.yaml": model("a")})
    source = LocalSource(tmp_path / "fresh" / "desired-state")
    assert source.revision() is None and source.head_sha() is None
    assert len(source.load().models) == 1


# ---- remote ---------------------------------------------------------------------------------


@pytest.fixture
def remote(tmp_path: Path) -> tuple[git.Repo, git.Repo]:
    """(bare remote, an operator's clone that pushes to it), one commit on main."""
    bare = init_repo(tmp_path / "remote.git", bare=True)
    work = init_repo(tmp_path / "operator")
    work.create_remote("origin", bare.git_dir)
    commit(
        work,
        {"desired-state/cluster.yaml": CLUSTER, "desired-state/models/a.yaml": model("a")},
        "Add a",
    )
    work.git.push("-q", "-u", "origin", "main")
    return bare, work


def follow(bare: git.Repo, state_dir: Path, **options) -> RemoteSource:
    return RemoteSource(bare.git_dir, "main", state_dir=state_dir, **options)


def model_ids(source: RemoteSource) -> list[str]:
    return sorted(doc.data["id"] for doc in source.load().models)


def test_first_sync_clones_under_the_state_directory(remote, tmp_path: Path) -> None:
    bare, work = remote
    source = follow(bare, tmp_path / "state")
    assert isinstance(source, Source)
    assert source.head_sha() is None
    with pytest.raises(LoadError):
        source.load()  # nothing fetched yet
    result = source.sync()
    assert result.changed and result.old is None
    assert result.new == work.head.commit.hexsha == source.head_sha()
    assert source.workdir == tmp_path / "state" / "repo"
    assert source.directory == tmp_path / "state" / "repo" / "desired-state"
    assert model_ids(source) == ["a"]
    raw = source.load()
    assert raw.revision == result.new
    assert validate_raw(raw).valid
    assert source.sync() == type(result)(False, result.new, result.new)


def test_sync_fast_forwards_to_new_commits(remote, tmp_path: Path) -> None:
    bare, work = remote
    source = follow(bare, tmp_path / "state")
    first = source.sync().new
    commit(work, {"desired-state/models/b.yaml": model("b")}, "Add b")
    second = commit(work, {"desired-state/models/c.yaml": model("c")}, "Add c")
    work.git.push("-q", "origin", "main")
    result = source.sync()
    assert (result.changed, result.old, result.new, result.refused) == (True, first, second, None)
    assert source.head_sha() == second
    assert model_ids(source) == ["a", "b", "c"]
    revision = source.revision()
    assert revision is not None and revision.subject == "Add c"


def force_push_rewrite(work: git.Repo) -> str:
    """Replace the last commit by another one and force-push: history is rewritten."""
    work.git.reset("-q", "--hard", "HEAD~1")
    rewritten = commit(work, {"desired-state/models/z.yaml": model("z")}, "Add z instead")
    work.git.push("-q", "--force", "origin", "main")
    return rewritten


def test_force_push_is_refused_and_not_applied(remote, tmp_path: Path) -> None:
    bare, work = remote
    source = follow(bare, tmp_path / "state")
    source.sync()
    applied = commit(work, {"desired-state/models/b.yaml": model("b")}, "Add b")
    work.git.push("-q", "origin", "main")
    assert source.sync().new == applied
    rewritten = force_push_rewrite(work)

    result = source.sync()
    assert not result.changed
    assert (result.old, result.new) == (applied, rewritten)
    assert result.refused is not None
    assert "force-push" in result.refused and applied[:12] in result.refused
    assert source.head_sha() == applied  # still the applied commit
    assert source.remote_sha() == rewritten  # what the remote says, for the operator
    assert model_ids(source) == ["a", "b"]
    assert source.sync().refused is not None  # until an operator acts

    accepted = source.sync(force=True)  # the operator accepts the remote once
    assert accepted.changed and accepted.forced and accepted.new == rewritten
    assert model_ids(source) == ["a", "z"]


def test_allow_force_push_applies_rewritten_history(remote, tmp_path: Path) -> None:
    bare, work = remote
    source = follow(bare, tmp_path / "state", allow_force_push=True)
    source.sync()
    commit(work, {"desired-state/models/b.yaml": model("b")}, "Add b")
    work.git.push("-q", "origin", "main")
    source.sync()
    rewritten = force_push_rewrite(work)
    result = source.sync()
    assert result.changed and result.forced and result.refused is None
    assert source.head_sha() == rewritten
    assert model_ids(source) == ["a", "z"]


def test_reset_of_the_remote_to_an_older_commit_is_refused(remote, tmp_path: Path) -> None:
    bare, work = remote
    source = follow(bare, tmp_path / "state")
    old = source.sync().new
    newer = commit(work, {"desired-state/models/b.yaml": model("b")}, "Add b")
    work.git.push("-q", "origin", "main")
    source.sync()
    work.git.push("-q", "--force", "origin", f"{old}:refs/heads/main")
    result = source.sync()
    assert result.refused is not None and "reset back" in result.refused
    assert source.head_sha() == newer


def test_missing_branch_and_unreachable_remote_are_errors(remote, tmp_path: Path) -> None:
    bare, _ = remote
    with pytest.raises(SourceError, match="cannot clone"):
        RemoteSource(bare.git_dir, "nope", state_dir=tmp_path / "s1").sync()
    with pytest.raises(SourceError, match="cannot clone"):
        RemoteSource(str(tmp_path / "absent.git"), state_dir=tmp_path / "s2").sync()
    with pytest.raises(TypeError):
        RemoteSource(bare.git_dir)


def test_credentials_in_the_url_never_reach_messages(tmp_path: Path) -> None:
    source = RemoteSource(
        "https://user:s3cret@127.0.0.1:9/x.git", state_dir=tmp_path / "s", timeout_s=10
    )
    with pytest.raises(SourceError) as caught:
        source.sync()
    assert "s3cret" not in str(caught.value)


def test_configured_branch_change_is_followed(remote, tmp_path: Path) -> None:
    bare, work = remote
    source = follow(bare, tmp_path / "state")
    source.sync()
    work.git.checkout("-q", "-b", "staging")
    staging = commit(work, {"desired-state/models/s.yaml": model("s")}, "Staging only")
    work.git.push("-q", "origin", "staging")
    moved = RemoteSource(bare.git_dir, "staging", state_dir=tmp_path / "state").sync()
    assert moved.changed and moved.new == staging and moved.refused is None


# ---- bare repositories ------------------------------------------------------------------------


def test_load_revision_bare_reads_a_directory_of_a_bare_repository(remote) -> None:
    bare, work = remote
    raw = load_revision_bare(bare.git_dir, "desired-state", "main")
    assert raw.revision == work.head.commit.hexsha
    assert [doc.file for doc in raw.models] == ["desired-state/models/a.yaml"]
    assert raw.cluster is not None
    with pytest.raises(LoadError, match="unknown revision"):
        load_revision_bare(bare.git_dir, "desired-state", "0" * 40)
    with pytest.raises(LoadError, match="not present"):
        load_revision_bare(bare.git_dir, "elsewhere", "main")


def test_credentials_in_the_remote_url_never_reach_messages(tmp_path: Path) -> None:
    url = "https://deploy:s3cret-token@127.0.0.1:1/ops/specs.git?access_token=t0ken"
    source = RemoteSource(url, "main", state_dir=tmp_path / "state", timeout_s=10)
    with pytest.raises(SourceError) as caught:
        source.sync()  # nothing listens on port 1: git fails and says so, URL included
    message = str(caught.value)
    assert "s3cret" not in message and "t0ken" not in message and "deploy" not in message
    assert "https://***@127.0.0.1:1/ops/specs.git" in message
