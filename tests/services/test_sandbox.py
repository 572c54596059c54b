"""What code running in the sandbox can see and do: the walls themselves, tested with code
that tries to get through them (as a model that slipped past the screening would)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests import hostile
from tests.helpers import TEST_SECRET
from webapp.config import load_config
from webapp.services import sandbox as sandbox_module
from webapp.services.sandbox import BUBBLEWRAP, PACKAGE_ROOT, WORKER_BOOT, Sandbox, SandboxError

# Every test starts sandboxed processes: a Sandbox probes its isolation with a worker.
pytestmark = pytest.mark.slow

PROBE = textwrap.dedent("""
    import json, os, socket, sys
    found = {"uid": os.getuid(), "root": sorted(os.listdir("/"))}
    def attempt(name, action):
        try:
            found[name] = repr(action())
        except Exception as exc:
            found[name] = "refused: " + type(exc).__name__
    targets = json.loads(sys.argv[1])
    attempt("read_secret", lambda: open(targets["secret"]).read())
    attempt("read_database", lambda: open(targets["database"], "rb").read(16))
    attempt("list_storage", lambda: os.listdir(targets["storage"]))
    attempt("write_outside", lambda: open(targets["outside"], "w").write("pwned"))
    attempt("write_libraries", lambda: open(sys.prefix + "/pwned", "w").write("pwned"))
    attempt("network", lambda: socket.create_connection(("127.0.0.1", 5432), timeout=2))
    attempt("environ_1", lambda: open("/proc/1/environ", "rb").read())
    attempt("own_environ", lambda: dict(os.environ))
    attempt("memory", lambda: len(bytearray(int(targets["allocate"]))))
    attempt("write_scratch", lambda: open("/job/out/ok", "w").write("fine"))
    attempt("sysctl", lambda: open("/proc/sys/vm/swappiness", "w").write("61"))
    attempt("fork", os.fork)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    found["keyctl"] = "refused" if libc.syscall(250, 0, 0, 0, 0, 0) == -1 else "ran"
    import threading
    thread = threading.Thread(target=lambda: found.__setitem__("thread", "ran"))
    thread.start()
    thread.join()
    print(json.dumps(found))
""")


@pytest.fixture
def settings(tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "secret_key").write_text(TEST_SECRET)
    (instance / "optideck.db").write_bytes(b"SQLite format 3\0")
    return load_config(overrides={"app": {"instance_dir": str(instance)}, "sandbox": {"memory_mb": 1024}})


def _interpreter_options_end(argv: list[str]) -> int:
    """Where the worker's own code starts in a launch's command line (after `python -I`):
    tests put theirs there."""
    return argv.index(WORKER_BOOT) - 1


def _run_probe(sandbox: Sandbox, tmp_path, settings) -> dict:
    instance = settings["app"]["instance_dir"]
    targets = {
        "secret": f"{instance}/secret_key",
        "database": f"{instance}/optideck.db",
        "storage": settings["storage"]["dir"],
        "outside": str(tmp_path / "pwned"),
        "allocate": 2 << 30,
    }
    # A secret in the server's environment must not reach the worker by any route.
    return _run_inside(sandbox, tmp_path, PROBE, targets, {"OPTIDECK_SECRET_KEY": TEST_SECRET})


def _run_inside(sandbox: Sandbox, tmp_path, code: str, targets: dict, server_env=None) -> dict:
    """Run `code` as a worker would run, with `targets` as JSON in argv[1]; what it prints."""
    worker_dir = tmp_path / "job"
    (worker_dir / "in").mkdir(parents=True)
    (worker_dir / "out" / "tmp").mkdir(parents=True)
    launch = sandbox.prepare(worker_dir, "probe", 1, 30, sandbox.isolation)
    argv, env = launch.argv, {**launch.env, **(server_env or {})}
    argv = argv[: _interpreter_options_end(argv)] + ["-c", code, json.dumps(targets)]
    result = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=worker_dir / "out",
        pass_fds=launch.pass_fds,
    )
    launch.started()
    if launch.info is not None:
        os.close(launch.info)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bubblewrap_walls(settings, tmp_path):
    """Can code inside the sandbox read the secret key or database, write outside its
    scratch folder, reach the network, read the server's environment or take memory
    beyond its cap? (It may write its scratch folder.)"""
    sandbox = Sandbox(settings)
    if sandbox.isolation != BUBBLEWRAP:
        pytest.skip(f"bubblewrap is not usable here ({sandbox.describe()})")
    found = _run_probe(sandbox, tmp_path, settings)
    assert found["uid"] == 65534
    for attempt in (
        "read_secret",
        "read_database",
        "list_storage",
        "write_outside",
        "write_libraries",
        "network",
        "memory",
        "sysctl",
        "fork",
        "keyctl",
    ):
        assert found[attempt].startswith("refused"), (attempt, found[attempt])
    assert TEST_SECRET not in json.dumps(found)
    assert not (tmp_path / "pwned").exists()
    assert found["write_scratch"] == "4"
    assert found["thread"] == "ran"  # threads, which the maths libraries use, still work
    assert Path("/proc/sys/vm/swappiness").read_text().strip() != "61"
    assert (tmp_path / "job" / "out" / "ok").read_text() == "fine"


WRITES = textwrap.dedent("""
    import json, os, sys
    found = {}
    for name, path in json.loads(sys.argv[1]).items():
        try:
            with open(path, "x") as module:
                module.write("pwned = True\\n")
            found[name] = "wrote"
        except OSError as exc:
            found[name] = "refused: " + os.strerror(exc.errno)
    print(json.dumps(found))
""")


def test_a_model_cannot_leave_a_module_beside_the_package(settings, tmp_path):
    """Can code in the sandbox drop a .py next to the webapp package (a folder on the
    worker's sys.path) or anywhere on the sandbox's root, for the rest of that worker's
    life to import? (It may still write its scratch folder and /tmp.)"""
    sandbox = Sandbox(settings)
    if sandbox.isolation != BUBBLEWRAP:
        pytest.skip(f"bubblewrap is not usable here ({sandbox.describe()})")
    found = _run_inside(
        sandbox,
        tmp_path,
        WRITES,
        {
            "package_root": str(PACKAGE_ROOT / "pwned.py"),
            "root": "/pwned.py",
            "job": "/job/pwned.py",
            "scratch": "/job/out/ok.py",
            "tmp": "/tmp/ok.py",  # noqa: S108 - the sandbox's own
        },
    )
    for name in ("package_root", "root", "job"):
        assert found[name] == "refused: Read-only file system", (name, found)
    assert found["scratch"] == found["tmp"] == "wrote", found
    assert not (PACKAGE_ROOT / "pwned.py").exists()


def test_no_isolation_refuses_code_uploads_unless_allowed(settings):
    """Where no sandbox works, TorchScript and .pt2 (which carry code) are refused
    unless the operator of the server opted in."""
    none = load_config(
        overrides={"app": {"instance_dir": settings["app"]["instance_dir"]}, "sandbox": {"isolation": "none"}}
    )
    assert not Sandbox(none).accepts_code
    none["sandbox"]["allow_torch_without_isolation"] = True
    assert Sandbox(none).accepts_code


def test_a_named_isolation_that_cannot_work_stops_start_up(settings, monkeypatch):
    monkeypatch.setattr(
        sandbox_module.shutil, "which", lambda name: None if name == "bwrap" else "/usr/bin/" + name
    )
    settings["sandbox"]["isolation"] = "bubblewrap"
    settings["sandbox"]["work_dir"] = os.path.join(settings["sandbox"]["work_dir"], "other")
    with pytest.raises(SystemExit, match="bwrap is not installed"):
        Sandbox(settings)


@pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")
@pytest.mark.parametrize("shared", [False, True], ids=["reads-secret", "writes-file"])
def test_a_model_that_slips_past_the_screening_still_meets_the_walls(settings, tmp_path, shared):
    """Loaded in the sandbox with no screening at all, a TorchScript model mapping a
    server file at load time reads nothing and creates nothing outside the sandbox."""
    sandbox = Sandbox(settings)
    if sandbox.isolation != BUBBLEWRAP:
        pytest.skip(f"bubblewrap is not usable here ({sandbox.describe()})")
    target = tmp_path / "planted.pth" if shared else Path(settings["app"]["instance_dir"]) / "secret_key"
    job = tmp_path / "job"
    (job / "out" / "tmp").mkdir(parents=True)
    (job / "in").mkdir()
    hostile.torchscript_from_file(target, job / "in" / "evil.pt", size=16, shared=shared)
    launch = sandbox.prepare(job, "probe", 1, 60, sandbox.isolation)
    argv, env = launch.argv, launch.env
    load = (
        "import torch\ntry:\n    m = torch.jit.load('/job/in/evil.pt')\n"
        "    print(bytes(m.leak.tolist()))\nexcept Exception as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    argv = argv[: _interpreter_options_end(argv)] + ["-c", load]
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=120, pass_fds=launch.pass_fds
    )
    launch.started()
    if launch.info is not None:
        os.close(launch.info)
    assert result.stdout.startswith("refused") or shared, result.stdout + result.stderr
    assert TEST_SECRET not in result.stdout
    assert not (tmp_path / "planted.pth").exists()


class _Scripted(Sandbox):
    """A sandbox whose workers run `code` instead of the engine: a worker that went rogue."""

    code = ""

    def prepare(self, job_dir, kind, threads, cpu_seconds, isolation):
        launch = super().prepare(job_dir, kind, threads, cpu_seconds, isolation)
        if kind == "rogue":  # (the isolation probe runs the real worker)
            launch.argv[_interpreter_options_end(launch.argv) :] = ["-c", self.code]
        return launch


def _rogue(settings, code: str):
    sandbox = _Scripted(settings)
    if sandbox.isolation != BUBBLEWRAP:
        pytest.skip(f"bubblewrap is not usable here ({sandbox.describe()})")
    sandbox.code = textwrap.dedent(code)
    return sandbox.start("rogue", 1)


def _gone(pid: int, seconds: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_message_nested_too_deep_stops_the_worker(settings):
    worker = _rogue(settings, "import time\nprint('[' * 100000, flush=True)\ntime.sleep(60)")
    try:
        import time

        deadline = time.monotonic() + 20
        with pytest.raises(SandboxError):
            while time.monotonic() < deadline:
                worker.receive()
                time.sleep(0.05)
        assert _gone(worker.child_pid)
    finally:
        worker.close()


def test_a_worker_that_drops_its_parent_death_signal_still_dies(settings):
    worker = _rogue(
        settings,
        """
        import ctypes, time
        ctypes.CDLL(None).prctl(1, 0)  # PR_SET_PDEATHSIG: none
        print('["beat"]', flush=True)
        time.sleep(120)
    """,
    )
    try:
        assert worker.child_pid is not None
        worker.kill()
        assert _gone(worker.child_pid)
    finally:
        worker.close()


def test_a_deleted_file_kept_open_still_counts_as_output(settings):
    worker = _rogue(
        settings,
        """
        import os, time
        kept = open('/job/out/hidden', 'wb')
        kept.write(bytes(8 << 20))
        kept.flush()
        os.unlink('/job/out/hidden')
        print('["beat"]', flush=True)
        time.sleep(60)
    """,
    )
    try:
        import time

        deadline = time.monotonic() + 20
        while not worker.receive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.output_bytes() >= 8 << 20
    finally:
        worker.close()


@pytest.mark.parametrize("nice", [10, 0])
def test_a_worker_runs_below_the_servers_cpu_priority(settings, tmp_path, nice):
    """Sessions are batch work: their workers run at sandbox.nice, so the server's pages
    and live events come first on a busy machine."""
    settings["sandbox"]["nice"] = nice
    found = _run_inside(
        Sandbox(settings), tmp_path, "import json, os; print(json.dumps({'nice': os.nice(0)}))", {}
    )
    assert found["nice"] == os.nice(0) + nice
