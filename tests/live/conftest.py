import shutil

import pytest

from tests.live.processes import OwnRedis
from tests.live.wsclient import serving


@pytest.fixture
def live(app):
    """The address of a real server of this test's app (the test is marked slow)."""
    with serving(app) as address:
        yield address


@pytest.fixture
def own_redis(tmp_path):
    """A Redis server of this test's own, which it may stop and start again."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()
