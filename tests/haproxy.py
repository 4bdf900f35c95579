"""A real HAProxy for the tests: Debian's `haproxy` in the foreground (`-db`) on the
sample packaging/haproxy.cfg — its defaults, frontend and backend as written (balance,
hash, health check, timeouts), with a free port for the frontend and the given processes
as its servers (`.ci/run` installs the package where it is missing)."""

from __future__ import annotations

import contextlib
import csv
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from pg import free_port

import conftest

SAMPLE = Path(__file__).resolve().parents[1] / "packaging" / "haproxy.cfg"
BIN = shutil.which("haproxy") or next(
    (path for path in ("/usr/sbin/haproxy",) if Path(path).exists()), None
)
#: the sample's backend, whose servers are the processes
BACKEND = "ocpp_processes"
#: what the processes behind it need in their config: the sample sends them a PROXY
#: header (send-proxy-v2) from its address on loopback
PROXY_FROM = '\n[limits]\nproxy_from = ["127.0.0.1"]\n'


def sections(text: str) -> list[list[str]]:
    """The config's sections (a header line and its indented lines), comments dropped."""
    found: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            found[-1].append(line)
        else:
            found.append([line])
    return found


def render(sample: str, port: int, processes: list[tuple[int, int]], stats: Path) -> str:
    """The sample with a `global` of the test's own (no chroot, no user, no daemon: a
    child of the test; a stats socket in its folder), the frontend on 127.0.0.1:`port`
    and, in place of the sample's servers, one server per (OCPP port, web port) written
    like the sample's first one (its check options kept)."""
    out = ["global", "    maxconn 4000", f"    stats socket {stats} mode 600 level admin"]
    for section in sections(sample):
        if section[0].startswith("global"):
            continue
        servers = [line for line in section if line.split()[0] == "server"]
        for line in section:
            words = line.split()
            if words[0] == "bind":
                out.append(f"    bind 127.0.0.1:{port}")
            elif words[0] != "server":
                out.append(line)
            elif line is servers[0]:
                out += [_server(line, n, ports) for n, ports in enumerate(processes, 1)]
    return "\n".join(out) + "\n"


def _server(template: str, number: int, ports: tuple[int, int]) -> str:
    """`server p1 127.0.0.1:9001 check port 9081`, for process `number` on `ports`."""
    _, _, _, options = template.split(maxsplit=3)
    options = re.sub(r"\bport \d+", f"port {ports[1]}", options)
    return f"    server p{number} 127.0.0.1:{ports[0]} {options}"


class HAProxy:
    """One HAProxy: `start`, `url`, `servers()` (each server's state as it sees it),
    `wait_for(server, state)`, `remove`."""

    def __init__(self, processes: list[tuple[int, int]]) -> None:
        assert BIN is not None
        self.folder = Path(tempfile.mkdtemp(prefix="haproxy-"))
        self.port = free_port()
        self.stats = self.folder / "admin.sock"
        self.config = self.folder / "haproxy.cfg"
        self.config.write_text(render(SAMPLE.read_text(), self.port, processes, self.stats))
        self.log = self.folder / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert BIN is not None
        checked = subprocess.run(
            [BIN, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30
        )
        config = self.config.read_text()
        assert checked.returncode == 0, f"{checked.stdout}{checked.stderr}\n{config}"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [BIN, "-f", str(self.config), "-db"], stdout=log, stderr=subprocess.STDOUT
            )
        conftest.wait_for(self._listening, 10, "HAProxy listening")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited {self.proc.returncode}:\n{self.log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return self.stats.exists()
        return False

    def servers(self) -> dict[str, str]:
        """Each server of the backend and its state (`UP`, `DOWN`, `UP 1/2`, …), from
        the stats socket's `show stat`."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.settimeout(5)
            admin.connect(str(self.stats))
            admin.sendall(b"show stat\n")
            answer = b""
            while chunk := admin.recv(65536):
                answer += chunk
        rows = csv.DictReader(answer.decode().lstrip("# ").splitlines())
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_for(self, server: str, state: str, timeout: float = 20) -> None:
        conftest.wait_for(
            lambda: self.servers().get(server) == state, timeout, f"HAProxy: {server} {state}"
        )

    def remove(self) -> None:
        if self.proc is not None:
            conftest.end(self.proc)
        shutil.rmtree(self.folder, ignore_errors=True)
