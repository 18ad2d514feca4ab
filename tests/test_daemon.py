"""``twistd pushd``: options, config, service assembly, a real process, a real wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock

from pushd.config import DEFAULT_LISTEN, ConfigError, load
from pushd.tap import GC_THRESHOLDS, Options, makeService, tune_gc
from tests.process import Child, bounded

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def options(*argv: str) -> Options:
    o = Options()
    o.parseOptions(list(argv))
    return o


def test_defaults() -> None:
    s = options().settings
    assert s.listen == [DEFAULT_LISTEN]
    assert (s.history.size, s.history.ttl, s.limits.message_size) == (1000, 3600.0, 65536)
    assert s.sources == [{"type": "ticker"}]
    assert s.allowed_origins == []


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(
        'listen = ["tcp:1:interface=127.0.0.1"]\n'
        "[history]\nsize = 10\nttl = 5\n"
        "[limits]\nmessage_size = 100\n"
    )
    s = options("--config", str(f)).settings
    assert (s.listen, s.history.size, s.history.ttl, s.limits.message_size) == (
        ["tcp:1:interface=127.0.0.1"],
        10,
        5.0,
        100,
    )
    s = options(
        "--config",
        str(f),
        "--listen",
        "tcp:2",
        "--listen",
        "tcp:3",
        "--history-size",
        "20",
        "--max-message-size",
        "7",
    ).settings
    assert (s.listen, s.history.size, s.history.ttl, s.limits.message_size) == (
        ["tcp:2", "tcp:3"],
        20,
        5.0,
        7,
    )


def test_the_example_config_is_valid_and_documents_every_setting() -> None:
    from pushd.config import SECTIONS

    s = load(str(ROOT / "etc" / "pushd.toml"))
    assert s.listen == [DEFAULT_LISTEN]
    text = (ROOT / "etc" / "pushd.toml").read_text()
    from dataclasses import fields

    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for field in fields(cls):
            assert f"\n{field.name} = " in text, f"[{section}] {field.name} is not documented"
    # [auth]: `public` and the [[auth.key]] tables have no value to show, so
    # they are documented commented out
    from pushd.config import Auth, AuthKey

    assert "\n[auth]\n" in text
    for field in fields(Auth):
        if field.name == "public":
            assert "\n# public = " in text
        elif field.name == "key":
            assert "\n# [[auth.key]]\n" in text
        else:
            assert f"\n{field.name} = " in text, f"[auth] {field.name} is not documented"
    for field in fields(AuthKey):
        assert f"\n# {field.name} = " in text, f"[[auth.key]] {field.name} is not documented"


BAD_FILES = [
    ("listen = [", "is not valid TOML"),
    ("nonsense = 1", "unknown setting 'nonsense'"),
    ("[history]\nsise = 5", "unknown setting [history] sise"),
    ('[history]\nsize = "big"', "[history] size must be a int"),
    ("[history]\nsize = 0", "[history] size must be at least 1"),
    ("[history]\nttl = -1", "[history] ttl must not be negative"),
    ("listen = []", "listen needs at least one endpoint"),
    ('listen = ["nope:1"]', "listen endpoint 'nope:1' is not usable"),
    ("[websocket]\npublish = 1", "[websocket] publish must be a bool"),
    ("[[source]]\nchannel = 'x'", "[[source]] #1 needs a type"),
    ("workers = 0", "workers must be at least 1"),
    ("workers = 2", 'workers = 2 needs the Redis broker (broker = "redis://...")'),
    (
        'broker = "redis://127.0.0.1:6379/0"\nworkers = 2\nlisten = ["tor:80"]',
        "workers > 1 shares tcp:, ssl:, unix: and systemd: listeners only, not 'tor:80'",
    ),
]


@pytest.mark.parametrize(("text", "problem"), BAD_FILES)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(SystemExit) as e:
        options("--config", str(f))
    assert problem in str(e.value.code)
    assert str(e.value.code).startswith("pushd: ")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"cannot read /nonexistent\.toml"):
        load("/nonexistent.toml")


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "/nonexistent.toml"],
        ["--history-size", "-3"],
        ["--history-ttl", "soon"],
        ["--listen", "bogus:1"],
    ],
)
def test_twistd_reports_bad_settings_in_one_line(argv: list[str]) -> None:
    """No traceback, a non-zero exit, and a last line that names the problem."""
    result = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "pushd", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "Traceback" not in out
    last = out.strip().splitlines()[-1]
    assert "pushd: " in last or "twistd pushd: " in last, out
    assert any(word in last for word in ("nonexistent", "history-size", "history-ttl", "bogus"))


def test_nothing_listens_or_runs_before_start() -> None:
    clock = MemoryReactorClock()
    service = makeService(options("--listen", "tcp:8123:interface=127.0.0.1"), reactor=clock)
    names = [type(s).__name__ for s in service]
    # The broker starts first and stops last; listeners start last and stop first.
    assert names == ["MemoryBroker", "Ticker", "StatusSource", "Listener"]
    assert clock.tcpServers == [] and clock.getDelayedCalls() == []
    service.startService()
    assert [(port, iface) for port, _, _, iface in clock.tcpServers] == [(8123, "127.0.0.1")]
    clock.advance(1)
    assert service.broker.read("ticker", None, 10).result.messages  # type: ignore[attr-defined]
    service.stopService()


def test_twistd_pushd_tunes_the_garbage_collector_once_running() -> None:
    clock = MemoryReactorClock()
    makeService(options("--listen", "tcp:8123:interface=127.0.0.1"), reactor=clock)
    assert (tune_gc, (), {}) in clock.whenRunningHooks
    # What it does, in a process of its own (this one's collector is left alone).
    probe = (
        "import gc; from pushd.tap import tune_gc; before = gc.get_freeze_count(); tune_gc(); "
        "print(before, gc.get_freeze_count(), *gc.get_threshold())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    before, frozen, *thresholds = map(int, result.stdout.split())
    assert before == 0 and frozen > 1000  # startup's objects, out of every collection
    assert tuple(thresholds) == GC_THRESHOLDS != (700, 10, 10)


@pytest_twisted.ensureDeferred
async def test_twistd_runs_the_installed_daemon(tmp_path: Path) -> None:
    """The console script from the venv, outside the checkout, with defaults."""
    daemon = Child()
    argv = [
        str(BIN / "twistd"),
        "-n",
        "--pidfile=",
        "pushd",
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = reactor.spawnProcess(daemon, argv[0], argv, env=env, path=str(tmp_path))
    try:
        port = int((await daemon.wait_for(rb"starting on (\d+)")).group(1))
        url = f"http://127.0.0.1:{port}"
        r = await bounded(treq.get(url + "/healthz"))
        assert r.code == 200
        await r.content()
        # The demo ticker: wait for its next message, then see it in the info.
        r = await bounded(treq.get(url + "/channels/ticker/longpoll?timeout=10"))
        page = await r.json()
        (message,) = page["messages"]
        assert set(message["data"]) == {"n", "time"}
        info = await (await bounded(treq.get(url + "/channels/ticker"))).json()
        assert info["channel"] == "ticker" and info["history"] >= 1
    finally:
        if not daemon.exited.called:
            process.signalProcess("TERM")
    status, signal = await bounded(daemon.exited, 30)
    assert (status, signal) == (0, None), daemon.output.decode()[-2000:]
    assert b"Traceback" not in daemon.output


def test_a_built_wheel_installs_and_runs(tmp_path: Path) -> None:
    """pip install of the wheel (not -e) in a fresh venv gives `twistd pushd`."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("pushd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/pushd_plugin.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "pushd/tap.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=600
    )
    result = subprocess.run(
        [str(venv / "bin" / "twistd"), "pushd", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert result.returncode == 0, result.stderr
    for option in ("--listen", "--config", "--history-size", "--history-ttl", "--max-message-size"):
        assert option in result.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import pushd; print(pushd.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        check=True,
    ).stdout
    assert where.startswith(str(venv))
