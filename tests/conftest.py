"""Fixtures for the whole suite.

* The PostgreSQL fixtures (`pg_server`, `migrated_db`, `db`, `database`, ...) are in
  `dbfixtures`, the end-to-end ones (`start_sim`, `start_daemon`) in `e2e_fixtures`: registered
  here, once, as plugins. The helpers they build on stay in plain modules (`conftest_db`,
  `e2e_support`) that tests import; a plugin imported from a test module would escape pytest's
  assertion rewriting.
* `sim_pipeline`: the whole actor pipeline on an in-memory simulated world (`pipeline_support`).

Nothing here starts anything until a test asks for it: the database server, for one, is started
by the first test that needs it (once per session, and per xdist worker).
"""

from __future__ import annotations

import pytest

# Before the import below: its asserts (e.g. in `label`) then report like a test's.
pytest.register_assert_rewrite("tests.pipeline_support")

from tests.pipeline_support import SimPipelines  # noqa: E402

pytest_plugins = ["dbfixtures", "e2e_fixtures"]


@pytest.fixture
def sim_pipeline() -> SimPipelines:
    """`sim_pipeline.run(world, store, owner=owner)`: the pipeline on `world` until it has
    drained; `sim_pipeline.open(...)` to act while it runs, `sim_pipeline.build(...)` to wire
    one without starting it. See `pipeline_support.SimPipelines` for the knobs."""
    return SimPipelines()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The real-time end-to-end tests (marker `e2e`: real processes, 5-30 s each, mostly
    waiting) first, in their order. On two xdist workers (`--dist worksteal`) the run then ends
    with short tests that either worker can take, rather than one worker idle while the other
    waits out a long smoke test it started last."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)
