"""Reading and validating desired state for a command."""

from __future__ import annotations

from pathlib import Path

from reconciler.core.desired import RawDesiredState, ValidationResult
from reconciler.core.validate import validate
from reconciler.engines.registry import catalog, missing_message
from reconciler.source.load import LoadError, load_directory, load_revision, load_staged

from .options import usage_error


def read_desired(directory: Path, rev: str | None, staged: bool = False) -> RawDesiredState:
    """Load from the working tree, a revision or the index; a bad location is exit 2."""
    try:
        if staged:
            return load_staged(directory)
        return load_revision(directory, rev) if rev else load_directory(directory)
    except LoadError as exc:
        raise usage_error(str(exc)) from exc


def validate_here(raw: RawDesiredState, *, check_paths: bool = True) -> ValidationResult:
    """Validate with this host's checks: engine parameters, and model files present."""
    path_check = missing_message if check_paths else None
    return validate(raw, path_check=path_check, catalog=catalog())
