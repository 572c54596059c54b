"""Where uploaded files are opened: a sandboxed engine worker, never the web process.

Every load or run of an uploaded model (analysis, sessions) happens in a worker started
here. With bubblewrap (the default where the kernel allows user namespaces) the worker
sees only the interpreter and its libraries read-only, its job's input folder read-only
and its own scratch folder; no instance folder, database, storage, secret key, home or
/tmp of the server, no network, uid 65534 in a user namespace of its own. prlimit caps its
memory, CPU time, file sizes and open files in every mode. Where bubblewrap cannot run,
the worker runs as a dedicated unprivileged user (when the server is root), or with the
limits alone; uploads that carry code (TorchScript, .pt2) are then refused unless the
operator of the server opted in.

Only the trusted parent moves a worker's output into storage (take_output).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("optideck.sandbox")

BUBBLEWRAP = "bubblewrap"
USER = "user"
NONE = "none"
ISOLATIONS = (BUBBLEWRAP, USER, NONE)

INSIDE_JOB = Path("/job")
# One protocol line may carry a session's results; nothing honest comes near this.
MAX_LINE = 8 << 20
STDERR_KEPT = 64 << 10
PROBE_TIMEOUT = 60


class SandboxError(Exception):
    """The worker broke the protocol, or could not be started."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_seconds: int
    file_bytes: int
    open_files: int
    processes: int
    max_unpacked_bytes: int

    @classmethod
    def from_settings(cls, settings: dict) -> Limits:
        sandbox = settings["sandbox"]
        return cls(
            memory_bytes=sandbox["memory_mb"] << 20,
            cpu_seconds=sandbox["cpu_seconds"],
            file_bytes=sandbox["output_mb"] << 20,
            open_files=sandbox["open_files"],
            processes=sandbox["processes"],
            max_unpacked_bytes=settings["uploads"]["max_unpacked_bytes"],
        )

    def for_job(self) -> dict:
        """What the worker is told of its limits (to word its errors, and for the archives
        it unpacks)."""
        return {"memory_mb": self.memory_bytes >> 20, "max_unpacked_bytes": self.max_unpacked_bytes}


def _code_dirs(protected: list[Path]) -> list[Path]:
    """Folders the interpreter needs: its prefixes, its site-packages and the webapp
    package itself; never a project folder or a home (which may hold an instance folder,
    configuration or keys), never anything holding or inside a protected folder."""
    import site

    import webapp

    candidates = [
        Path(sys.base_prefix),
        Path(sys.prefix),
        Path(webapp.__file__).parent,
        *map(Path, site.getsitepackages()),
    ]
    candidates += [Path(p) for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")]
    home = Path.home().resolve()
    chosen: list[Path] = []
    for path in (p.resolve() for p in candidates if p.is_dir()):
        if any(path == q or path in q.parents or q in path.parents for q in protected):
            continue
        if path == home or path in home.parents:
            continue
        if any(path == c or c in path.parents for c in chosen):
            continue
        chosen = [c for c in chosen if path not in c.parents] + [path]
    return chosen


class Sandbox:
    """Starts engine workers under the configured isolation."""

    def __init__(self, settings: dict):
        sandbox = settings["sandbox"]
        instance = Path(settings["app"]["instance_dir"])
        self.root = Path(sandbox["work_dir"])
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = Limits.from_settings(settings)
        self.user = sandbox["user"]
        self.allow_torch_unisolated = sandbox["allow_torch_without_isolation"]
        self.scratch_dir = self.root
        self.code_dirs = _code_dirs(
            [instance.resolve(), Path(settings["storage"]["dir"]).resolve(), self.root]
        )
        self.isolation = _detect(self, sandbox["isolation"])
        if self.isolation == NONE and self.allow_torch_unisolated:
            log.warning(
                "NO SANDBOX: sandbox.allow_torch_without_isolation is on, so the code in "
                "uploaded TorchScript and .pt2 files runs with resource limits alone"
            )
        elif self.isolation == NONE:
            log.warning("no sandbox works here: TorchScript and .pt2 uploads are refused")
        else:
            log.info("uploaded files are opened in a sandbox: %s", self.describe())

    @property
    def accepts_code(self) -> bool:
        """Whether uploads that carry code (TorchScript, .pt2) may be opened here."""
        return self.isolation != NONE or self.allow_torch_unisolated

    def describe(self) -> str:
        return {
            BUBBLEWRAP: "bubblewrap: own mount, user, PID, IPC and network namespaces, "
            "uid 65534, read-only libraries, resource limits",
            USER: f"dedicated user {self.user!r} with resource limits (bubblewrap cannot run here)",
            NONE: "resource limits only: no isolation tool works here",
        }[self.isolation]

    def start(self, kind: str, threads: int, cpu_seconds: int | None = None) -> Worker:
        """A worker waiting for its job (`kind` "session" warms the libraries up first)."""
        job_dir = self.root / f"job-{uuid.uuid4().hex}"
        return Worker(self, job_dir, kind, threads, cpu_seconds or self.limits.cpu_seconds)

    # The command line ------------------------------------------------------------------

    def command(
        self, job_dir: Path, kind: str, threads: int, cpu_seconds: int, isolation: str
    ) -> tuple[list[str], dict]:
        """The worker's command line and the environment prlimit starts with (never the
        server's own: a sandbox's PID 1 is a bubblewrap process whose environment the
        worker could read)."""
        limits = self.limits
        prlimit = [
            "prlimit",
            f"--as={limits.memory_bytes}",
            f"--cpu={cpu_seconds}",
            f"--fsize={limits.file_bytes}",
            f"--nofile={limits.open_files}",
            "--core=0",
        ]
        if isolation == USER:
            # Counted per uid, so only meaningful for a uid of its own.
            prlimit.append(f"--nproc={limits.processes}")
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads),
            "OPTIDECK_WORKER_KIND": kind,
        }
        python = [sys.executable, "-I", "-m", "webapp.engine.worker"]
        if isolation != BUBBLEWRAP:
            out = job_dir / "out"
            env.update({"HOME": str(out), "TMPDIR": str(out / "tmp")})
            return [*prlimit, "--", *python], env
        env.update({"HOME": str(INSIDE_JOB / "out"), "TMPDIR": str(INSIDE_JOB / "out" / "tmp")})
        # --as-pid-1: the worker is the namespace's PID 1, so no bubblewrap process (whose
        # environment is the one it was started with) is there to be read through /proc.
        bwrap = [
            "bwrap",
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--hostname",
            "sandbox",
            "--clearenv",
        ]
        for name, value in env.items():
            bwrap += ["--setenv", name, value]
        for top in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
            path = Path("/") / top
            if path.is_symlink():
                bwrap += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                bwrap += ["--ro-bind", str(path), str(path)]
        bwrap += ["--ro-bind", "/usr", "/usr"]
        for path in self.code_dirs:
            if not str(path).startswith("/usr/"):
                bwrap += ["--ro-bind", str(path), str(path)]
        for path in (
            "/etc/ld.so.cache",
            "/etc/ld.so.conf",
            "/etc/ld.so.conf.d",
            "/sys/devices/system/cpu",
        ):  # the linker; CPU features for the kernels
            bwrap += ["--ro-bind-try", path, path]
        bwrap += [
            "--ro-bind",
            str(self._identity("passwd")),
            "/etc/passwd",
            "--ro-bind",
            str(self._identity("group")),
            "/etc/group",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(16 << 20),
            "--tmpfs",
            "/tmp",  # noqa: S108 - the sandbox's own
            "--ro-bind",
            str(job_dir / "in"),
            str(INSIDE_JOB / "in"),
            "--bind",
            str(job_dir / "out"),
            str(INSIDE_JOB / "out"),
            "--chdir",
            str(INSIDE_JOB / "out"),
        ]
        return [*prlimit, "--", *bwrap, "--", *python], {"PATH": env["PATH"], "LANG": "C.UTF-8"}

    def _identity(self, name: str) -> Path:
        """/etc/passwd and /etc/group naming only the sandbox's user, for libraries that
        look the current user up."""
        path = self.root / f"sandbox-{name}"
        if not path.exists():
            line = (
                "sandbox:x:65534:65534::/job/out:/usr/sbin/nologin\n"
                if name == "passwd"
                else "sandbox:x:65534:\n"
            )
            path.write_text(line)
        return path


def in_job(worker: Worker | None, path: Path) -> str:
    """How a worker names a path of its job folder."""
    if worker is not None and worker.isolation == BUBBLEWRAP:
        return str(INSIDE_JOB / path.relative_to(worker.job_dir))
    return str(path)


class Worker:
    """One sandboxed engine process and its job folder (in/ read-only, out/ its own)."""

    def __init__(
        self,
        sandbox: Sandbox,
        job_dir: Path,
        kind: str,
        threads: int,
        cpu_seconds: int,
        isolation: str | None = None,
    ):
        self.sandbox, self.job_dir, self.threads = sandbox, job_dir, threads
        self.isolation = isolation or sandbox.isolation
        self.in_dir, self.out_dir = job_dir / "in", job_dir / "out"
        job_dir.mkdir(mode=0o700)
        self.in_dir.mkdir(mode=0o755)
        (self.out_dir / "tmp").mkdir(mode=0o700, parents=True)
        ids = None
        if self.isolation == USER:
            entry = pwd.getpwnam(sandbox.user)
            ids = entry.pw_uid, entry.pw_gid
            # The worker's user may pass through to its folders, not list the job folder.
            os.chmod(job_dir, 0o711)  # noqa: S103
            for path in (self.out_dir, self.out_dir / "tmp"):
                os.chown(path, *ids)
        argv, env = sandbox.command(job_dir, kind, threads, cpu_seconds, self.isolation)
        self._buffer = b""
        self._stderr: deque[str] = deque()
        self._stderr_size = 0
        try:
            self.process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=str(self.out_dir),
                close_fds=True,
                # A process group of its own: kill() reaches whatever bubblewrap forked,
                # even a child still setting the sandbox up (it would hold our pipes open).
                start_new_session=True,
                user=ids[0] if ids else None,
                group=ids[1] if ids else None,
                extra_groups=[] if ids else None,
            )
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        os.set_blocking(self.process.stdout.fileno(), False)
        self._stderr_reader = threading.Thread(
            target=self._drain_stderr, daemon=True, name=f"sandbox-stderr-{self.process.pid}"
        )
        self._stderr_reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def fileno(self) -> int:
        return self.process.stdout.fileno()

    def alive(self) -> bool:
        return self.process.poll() is None

    def place(self, source: Path, name: str) -> Path:
        """Copy an input into the job's read-only folder; returns its path as the worker
        sees it. A copy: the worker's user may not read the store, and nothing it does
        can reach the stored original."""
        target = self.in_dir / name
        shutil.copyfile(source, target)
        os.chmod(target, 0o444)
        return Path(in_job(self, target))

    def out_path(self) -> str:
        return in_job(self, self.out_dir)

    def send(self, message) -> None:
        data = (message if isinstance(message, str) else json.dumps(message)) + "\n"
        self.process.stdin.write(data.encode())
        self.process.stdin.flush()

    def cancel(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.send("cancel")

    def receive(self) -> list[list]:
        """The complete messages available now (never blocks)."""
        messages = []
        while True:
            try:
                chunk = os.read(self.fileno(), 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                break
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE and b"\n" not in self._buffer:
                self.kill()
                raise SandboxError("the worker sent a message beyond the protocol's size limit")
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError as exc:
                self.kill()
                raise SandboxError("the worker broke the protocol") from exc
            if not isinstance(message, list) or not message or not isinstance(message[0], str):
                self.kill()
                raise SandboxError("the worker broke the protocol")
            messages.append(message)
        return messages

    def _drain_stderr(self) -> None:
        """Keep the tail of what the worker prints (for the log), so it never blocks. The
        pipe is closed here, at its end: closing it from another thread would wait for
        this one."""
        try:
            for raw in self.process.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self._stderr.append(line)
                self._stderr_size += len(line)
                while self._stderr_size > STDERR_KEPT and self._stderr:
                    self._stderr_size -= len(self._stderr.popleft())
                log.debug("worker %s: %s", self.process.pid, line)
        finally:
            self.process.stderr.close()

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def exit_reason(self) -> tuple[str, str]:
        """Why the process ended without a final message: (error type, message)."""
        code = self.process.poll()
        signal_number = (
            -code
            if code is not None and code < 0
            else (code - 128 if code is not None and code > 128 else None)
        )
        limits = self.sandbox.limits
        if signal_number == 24:  # SIGXCPU
            return "resource_limit", (
                f"The model used more CPU time than the sandbox allows "
                f"({limits.cpu_seconds} s, sandbox.cpu_seconds)."
            )
        if signal_number == 25:  # SIGXFSZ
            return "resource_limit", (
                f"The worker tried to write a file larger than the "
                f"sandbox allows ({limits.file_bytes >> 20} MB, "
                "sandbox.output_mb)."
            )
        return "worker_lost", f"The worker process died (exit code {code})."

    def output_bytes(self) -> int:
        """Bytes the worker has written to its scratch folder (no links followed)."""
        total, stack = 0, [self.out_dir]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    with contextlib.suppress(OSError):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    def take_output(self, name: str, target_dir: Path, max_bytes: int) -> Path:
        """Copy the worker's output file `name` to a trusted folder, refusing anything but
        a regular file within the limit: a link would make the server read a file of its
        own choosing. Call once the worker has ended."""
        out_fd = os.open(self.out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=out_fd)
        except OSError as exc:
            raise SandboxError(f"the worker left no regular file {name!r}") from exc
        finally:
            os.close(out_fd)
        with os.fdopen(fd, "rb") as source:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise SandboxError(f"the worker's {name!r} is not a regular file")
            if info.st_size > max_bytes:
                raise SandboxError(f"the worker's {name!r} is larger than {max_bytes} bytes")
            target = target_dir / f"taken-{uuid.uuid4().hex}-{name}"
            with target.open("xb") as copy:
                shutil.copyfileobj(source, copy, 1 << 20)
        return target

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the process if it still runs and remove the job folder."""
        self.kill()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("sandboxed worker %s did not exit after SIGKILL", self.process.pid)
        self._stderr_reader.join(timeout)  # ends at the pipe's end, once the process is gone
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        shutil.rmtree(self.job_dir, ignore_errors=True)


def run_job(sandbox: Sandbox, job: dict, inputs: dict[str, Path], timeout: float, threads: int) -> list:
    """Run one short job (an analysis) to its final message: ["result", ...] or
    ["failed", error_type, message]. Raises SandboxError when the worker breaks or hangs."""
    worker = sandbox.start("analyse", threads, cpu_seconds=max(1, int(timeout * threads) + 5))
    try:
        for key, source in inputs.items():
            job[key] = str(worker.place(source, key.removesuffix("_path") + source.suffix))
        job["limits"] = sandbox.limits.for_job()
        worker.send(job)
        deadline = time.monotonic() + timeout
        while True:
            for message in worker.receive():
                if message[0] in ("result", "failed"):
                    return message
            if not worker.alive():
                for message in worker.receive():
                    if message[0] in ("result", "failed"):
                        return message
                error_type, text = worker.exit_reason()
                log.info("analysis worker ended: %s\n%s", text, worker.stderr_tail())
                return [
                    "failed",
                    error_type if error_type != "worker_lost" else "crashed",
                    text
                    if error_type != "worker_lost"
                    else "Opening the file crashed the analyser; the file is damaged or not a model.",
                ]
            if time.monotonic() > deadline:
                return ["failed", "timeout", f"Analysing the upload took longer than {timeout:g} s."]
            _wait_readable(worker, min(0.5, max(0.0, deadline - time.monotonic())))
    finally:
        worker.close()


def _wait_readable(worker: Worker, timeout: float) -> None:
    import select

    select.select([worker.fileno()], [], [], timeout)


# Choosing the isolation ---------------------------------------------------------------------

_detected: dict[tuple, str] = {}


def _detect(sandbox: Sandbox, wanted: str) -> str:
    """The isolation to use, probed once per process (starting a worker costs ~50 ms)."""
    key = (wanted, sandbox.user, str(sandbox.root), tuple(map(str, sandbox.code_dirs)))
    if key not in _detected:
        _detected[key] = _probe(sandbox, wanted)
    return _detected[key]


def _probe(sandbox: Sandbox, wanted: str) -> str:
    order = {"auto": [BUBBLEWRAP, USER, NONE]}.get(wanted, [wanted])
    reasons = []
    for isolation in order:
        if isolation == USER and os.geteuid() != 0:
            reasons.append("user: the server is not root, so it cannot switch users")
            continue
        if isolation == USER:
            try:
                pwd.getpwnam(sandbox.user)
            except KeyError:
                reasons.append(f"user: no user {sandbox.user!r}")
                continue
        problem = _try(sandbox, isolation)
        if problem is None:
            if reasons:
                log.warning("sandbox: using %s; %s", isolation, "; ".join(reasons))
            return isolation
        reasons.append(f"{isolation}: {problem}")
    from ..config import ConfigError

    raise ConfigError("sandbox.isolation: no isolation works here (" + "; ".join(reasons) + ")")


def _try(sandbox: Sandbox, isolation: str) -> str | None:
    """None if a worker starts and answers under `isolation`; else why not."""
    if isolation == BUBBLEWRAP and shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian: apt-get install bubblewrap)"
    if shutil.which("prlimit") is None:
        return "prlimit is not installed (Debian: util-linux)"
    worker = None
    try:
        worker = Worker(
            sandbox, sandbox.root / f"probe-{uuid.uuid4().hex}", "probe", 1, PROBE_TIMEOUT, isolation
        )
        worker.send({"kind": "probe"})
        worker.process.stdin.close()
        worker.process.wait(PROBE_TIMEOUT)
        messages = worker.receive()
        if worker.process.returncode == 0 and messages == [["ready"]]:
            return None
        return f"the probe failed: {worker.stderr_tail(3) or worker.process.returncode}"
    except (OSError, subprocess.SubprocessError, SandboxError) as exc:
        return f"the probe failed: {exc}"
    finally:
        if worker is not None:
            worker.close()
