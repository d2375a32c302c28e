"""The hostile-input suite: the integration helpers on sys.path, and a desired state fixture.

The cases drive the reconciler the way someone who can open a pull request would: through files
in desired-state/, archives handed to `reconciler restore`, bodies sent to the API.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from security_support import make_desired

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
if str(INTEGRATION) not in sys.path:  # cli_support, apply_support, daemon_support...
    sys.path.append(str(INTEGRATION))


@pytest.fixture
def desired(tmp_path: Path) -> Path:
    """tmp_path/desired-state with cluster.yaml and one valid model, `good`."""
    return make_desired(tmp_path)
