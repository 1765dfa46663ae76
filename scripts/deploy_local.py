"""Deploy the app on loopback: a SuperLink, N SuperNodes, one run, then stop them all.

    python scripts/deploy_local.py --nodes 4 --byzantine 1 --rounds 3
    python scripts/deploy_local.py --tls              # CA and certificates made here
    python scripts/deploy_local.py --auth             # TLS + registered SuperNodes only

What it does, as on real hosts (docs/deployment.md):

1. ``flower-superlink`` on 127.0.0.1 (its own port), ``--insecure`` or with TLS
   certificates, optionally ``--enable-supernode-auth``;
2. ``flower-supernode`` i = 0..N-1, each on its own port, with
   ``--node-config "partition-id=i num-partitions=N"`` (``byzantine=true`` for the first
   ``--byzantine`` of them); with ``--auth`` each has an EC key pair whose public key is
   registered first with ``flwr supernode register``;
3. ``flwr run . <connection> --stream``, the connection defined in a private
   ``FLWR_HOME`` (the user's ``~/.flwr`` is not touched);
4. stops every process it started, by PID, also on failure, Ctrl-C or SIGTERM.

The run needs only as many nodes as its rule needs (``min-available-nodes = "auto"``)
and a round waits ``--round-timeout`` seconds for replies, so a SuperNode that dies
mid-run costs one timeout and the run goes on with the others. Round 1 starts once all
``--nodes`` SuperNodes are connected.

Results go to ``--output-dir`` (default ``outputs/``); logs of every process to
``<work-dir>/logs``. The work directory (mode 0700; private keys 0600, written with
``O_EXCL | O_NOFOLLOW``) is a temporary one, removed at the end, unless ``--work-dir``
names a new one to keep (an existing directory is refused, never changed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import stop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUPEREXEC_POLL = 0.1
"""Seconds between a SuperExec's looks for a new task (Flower's default: 1 s)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a server certificate for 127.0.0.1/localhost signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = dt.datetime.now(dt.UTC)
    ca_key, server_key = key(), key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("flwr-flag test CA"))
        .issuer_name(name("flwr-flag test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": directory / "ca.crt",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    write_private(
        paths["key"],
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )
    return paths


def write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (0600), from its creation on, into
    a new file: never through a planted link, never over an existing file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(path, flags, 0o600), "wb") as handle:
        handle.write(data)


def make_node_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """An EC (SECP384R1) key pair in OpenSSH format, as ``ssh-keygen -t ecdsa -b 384``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP384R1())
    private_path, public_path = directory / name, directory / f"{name}.pub"
    write_private(
        private_path,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private_path, public_path


class Deployment:
    """Processes of one loopback deployment; ``close()`` stops them all by PID."""

    def __init__(self, work: Path, tls: bool, auth: bool) -> None:
        """``work`` must be a new directory: it is made here, mode 0700 from the start
        (keys and the connection config live in it), and no one else's is touched."""
        self.work, self.tls, self.auth = work, tls or auth, auth
        work.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir(mode=0o700)
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        self.port = free_port()
        self.certs = make_certificates(work) if self.tls else None
        home = work / "flwr-home"
        home.mkdir(exist_ok=True)
        security = f'root-certificates = "{self.certs["ca"]}"' if self.tls else "insecure = true"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
            f'address = "127.0.0.1:{self.port}"\n{security}\n'
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            # The SuperExecs look for a new task every 0.1 s instead of every 1 s.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(SUPEREXEC_POLL),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        }

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        process = subprocess.Popen(
            command,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def security(self, role: str) -> list[str]:
        if not self.tls:
            return ["--insecure"]
        if role == "superlink":
            return [
                "--ssl-ca-certfile",
                str(self.certs["ca"]),
                "--ssl-certfile",
                str(self.certs["cert"]),
                "--ssl-keyfile",
                str(self.certs["key"]),
            ]
        return ["--root-certificates", str(self.certs["ca"])]

    def start_superlink(self) -> None:
        command = [
            str(BIN / "flower-superlink"),
            *self.security("superlink"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.auth:
            command.append("--enable-supernode-auth")
        wait_for_port(self.port, self.start("superlink", command))

    def flwr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_supernode(self, index: int, node_config: str, register: bool = True) -> None:
        command = [
            str(BIN / "flower-supernode"),
            *self.security("supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--port",
            str(free_port()),
            "--node-config",
            node_config,
        ]
        if self.auth:
            private, public = make_node_keys(self.work, f"supernode-{index}")
            if register:
                done = self.flwr("supernode", "register", str(public), "deploy")
                if done.returncode:
                    raise RuntimeError(
                        f"registering supernode {index} failed: {done.stdout}{done.stderr}"
                    )
            command += ["--auth-supernode-private-key", str(private)]
        self.start(f"supernode-{index}", command)

    def wait_for_nodes(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` SuperNodes are active on the SuperLink (its log says so), so
        that round 1 samples them all although the run needs only what its rule needs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = (self.logs / "superlink.log").read_text(errors="replace")
            if log.count("[Fleet.ActivateNode] Activated") >= count:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{count} SuperNodes did not connect within {timeout}s")

    def close(self) -> None:
        stop({p.pid for p in self.processes})


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--byzantine", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--auth", action="store_true", help="TLS + supernode auth")
    parser.add_argument(
        "--unregistered",
        type=int,
        default=0,
        help="also start this many SuperNodes whose keys are not registered",
    )
    parser.add_argument("--output-dir", type=Path, default=ROOT / "outputs")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="a new directory to keep (logs, keys)"
    )
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=60.0,
        help="seconds a round waits for replies before going on with those that came",
    )
    parser.add_argument("--run-config", default="", help="extra run-config overrides")
    return parser.parse_args(argv)


def run_config_of(args: argparse.Namespace) -> str:
    """The ``--run-config`` overrides of the run (``--run-config`` last: it wins)."""
    return (
        f"num-server-rounds={args.rounds} output-dir='{args.output_dir}' "
        f"byzantine-nodes=0 round-timeout={args.round_timeout} "
        f"num-byzantine={args.byzantine} {args.run_config}"
    )


def too_few_nodes(nodes: int, run_config: str) -> str | None:
    """Why ``nodes`` SuperNodes cannot run the strategy that the project's config with
    ``run_config`` describes, or None: the most of the minimum node counts it gives
    Flower, which its rule's need raises. Round 1 would otherwise wait for nodes that
    never come (the ServerApp cannot know that no more will connect; this script does)."""
    from flwr.common.config import get_fused_config_from_dir

    from flwr_flag.config import strategy_from_config
    from flwr_flag.runconfig import parse_overrides
    from flwr_flag.strategy.options import NODE_MINIMA

    strategy = strategy_from_config(get_fused_config_from_dir(ROOT, parse_overrides(run_config)))
    needed = max(getattr(strategy, key) for key in NODE_MINIMA if hasattr(strategy, key))
    if nodes >= needed:
        return None
    return (
        f"--nodes {nodes}: rule={strategy.rule!r} with num-byzantine="
        f"{strategy.core.num_byzantine} needs at least {needed} nodes; start more (--nodes) "
        "or assume fewer Byzantine ones (--byzantine)"
    )


def ignore_signals() -> None:
    """From now on SIGTERM and SIGINT are ignored: cleanup runs to its end whatever
    the user presses (a second Ctrl-C once left every process running and the keys on
    disk)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def stop_on_signals() -> None:
    """The first SIGTERM or SIGINT ends the script through its ``finally``, which stops
    every process it started (they run in sessions of their own, so no signal reaches
    them); the handler ignores further ones before it raises, so none can cut the
    cleanup short."""

    def leave(signum: int, frame: object) -> None:
        ignore_signals()
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, leave)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.work_dir is not None and args.work_dir.exists():
        print(f"--work-dir {args.work_dir} exists; name a new directory", file=sys.stderr)
        return 2
    run_config = run_config_of(args)
    try:  # a bad config value stops here too, named by the library's validation
        problem = too_few_nodes(args.nodes, run_config)
    except ValueError as error:
        problem = f"--run-config: {error}"
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    stop_on_signals()
    temporary = args.work_dir is None
    work: Path | None = args.work_dir
    deployment: Deployment | None = None
    try:
        if work is None:
            work = Path(tempfile.mkdtemp(prefix="flwr-flag-deploy-")) / "work"
        deployment = Deployment(work, args.tls, args.auth)
        deployment.start_superlink()
        for i in range(args.nodes):
            byzantine = "true" if i < args.byzantine else "false"
            deployment.start_supernode(
                i, f"partition-id={i} num-partitions={args.nodes} byzantine={byzantine}"
            )
        for j in range(args.unregistered):
            deployment.start_supernode(
                args.nodes + j, "partition-id=0 num-partitions=1", register=False
            )
        deployment.wait_for_nodes(args.nodes)
        print(
            f"SuperLink on 127.0.0.1:{deployment.port}, {args.nodes} SuperNodes; logs in "
            f"{deployment.logs}",
            flush=True,
        )
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(ROOT), "deploy", "--stream", "--run-config", run_config],
            env=deployment.env,
            cwd=ROOT,
            timeout=900,
        )
        return run.returncode
    finally:
        ignore_signals()
        if deployment is not None:
            deployment.close()
        if temporary and work is not None:  # keys and logs of a throw-away deployment
            shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
