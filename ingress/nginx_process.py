"""The real nginx: `nginx -t` on a rendered config, and a running nginx.

nginx always runs with its own prefix directory (`-p`): the config, the pid
file, temp directories and certificates live there, so several can run side
by side without root paths. It runs in the foreground (`daemon off`) as a
child of this process; `reload()` sends SIGHUP and waits until every old
worker has gone, so a caller knows when the new config answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from netem.errors import KubenetemError

from .render import DEFAULT_CERT, Rendered

CONF = "nginx.conf"
_default_cert: dict[str, tuple[str, str]] = {}


class NginxError(KubenetemError):
    """nginx refused a config or could not be run."""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        raise NginxError("nginx is not installed (Debian: apt-get install nginx-light)")
    return found


def default_certificate() -> tuple[str, str]:
    """A self-signed certificate like the one ingress-nginx generates at start
    (O=Acme Co, CN=Kubernetes Ingress Controller Fake Certificate), made once
    per process with openssl."""
    if "pair" not in _default_cert:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise NginxError("openssl is needed to generate the default certificate")
        with tempfile.TemporaryDirectory(prefix="kn-cert-") as tmp:
            key, crt = os.path.join(tmp, "key.pem"), os.path.join(tmp, "crt.pem")
            subject = "/O=Acme Co/CN=Kubernetes Ingress Controller Fake Certificate"
            args = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
            args += ["-keyout", key, "-out", crt, "-days", "3650", "-subj", subject]
            done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise NginxError("openssl could not make the default certificate: " + done.stderr.strip()[:200])
            _default_cert["pair"] = (Path(crt).read_text(), Path(key).read_text())
    return _default_cert["pair"]


def write_tree(directory: Path, rendered: Rendered) -> Path:
    """nginx.conf and its certificate files under `directory` (made readable
    for nginx's unprivileged workers, keys for their owner only)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for rel, content in rendered.files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        _atomic_write(path, content, 0o600)
    conf = directory / CONF
    _atomic_write(conf, rendered.text, 0o644)
    return conf


def _atomic_write(path: Path, text: str, mode: int) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kn-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check(rendered: Rendered, default_cert: tuple[str, str] | None = None) -> str:
    """`nginx -t` on a temporary copy; returns nginx's report or raises NginxError."""
    with tempfile.TemporaryDirectory(prefix="kn-nginx-t-") as tmp:
        files = dict(rendered.files)
        if f"ssl/{DEFAULT_CERT}.pem" not in files:
            crt, key = default_cert or default_certificate()
            files[f"ssl/{DEFAULT_CERT}.pem"] = crt + key
        conf = write_tree(Path(tmp), Rendered(rendered.text, files))
        return check_file(conf, Path(tmp))


def check_file(conf: Path, prefix: Path) -> str:
    args = [nginx_binary(), "-t", "-q", "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise NginxError("nginx -t failed: " + (" | ".join(lines[-3:]) or f"exit {done.returncode}"))
    return done.stderr


class NginxProcess:
    """One nginx master (and its workers) serving `directory/nginx.conf`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "nginx.log"

    @property
    def conf(self) -> Path:
        return self.directory / CONF

    def start(self, timeout: float = 10.0) -> None:
        args = [nginx_binary(), "-p", f"{self.directory}/", "-c", str(self.conf), "-e", str(self.log)]
        args += ["-g", "daemon off;"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._workers():
            if self.proc.poll() is not None:
                raise NginxError(f"nginx exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise NginxError("nginx did not start its workers in time: " + self.tail())
            time.sleep(0.01)

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP; returns once no worker of the old generation is left."""
        if self.proc is None or self.proc.poll() is not None:
            raise NginxError("nginx is not running: " + self.tail())
        old = self._workers()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            now = self._workers()
            if now and not (now & old):
                return
            if self.proc.poll() is not None:
                raise NginxError("nginx exited during reload: " + self.tail())
            if time.monotonic() > deadline:
                raise NginxError("nginx reload did not finish in time: " + self.tail())
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self.proc = None

    def _workers(self) -> set[int]:
        if self.proc is None:
            return set()
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return set()
        return {int(p) for p in text.split()}

    def tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
