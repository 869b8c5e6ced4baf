"""A real single-node Slurm cluster for the tests, started from Debian's packages under one folder and stopped by the
pids it started: munged, a MariaDB server, slurmdbd (accounting: submitit polls `sacct` to see a cancelled or
timed-out job end), slurmctld and slurmd. Nothing under /etc is read or edited: clients find the cluster through
SLURM_CONF (`Cluster.env`), and every daemon is given its own config, key, sockets, ports and state folders.

Needs root (slurmd starts jobs as their user; munged as root needs --force) and the packages `make test` installs:
slurmctld slurmd slurm-client slurmdbd munge mariadb-server. `missing()` says in one line why a cluster cannot start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct", "sinfo",
           "squeue", "scancel")
PARTITION = "debug"


def missing() -> str | None:
    """Why a cluster cannot start on this machine, or None."""
    if os.geteuid() != 0:
        return "not root: slurmd and munged of a test cluster run as root"
    absent = [name for name in DAEMONS if shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
              is None]
    if absent:
        return f"Slurm packages not installed ({', '.join(absent)} missing; `make test` installs them)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


class Cluster:
    """A started cluster (use as a context manager): `env` (SLURM_CONF set) runs its clients."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []
        self.bring_up_seconds: float | None = None

    # -- start and stop ------------------------------------------------------------------------------------------

    def __enter__(self) -> "Cluster":
        started = time.monotonic()
        try:
            self._munge()
            self._mariadb()
            self._write_configs()
            self._daemon([_which("slurmdbd"), "-D"], "slurmdbd")
            self._wait(lambda: self._port_open(self.dbd_port), "slurmdbd to listen")
            self._daemon([_which("slurmctld"), "-D", "-i"], "slurmctld")
            self._daemon([_which("slurmd"), "-D", "-N", self.node], "slurmd")
            self._wait(self._node_idle, "the node to be idle")
        except BaseException:
            self.stop()
            raise
        self.bring_up_seconds = time.monotonic() - started
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Cancel the cluster's jobs and let their steps end, then stop every daemon it started, by its pid (newest
        first); then end, by pid, any process of it left behind (a job step's slurmstepd, a job's process): those
        carry this cluster's SLURM_CONF in their environment."""
        if any(p.poll() is None for p in self.procs) and (self.root / "etc" / "slurm.conf").exists():
            subprocess.run([_which("scancel"), "--full", f"--partition={PARTITION}"], env=self.env,
                           capture_output=True, timeout=30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self._queue():
                time.sleep(0.2)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _queue(self) -> str:
        done = subprocess.run([_which("squeue"), "-h", "-o", "%i"], env=self.env, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    def leftovers(self) -> list[int]:
        """Processes whose environment holds this cluster's SLURM_CONF (its daemons are stopped by then)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if mark in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def _daemon(self, cmd: list[str], name: str) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append(proc)
        return proc

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{Path(proc.args[0]).name} exited {proc.returncode} while waiting for {what}: "
                                       f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for log in sorted((self.root / "log").glob("*")):
            out.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _node_idle(self) -> bool:
        done = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return done.returncode == 0 and done.stdout.strip() == "idle"

    # -- the daemons ---------------------------------------------------------------------------------------------

    def _munge(self) -> None:
        for folder in ("munge", "etc", "log", "state", "spool", "db"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        # --force: munged refuses to run as root otherwise; --foreground: this process holds its pid.
        self._daemon([_which("munged"), "--foreground", "--force", f"--key-file={key}",
                      f"--socket={self.munge_socket}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                      f"--seed-file={self.root / 'munge' / 'munge.seed'}",
                      f"--log-file={self.root / 'log' / 'munged.log'}"], "munged")
        self._wait(self.munge_socket.exists, "munged's socket")

    def _mariadb(self) -> None:
        data = self.root / "db" / "data"
        self.db_port = _free_port()
        subprocess.run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)
        self._daemon([_which("mariadbd"), "--no-defaults", f"--datadir={data}", "--user=root",
                      "--bind-address=127.0.0.1", f"--port={self.db_port}",
                      f"--socket={self.root / 'db' / 'mysqld.sock'}", f"--pid-file={self.root / 'db' / 'mysqld.pid'}",
                      "--skip-log-bin", "--innodb-buffer-pool-size=32M"], "mariadbd")
        self._wait(lambda: self._port_open(self.db_port), "MariaDB to listen")

    def _write_configs(self) -> None:
        self.dbd_port, ctld_port, slurmd_port = _free_port(), _free_port(), _free_port()
        r = self.root
        dbd = self.conf.with_name("slurmdbd.conf")
        dbd.write_text(f"""AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
PidFile={r}/state/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=root
StorageLoc=slurm_acct_db
""")
        os.chmod(dbd, 0o600)  # slurmdbd refuses a config others can read
        cpus = os.cpu_count() or 1
        self.conf.write_text(f"""ClusterName=inpaintsweep
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/state/slurmctld.pid
SlurmdPidFile={r}/state/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.dbd_port}
AccountingStoragePass={self.munge_socket}
ReturnToService=2
KillWait=2
MinJobAge=300
FirstJobId={int(time.time()) % 1_000_000 * 100 + 1}
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
