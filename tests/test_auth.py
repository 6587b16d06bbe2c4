"""CURVE authentication and host checks on the ZMQ transport: key files, authorized and unknown
peers on real sockets, all on 127.0.0.1 (a host beyond loopback is refused before anything
binds, so no test ever binds one)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from robot_fixtures import export_policy, interrupt, observation
from zmq.auth.certs import load_certificate

from crl.runtime import cli
from crl.runtime.auth import (
    AUTHORIZED,
    MAX_CERTIFICATE_BYTES,
    ROLES,
    AuthError,
    load_keys,
    make_keys,
)
from crl.runtime.messages import Action, Observation
from crl.runtime.transport import (
    Endpoints,
    RobotLink,
    RuntimeLink,
    TransportError,
    action_reader,
    send_goal,
    status_reader,
)
from crl.testbed.closed_loop import free_base_port

QUIET_S = 1.0  # how long an unauthorized peer is watched for anything getting through
HANG_S = 30.0  # a hang guard for what must arrive, not a speed bound


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All three roles, trusting each other (as `crl-run keys` makes them)."""
    folder = tmp_path_factory.mktemp("auth") / "keys"
    make_keys(folder)
    return folder


@pytest.fixture(scope="module")
def stranger(keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys for every role that nobody authorized, holding the real parties' public keys (so
    a handshake reaches the ZAP check): a spoofed robot or operator on the same machine."""
    folder = tmp_path_factory.mktemp("auth") / "stranger"
    make_keys(folder)
    for role in ROLES:
        shutil.copy(keys / AUTHORIZED / f"{role}.key", folder / AUTHORIZED / f"{role}.key")
    return folder


def publish(link: RobotLink) -> None:
    obs = observation()
    session, seq, stamp = link.stamper.next()
    link.publish_observation(Observation(session, seq, stamp, obs.joint_names, obs.joint_pos,
                                         obs.joint_vel))


def test_keys_command_writes_private_loadable_certificates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys"
    cli.main(["keys", "--out", str(out)])
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for role in ROLES:
        secret = out / f"{role}.key_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        public, private = load_certificate(secret)
        assert private is not None and zmq.curve_public(private) == public
        assert load_certificate(out / AUTHORIZED / f"{role}.key") == (public, None)
        loaded = load_keys(out, role, ROLES)
        assert loaded.public == public and set(loaded.authorized) == set(ROLES)
    assert len(list(out.rglob("*"))) == 2 * len(ROLES) + 1  # no temporary file left behind
    before = (out / "robot.key_secret").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # never replaces a secret
        cli.main(["keys", "--out", str(out), "--roles", "robot"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "exists" in err and len(err.strip().splitlines()) == 1
    assert (out / "robot.key_secret").read_bytes() == before


def test_bad_key_folders_are_one_line_errors(tmp_path: Path, keys: Path) -> None:
    loose = tmp_path / "loose"
    shutil.copytree(keys, loose)
    (loose / "runtime.key_secret").chmod(0o644)
    with pytest.raises(AuthError, match="chmod 600"):
        load_keys(loose, "runtime")
    with pytest.raises(AuthError, match=r"operator\.key_secret"):
        load_keys(tmp_path, "operator")
    lone = tmp_path / "lone"
    make_keys(lone, ["operator"])
    with pytest.raises(AuthError, match=r"authorized/runtime\.key"):
        load_keys(lone, "operator", ("runtime",))
    (lone / "operator.key_secret").write_text("curve\n    public-key = \"short\"\n")
    (lone / "operator.key_secret").chmod(0o600)
    with pytest.raises(AuthError, match="40 characters"):
        load_keys(lone, "operator")
    # A peer's "certificate" that is a FIFO (zmq's open of it would wait for a writer) or huge.
    trusting = tmp_path / "trusting"
    shutil.copytree(keys, trusting)
    os.mkfifo(trusting / "authorized" / "peer.key")
    started = time.monotonic()
    with pytest.raises(AuthError, match=r"peer\.key: .*\(a FIFO, not a regular file\)"):
        load_keys(trusting, "runtime")
    assert time.monotonic() - started < 1.0
    (trusting / "authorized" / "peer.key").unlink()
    (trusting / "authorized" / "peer.key").write_bytes(b"#" * (MAX_CERTIFICATE_BYTES + 1))
    with pytest.raises(AuthError, match=r"peer\.key: .*over the .*-byte limit"):
        load_keys(trusting, "runtime")


@pytest.mark.parametrize("host", ["*", "::", "0.0.0.0"])
def test_every_interface_without_keys_is_refused_before_anything_binds(
        host: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    binds: list[str] = []
    monkeypatch.setattr(zmq.Socket, "bind", lambda self, url: binds.append(url))
    port = str(free_base_port())
    with pytest.raises(SystemExit) as refused:  # the host is checked before the policy loads
        cli.main(["serve", "--policy", "absent.onnx", "--host", host, "--port", port])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--host {host}" in err and "--keys" in err
    for make in (RobotLink, RuntimeLink):
        with pytest.raises(TransportError, match="needs CURVE keys"):
            make(Endpoints(host, int(port)))
    assert binds == []


def test_crl_sim_robot_refuses_every_interface_without_keys() -> None:
    pytest.importorskip("jax", reason="crl-sim robot needs the train extra")
    r = subprocess.run([sys.executable, "-m", "crl.sim.cli", "robot", "reacher", "--dr", "off",
                        "--host", "::", "--port", str(free_base_port())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "needs CURVE keys" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_loopback_stays_open_without_keys() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        ep = Endpoints(host, free_base_port())
        assert ep.is_loopback
        ep.check_binding(None)
    link = RobotLink(Endpoints("::1", free_base_port()))  # IPv6 loopback binds (no "port in use")
    link.close()
    with pytest.raises(TransportError, match="--host: empty"):
        Endpoints("")


def test_observations_and_actions_reach_authorized_peers_only(keys: Path,
                                                              stranger: Path) -> None:
    """A robot with an unknown key binds the observation port: the runtime never hears it (the
    handshake needs the robot's real key), nor a robot without keys; a client with an unknown
    key is refused the actions and counted; the real robot is heard and served."""
    ep = Endpoints("127.0.0.1", free_base_port())
    runtime = RuntimeLink(ep, load_keys(keys, "runtime"))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        spy = action_reader(ctx, ep, keys=load_keys(stranger, "robot"))
        for impostor_keys in (load_keys(stranger, "robot"), None):
            impostor = RobotLink(ep, impostor_keys)
            try:
                end = time.monotonic() + QUIET_S
                while time.monotonic() < end:
                    publish(impostor)
                    time.sleep(0.02)
                    assert runtime.poll_observation() is None
            finally:
                impostor.close()
        robot = RobotLink(ep, load_keys(keys, "robot"))
        try:
            deadline = time.monotonic() + HANG_S
            while runtime.poll_observation() is None:
                publish(robot)
                time.sleep(0.02)
                assert time.monotonic() < deadline, "the real robot was never heard"

            def act() -> None:
                runtime.publish_action(Action(*runtime.stamper.next(), ("shoulder", "elbow"),
                                              np.zeros(2), "position", True, -1, 0.0))

            while robot.poll_action(20) is None:
                act()
                assert time.monotonic() < deadline, "the real robot got no action"
            heard, end = 0, time.monotonic() + QUIET_S
            while time.monotonic() < end:  # the spy hears none of what the robot hears
                act()
                heard += robot.poll_action(20) is not None
                assert spy.poll() is None
            assert heard > 0 and spy.counters.received == 0
            assert runtime.counters["refused_peers"] >= 1
        finally:
            robot.close()
    finally:
        ctx.destroy(linger=0)
        runtime.close()


@pytest.mark.realtime
def test_serve_answers_authorized_goals_only(keys: Path, stranger: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`crl-run serve --keys` and `crl-run goal --keys`: the operator's goal is answered; one
    from an unknown key or without keys is never delivered, and the refusal is counted."""
    policy = export_policy(tmp_path / "reacher.onnx")
    port = free_base_port()
    ep = Endpoints("127.0.0.1", port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crl.runtime.cli", "serve", "--policy", str(policy), "--robot",
         "reacher", "--port", str(port), "--keys", str(keys), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    robot = RobotLink(ep, load_keys(keys, "robot"))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        statuses = status_reader(ctx, ep, load_keys(keys, "operator"))
        deadline = time.monotonic() + 60  # the runtime starts on the robot's first observation
        while statuses.poll(20) is None:
            publish(robot)
            assert time.monotonic() < deadline and proc.poll() is None, "no status"
        cli.main(["goal", "--port", str(port), "--keys", str(keys), "0.1", "0.05"])
        assert "accepted" in capsys.readouterr().out
        for intruder in (load_keys(stranger, "operator"), None):
            with pytest.raises(TransportError, match="no answer"):
                send_goal(ep, [0.0, 0.15], "world", timeout_s=QUIET_S, keys=intruder)
        while (status := statuses.poll(20)) is None or not status.stats["refused_peers"]:
            publish(robot)
            assert time.monotonic() < deadline, "the refusal was not counted"
        assert status.stats["goal_received"] == 1  # only the operator's goal got through
    finally:
        _, err = interrupt(proc, timeout=30)
        robot.close()
        ctx.destroy(linger=0)
    assert proc.returncode == 0, err


@pytest.mark.realtime
def test_closed_loop_runs_with_keys(keys: Path, tmp_path: Path) -> None:
    """`crl-run closed-loop --keys`: the sim robot, the runtime and the scorer authenticate each
    other over every stream (telemetry, status, goals, observations, actions)."""
    pytest.importorskip("jax", reason="the sim robot needs the train extra")
    policy = export_policy(tmp_path / "reacher.onnx")
    out = tmp_path / "closed_loop.json"
    r = subprocess.run(
        [sys.executable, "-m", "crl.runtime.cli", "closed-loop", "--policy", str(policy),
         "--task", "reacher", "--dr", "off", "--goals", "1", "--speed", "4", "--keys",
         str(keys), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert len(result["goals"]) == 1  # its goal was accepted, its telemetry scored
    assert result["exit_codes"] == {"crl-run serve": 0, "crl-sim robot": 0}
    assert result["runtime"]["refused_peers"] == 0 and result["runtime"]["goal_received"] >= 1
