"""CURVE authentication for the ZMQ transport: key files, who trusts whom, and socket setup.

Each party has a role: the `robot`, the `runtime`, or an `operator` (goals, status, telemetry).
Its keys folder (`--keys DIR`) holds

    DIR/<role>.key_secret    its own certificate, public and secret key (mode 0600)
    DIR/authorized/*.key     the public certificates of the parties it trusts

A side binds what it publishes and is the CURVE server of those sockets: a ZAP handler refuses a
client whose public key is not in authorized/ (counted). A side connects to what it reads as a
CURVE client holding the server's public key, authorized/<server's role>.key: a server holding
any other key cannot complete the handshake, so a spoofed robot or runtime is never heard.
`crl-run keys --out DIR` makes all three roles, each trusting the others (one machine); for
several machines, give each party its own secret and the public certificates of its peers.
Certificates are ZeroMQ's own format (`zmq.auth.load_certificate` reads them).
"""

from __future__ import annotations

import datetime
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import zmq
from zmq.auth.certs import load_certificate
from zmq.auth.thread import ThreadAuthenticator

from crl.core.atomic import write_atomic
from crl.core.reading import RefusedFileError, read_limited

Role = Literal["runtime", "robot", "operator"]
ROLES: tuple[Role, ...] = ("runtime", "robot", "operator")
SECRET_SUFFIX, PUBLIC_SUFFIX = ".key_secret", ".key"
AUTHORIZED = "authorized"
PRIVATE_MODE, PUBLIC_MODE, FOLDER_MODE = 0o600, 0o644, 0o700
Z85_KEY_CHARS = 40  # a 32-byte CURVE key in Z85 text
MAX_CERTIFICATE_BYTES = 64 * 1024  # a certificate is a few hundred bytes of text


class AuthError(RuntimeError):
    """Keys that cannot be made or used (missing, malformed, too open); one line, what to do."""


def _certificate(public: bytes, secret: bytes | None) -> str:
    """ZeroMQ's certificate text (ZPL), as `zmq.auth.create_certificates` writes it."""
    kind = "**Secret** Certificate, keep it private" if secret else "Public Certificate"
    lines = [f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} by crl-run keys",
             f"#   ZeroMQ CURVE {kind}", "", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    def write(tmp: Path) -> None:
        tmp.chmod(mode)  # before the secret is in it
        tmp.write_text(text)

    write_atomic(path, write)


def make_keys(out: Path, roles: Sequence[Role] = ROLES) -> list[Path]:
    """A new certificate per role: the secret in `out`, the public half in `out/authorized/`
    (so the roles made together trust each other). Refuses to replace an existing secret."""
    _require_curve()
    secrets = [out / f"{role}{SECRET_SUFFIX}" for role in roles]
    for path in secrets:
        if path.exists():
            raise AuthError(f"{path} exists; remove it first to replace it (peers holding its "
                            "public key must then get the new one)")
    if not out.exists():
        out.mkdir(mode=FOLDER_MODE, parents=True)
    (out / AUTHORIZED).mkdir(exist_ok=True)
    written = []
    for role, secret_path in zip(roles, secrets, strict=True):
        public, secret = zmq.curve_keypair()
        public_path = out / AUTHORIZED / f"{role}{PUBLIC_SUFFIX}"
        _write(secret_path, _certificate(public, secret), PRIVATE_MODE)
        _write(public_path, _certificate(public, None), PUBLIC_MODE)
        written += [secret_path, public_path]
    return written


@dataclass(frozen=True)
class Keys:
    """One party's keys (Z85 text): its own pair and the public keys it trusts, by file stem."""

    folder: Path
    role: Role
    public: bytes
    secret: bytes
    authorized: dict[str, bytes]

    def server_key(self, role: Role) -> bytes:
        """The public key of the `role` this party connects to as a client."""
        key = self.authorized.get(role)
        if key is None:
            raise AuthError(f"--keys {self.folder}: no {AUTHORIZED}/{role}{PUBLIC_SUFFIX} (the "
                            f"{role}'s public certificate, needed to connect to it)")
        return key

    def client(self, server: Role) -> CurveClient:
        return CurveClient(self.public, self.secret, self.server_key(server))


def _read(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        # zmq reads the file by its name, whole: a FIFO would block that, a huge file fill the
        # memory; what is not a short regular file is refused first.
        read_limited(path, MAX_CERTIFICATE_BYTES)
        public, secret_key = load_certificate(path)
    except (OSError, ValueError, RefusedFileError) as e:
        raise AuthError(f"{path}: not a readable ZeroMQ certificate ({e})") from None
    for key in (public, secret_key) if secret else (public,):
        if key is None or len(key) != Z85_KEY_CHARS:
            raise AuthError(f"{path}: a key is not {Z85_KEY_CHARS} characters of Z85 text")
    return public, secret_key


def load_keys(folder: Path, role: Role, servers: Sequence[Role] = ()) -> Keys:
    """`role`'s keys from `folder` (layout in the module docstring), with the public keys of the
    `servers` it will connect to; AuthError names what is missing or wrong."""
    _require_curve()
    secret_path = folder / f"{role}{SECRET_SUFFIX}"
    if not secret_path.is_file():
        raise AuthError(f"--keys {folder}: no {secret_path.name} (the {role}'s secret "
                        f"certificate); make one with `crl-run keys --out {folder} --roles {role}`")
    mode = stat.S_IMODE(secret_path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthError(f"{secret_path}: a secret key readable by others (mode {mode:o}); "
                        f"`chmod 600 {secret_path}`")
    public, secret = _read(secret_path, secret=True)
    assert secret is not None  # _read checked it
    try:
        derived = zmq.curve_public(secret)
    except zmq.ZMQError as e:
        raise AuthError(f"{secret_path}: the secret key is not valid Z85 ({e})") from None
    if derived != public:
        raise AuthError(f"{secret_path}: the public key does not belong to the secret key")
    authorized_dir = folder / AUTHORIZED
    paths = sorted(authorized_dir.glob(f"*{PUBLIC_SUFFIX}")) if authorized_dir.is_dir() else []
    if not paths:
        raise AuthError(f"--keys {folder}: no {AUTHORIZED}/*{PUBLIC_SUFFIX} (public certificates "
                        "of the peers this party trusts)")
    keys = Keys(folder, role, public, secret, {p.stem: _read(p, secret=False)[0] for p in paths})
    for server in servers:
        keys.server_key(server)
    return keys


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise AuthError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE; install a "
                        "pyzmq wheel, which bundles one with it")


@dataclass(frozen=True)
class CurveClient:
    """The keys a connecting socket presents, and the server key it insists on."""

    public: bytes
    secret: bytes
    server: bytes

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        """Before connect: a server holding any other key fails the handshake."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server


class CurveServer:
    """A context's ZAP handler (one per context, started before anything binds) and the keys
    its bound sockets serve with: a client whose key is not authorized is refused and counted."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], keys: Keys):
        self.keys = keys
        self.refused = 0  # handshakes refused (a refused client retries, each try counts)
        self._allowed = frozenset(keys.authorized.values())
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve_callback(credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question for each connecting client (its Z85 public key), on the auth thread."""
        if key in self._allowed:
            return True
        self.refused += 1
        return False

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        """Before bind: clients must hold an authorized key and this server's public key."""
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret
        sock.curve_server = True

    def close(self) -> None:
        """Stops the handler thread; before the context is destroyed."""
        self._auth.stop()
