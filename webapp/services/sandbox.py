"""Where uploaded files are opened: a sandboxed engine worker, never the web process.

Every load or run of an uploaded model (analysis, sessions, the check of what a session
hands back) happens in a worker started here. With bubblewrap (the default where the
kernel allows user namespaces) the worker sees only the interpreter and its libraries
read-only, its job's input folder read-only, and can write only its own scratch folder
and its own /tmp; no instance folder, database, storage, secret key, home or /tmp of the
server; no network; uid 65534 in a user namespace of its own, as its namespace's only
process. A seccomp filter (libseccomp) refuses the system calls a model never needs and
that a process mapped to the server's uid could misuse (new processes, keyrings, tracing,
kernel modules...), and /proc's kernel settings are read-only. prlimit caps its memory,
CPU time, file sizes and open files in every mode. Where bubblewrap cannot run, the worker
runs as a dedicated unprivileged user without network (when the server is root), or with
the limits alone; uploads that carry code (TorchScript, .pt2) are then refused unless the
operator of the server opted in.

Only the trusted parent moves a worker's output into storage (take_output).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..bounds import parse_json

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

# System calls a worker never needs, refused by its seccomp filter. The worker's uid in
# its namespace maps to the server's uid outside, so these are the ones that reach
# per-uid or kernel-wide state: keyrings, other processes' memory, kernel modules and
# settings, new namespaces and mounts. Processes too: a worker is one process (threads
# are allowed), so its memory limit is all the memory it gets.
REFUSED_SYSCALLS = (
    "fork",
    "vfork",
    "keyctl",
    "add_key",
    "request_key",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "perf_event_open",
    "bpf",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    "syslog",
    "vhangup",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fanotify_init",
    "clock_settime",
    "settimeofday",
    "adjtimex",
    "iopl",
    "ioperm",
    "lookup_dcookie",
)
CLONE_THREAD = 0x00010000
# Kernel settings and devices under /proc: read-only in the sandbox where they exist.
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
PROC_HIDDEN = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/kmsg",
)


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
    nice: int

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
            nice=sandbox["nice"],
        )

    def for_job(self) -> dict:
        """What the worker is told of its limits (to word its errors, and for the archives
        it unpacks)."""
        return {"memory_mb": self.memory_bytes >> 20, "max_unpacked_bytes": self.max_unpacked_bytes}


# The folder holding the webapp package this server runs (a checkout, site-packages).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
# The worker runs the very package the server runs, however the server found it (an
# installed package, an editable install, a checkout started with `gunicorn wsgi:app`).
# `-I` ignores PYTHONPATH and the current folder, so the folder comes as an argument, and
# goes last on sys.path: nothing in it can shadow the standard library.
WORKER_BOOT = (
    "import runpy, sys; sys.path.append(sys.argv.pop(1)); "
    "runpy.run_module('webapp.engine.worker', run_name='__main__', alter_sys=True)"
)


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


def _seccomp_program() -> bytes:
    """The seccomp filter as BPF (libseccomp compiles it, bubblewrap loads it)."""
    import pyseccomp as seccomp

    refused = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in REFUSED_SYSCALLS:
        with contextlib.suppress(RuntimeError, ValueError):  # not a system call on this machine
            rules.add_rule(refused, name)
    # clone() makes threads (allowed) or processes (refused); clone3() hides its flags in
    # memory seccomp cannot read, and C libraries fall back to clone() when it is missing.
    rules.add_rule(refused, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as program:
        rules.export_bpf(program)
        program.seek(0)
        return program.read()


@dataclass
class Launch:
    """A worker's command line, environment, and the files it inherits."""

    argv: list[str]
    env: dict[str, str]
    files: list = field(default_factory=list)  # kept open until the process has started
    info: int | None = None  # our end of bubblewrap's --info-fd pipe

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return tuple(f if isinstance(f, int) else f.fileno() for f in self.files)

    def started(self) -> None:
        """The child has its copies: close ours (but the info pipe's reading end)."""
        for item in self.files:
            if isinstance(item, int):
                os.close(item)
            else:
                item.close()
        self.files = []


class Sandbox:
    """Starts engine workers under the configured isolation."""

    def __init__(self, settings: dict):
        sandbox = settings["sandbox"]
        instance = Path(settings["app"]["instance_dir"])
        self.root = Path(sandbox["work_dir"])
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.limits = Limits.from_settings(settings)
        self.user = sandbox["user"]
        self.allow_torch_unisolated = sandbox["allow_torch_without_isolation"]
        self.code_dirs = _code_dirs(
            [instance.resolve(), Path(settings["storage"]["dir"]).resolve(), self.root]
        )
        self._seccomp: bytes | None = None
        self.isolation = _detect(self, sandbox["isolation"])
        _remove_orphans(self.root)
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
            "uid 65534, one process, a seccomp filter, read-only libraries and kernel "
            "settings, resource limits",
            USER: f"dedicated user {self.user!r} without network, with resource limits "
            "(bubblewrap cannot run here)",
            NONE: "resource limits only: no isolation tool works here",
        }[self.isolation]

    def start(self, kind: str, threads: int, cpu_seconds: int | None = None) -> Worker:
        """A worker waiting for its job (`kind` "session" warms the libraries up first)."""
        job_dir = self.root / f"job-{os.getpid()}-{uuid.uuid4().hex}"
        return Worker(self, job_dir, kind, threads, cpu_seconds or self.limits.cpu_seconds)

    # The command line ------------------------------------------------------------------

    def prepare(self, job_dir: Path, kind: str, threads: int, cpu_seconds: int, isolation: str) -> Launch:
        """The worker's launch. prlimit starts with a bare environment (never the server's
        own), and the worker gets only what its job needs."""
        limits = self.limits
        # Sessions are batch work: below the server's priority, pages, API calls and live
        # events stay quick while they compute; they get the whole CPU when it is idle.
        prlimit = ["nice", "-n", str(limits.nice)] if limits.nice else []
        prlimit += [
            "prlimit",
            f"--as={limits.memory_bytes}",
            f"--cpu={cpu_seconds}",
            f"--fsize={limits.file_bytes}",
            f"--nofile={limits.open_files}",
            "--core=0",
        ]
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads),
            "OPTIDECK_WORKER_KIND": kind,
        }
        python = [sys.executable, "-I", "-c", WORKER_BOOT, str(PACKAGE_ROOT)]
        if isolation != BUBBLEWRAP:
            out = job_dir / "out"
            env.update({"HOME": str(out), "TMPDIR": str(out / "tmp")})
            if isolation == USER:
                # As root: a network namespace of its own keeps the worker off the database
                # and Redis ports of this host; then the dedicated user, without privileges.
                # Processes are counted per uid: meaningful for a uid of its own.
                prlimit.append(f"--nproc={limits.processes}")
                user = pwd.getpwnam(self.user)
                drop = [
                    "setpriv",
                    f"--reuid={user.pw_uid}",
                    f"--regid={user.pw_gid}",
                    "--clear-groups",
                    "--inh-caps=-all",
                    "--bounding-set=-all",
                    "--no-new-privs",
                ]
                return Launch(["unshare", "--net", "--ipc", "--", *drop, "--", *prlimit, "--", *python], env)
            return Launch([*prlimit, "--", *python], env)
        if self._seccomp is None:
            self._seccomp = _seccomp_program()
        program = tempfile.TemporaryFile()  # noqa: SIM115 - the Launch closes it once started
        program.write(self._seccomp)
        program.seek(0)
        info_read, info_write = os.pipe()
        env.update({"HOME": str(INSIDE_JOB / "out"), "TMPDIR": str(INSIDE_JOB / "out" / "tmp")})
        # --as-pid-1: the worker is its namespace's PID 1 and only process, so killing it
        # ends the sandbox, and no bubblewrap process (whose environment is the one it was
        # started with) is there to be read through /proc.
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
            "--seccomp",
            str(program.fileno()),
            "--info-fd",
            str(info_write),
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
        # The linker's cache; the CPU's features, which the maths kernels are chosen by.
        for mount in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/sys/devices/system/cpu"):
            bwrap += ["--ro-bind-try", mount, mount]
        bwrap += [
            "--ro-bind",
            str(self._identity("passwd")),
            "/etc/passwd",
            "--ro-bind",
            str(self._identity("group")),
            "/etc/group",
            "--proc",
            "/proc",
        ]
        for mount in PROC_READ_ONLY:
            bwrap += ["--ro-bind-try", mount, mount]
        for mount in PROC_HIDDEN:
            if Path(mount).exists():
                bwrap += ["--ro-bind", "/dev/null", mount]
        bwrap += [
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
        # The folder above the package is on the worker's sys.path: a .py a model dropped
        # there would be imported later in this worker. Under the host's /tmp it would be a
        # folder of the sandbox's writable /tmp, so it gets a tmpfs of its own, made
        # read-only once the package's folders are mounted in it.
        package_root_in_tmp = PACKAGE_ROOT.is_relative_to("/tmp") and PACKAGE_ROOT not in self.code_dirs  # noqa: S108
        if package_root_in_tmp:
            bwrap += ["--tmpfs", str(PACKAGE_ROOT)]
        # After the sandbox's own /tmp: a checkout or virtualenv under the host's /tmp
        # must show through it.
        for path in self.code_dirs:
            if not str(path).startswith("/usr/"):
                bwrap += ["--ro-bind", str(path), str(path)]
        if package_root_in_tmp:
            bwrap += ["--remount-ro", str(PACKAGE_ROOT)]
        # Last, once every mount point is made: the root is a tmpfs holding the folders
        # above the package, the same danger anywhere else. Only /tmp and the job's out
        # folder stay writable.
        bwrap += ["--remount-ro", "/"]
        argv = [*prlimit, "--", *bwrap, "--", *python]
        return Launch(argv, {"PATH": env["PATH"], "LANG": "C.UTF-8"}, [program, info_write], info_read)

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


def remove_tree(path: Path) -> None:
    """Remove a folder a worker wrote, however deep it nested it (shutil.rmtree recurses
    once per level and gives up a thousand levels down)."""
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)  # noqa: S603, S607


def _remove_orphans(root: Path) -> None:
    """Job folders of processes that are gone (a server killed mid-session)."""
    for job in root.glob("job-*"):
        pid = job.name.split("-")[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            remove_tree(job)
        except PermissionError:
            pass  # a process of another user holds the pid: not ours to judge


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    """A worker's stdin, stdout or stderr: Popen opens all three (PIPE), though its types
    allow None. A None fails here as any use of it would, with an AttributeError."""
    if stream is None:
        raise AttributeError("the worker's pipe was never opened")
    return stream


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
        if self.isolation == USER:
            entry = pwd.getpwnam(sandbox.user)
            # The worker's user may pass through to its folders, not list the job folder.
            os.chmod(job_dir, 0o711)  # noqa: S103
            for path in (self.out_dir, self.out_dir / "tmp"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        launch = sandbox.prepare(job_dir, kind, threads, cpu_seconds, self.isolation)
        self._buffer = b""
        self._stderr: deque[str] = deque()
        self._stderr_size = 0
        self.child_pid: int | None = None  # the sandbox's PID 1, as the host sees it
        try:
            self.process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                launch.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=launch.env,
                cwd=str(self.out_dir),
                pass_fds=launch.pass_fds,
                # A process group of its own: kill() reaches whatever bubblewrap forked,
                # even a child still setting the sandbox up (it would hold our pipes open).
                start_new_session=True,
            )
        except BaseException:
            launch.started()
            if launch.info is not None:
                os.close(launch.info)
            remove_tree(job_dir)
            raise
        launch.started()
        if launch.info is not None:
            self._read_info(launch.info)
        os.set_blocking(_pipe(self.process.stdout).fileno(), False)
        self._stderr_reader = threading.Thread(
            target=self._drain_stderr, daemon=True, name=f"sandbox-stderr-{self.process.pid}"
        )
        self._stderr_reader.start()

    def _read_info(self, fd: int) -> None:
        """bubblewrap's --info-fd names the sandbox's PID 1: what kill() must reach. It is
        written once the sandbox is set up (or the pipe closes if that fails)."""
        import select

        try:
            data = b""
            deadline = time.monotonic() + PROBE_TIMEOUT
            while b"}" not in data and time.monotonic() < deadline:
                if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    break
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        with contextlib.suppress(ValueError):
            pid = json.loads(data or b"{}").get("child-pid")
            self.child_pid = pid if isinstance(pid, int) and pid > 1 else None

    @property
    def pid(self) -> int:
        return self.process.pid

    def fileno(self) -> int:
        return _pipe(self.process.stdout).fileno()

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
        stdin = _pipe(self.process.stdin)
        stdin.write(data.encode())
        stdin.flush()

    def cancel(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.send("cancel")

    def receive(self) -> list[list]:
        """The complete messages available now (never blocks). A worker that breaks the
        protocol (too long, not JSON, nested too deep, not a message) is stopped."""
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
            if len(self._buffer) > MAX_LINE and b"\n" not in self._buffer[-len(chunk) - 1 :]:
                self.kill()
                raise SandboxError("the worker sent a message beyond the protocol's size limit")
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                message = parse_json(line)
            except Exception as exc:  # any decoding failure is the worker's, not ours
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
            for raw in _pipe(self.process.stderr):
                line = raw.decode("utf-8", "replace").rstrip()[:2000]
                self._stderr.append(line)
                self._stderr_size += len(line)
                while self._stderr_size > STDERR_KEPT and self._stderr:
                    self._stderr_size -= len(self._stderr.popleft())
                log.debug("worker %s: %s", self.process.pid, line)
        finally:
            _pipe(self.process.stderr).close()

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
        if signal_number == signal.SIGXCPU:
            return "resource_limit", (
                f"The model used more CPU time than the sandbox allows "
                f"({limits.cpu_seconds} s, sandbox.cpu_seconds)."
            )
        if signal_number == signal.SIGXFSZ:
            return "resource_limit", (
                f"The worker tried to write a file larger than the "
                f"sandbox allows ({limits.file_bytes >> 20} MB, "
                "sandbox.output_mb)."
            )
        return "worker_lost", f"The worker process died (exit code {code})."

    def output_bytes(self) -> int:
        """Bytes the worker holds on disk: its scratch folder (no links followed), and files
        it deleted but keeps open, which a folder walk would miss."""
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
        if self.child_pid is not None:
            with contextlib.suppress(OSError):
                for entry in os.scandir(f"/proc/{self.child_pid}/fd"):
                    with contextlib.suppress(OSError):
                        info = os.stat(entry.path)
                        if stat.S_ISREG(info.st_mode) and info.st_nlink == 0:
                            total += info.st_size
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
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > max_bytes:
            os.close(fd)
            raise SandboxError(f"the worker's {name!r} is not a regular file within {max_bytes} bytes")
        target = target_dir / f"taken-{uuid.uuid4().hex}-{name}"
        with os.fdopen(fd, "rb") as source, target.open("xb") as copy:
            # Copied to the size checked above: the file cannot grow under the copy.
            remaining = info.st_size
            while remaining > 0 and (chunk := source.read(min(1 << 20, remaining))):
                copy.write(chunk)
                remaining -= len(chunk)
        return target

    def kill(self) -> None:
        if self.child_pid is not None:
            # The namespace's PID 1: with it, the kernel ends everything in the sandbox,
            # whatever the worker did to its parent-death signal.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.child_pid, signal.SIGKILL)
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
                _pipe(stream).close()
        remove_tree(self.job_dir)


def run_job(
    sandbox: Sandbox, job: dict, inputs: dict[str, Path], timeout: float, threads: int, kind: str = "analyse"
) -> list:
    """Run one short job (an analysis, an artifact's check) to its final message:
    ["result", ...] or ["failed", error_type, message]. Raises SandboxError when the
    worker breaks the protocol."""
    worker = sandbox.start(kind, threads, cpu_seconds=max(1, int(timeout * threads) + 5))
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
                log.info("%s worker ended: %s\n%s", kind, text, worker.stderr_tail())
                if error_type == "worker_lost":
                    error_type, text = "crashed", "Opening the file crashed its worker; the file is damaged."
                return ["failed", error_type, text]
            if time.monotonic() > deadline:
                return ["failed", "timeout", f"Opening the file took longer than {timeout:g} s."]
            if worker.output_bytes() > sandbox.limits.file_bytes:
                limit = sandbox.limits.file_bytes >> 20
                return [
                    "failed",
                    "resource_limit",
                    f"The worker wrote more than {limit} MB (sandbox.output_mb).",
                ]
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
    if isolation == BUBBLEWRAP:
        try:
            _seccomp_program()
        except (ImportError, OSError, RuntimeError) as exc:
            return f"no seccomp filter can be made (libseccomp: {exc})"
    worker = None
    try:
        worker = Worker(
            sandbox, sandbox.root / f"probe-{uuid.uuid4().hex}", "probe", 1, PROBE_TIMEOUT, isolation
        )
        worker.send({"kind": "probe"})
        _pipe(worker.process.stdin).close()
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
