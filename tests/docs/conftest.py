"""The stand-ins the documentation's code runs on, built once per session."""

from __future__ import annotations

import pytest

from tests.docs.snippets import stand_in_env


@pytest.fixture(scope="session")
def doc_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment variables for a documentation snippet (:func:`tests.docs.snippets.stand_in_env`)."""
    return stand_in_env(tmp_path_factory.mktemp("hf"))
