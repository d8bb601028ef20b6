"""LOG_FORMAT and LOG_LEVEL as Settings reads them (SPEC §9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, SettingsError

PROFILE = Path("profile.json")  # read later, by the loader: not here


@pytest.mark.parametrize(
    ("given", "fmt", "unknown"),
    [
        ({}, "console", None),
        ({"LOG_FORMAT": "json"}, "json", None),
        ({"LOG_FORMAT": " JSON "}, "json", None),
        ({"LOG_FORMAT": "console"}, "console", None),
        ({"LOG_FORMAT": ""}, "console", None),
        # SPEC §9: "readable console output otherwise"; the value is kept for the start-up warning
        ({"LOG_FORMAT": "text"}, "console", "text"),
        ({"LOG_FORMAT": "jsno"}, "console", "jsno"),
    ],
)
def test_log_format_is_json_or_else_console(
    given: dict[str, str], fmt: str, unknown: str | None
) -> None:
    s = Settings.from_env(given, profile_path=PROFILE)
    assert (s.log_format, s.log_format_unknown) == (fmt, unknown)


@pytest.mark.parametrize(
    ("given", "level"),
    [
        ("", "info"),
        ("DEBUG", "debug"),
        ("warning", "warning"),
        ("warn", "warning"),  # the standard library's alias
        ("Fatal", "critical"),
        ("critical", "critical"),
    ],
)
def test_log_level_names_and_aliases(given: str, level: str) -> None:
    assert Settings.from_env({"LOG_LEVEL": given}, profile_path=PROFILE).log_level == level


def test_an_unknown_log_level_is_refused_with_the_accepted_names() -> None:
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"LOG_LEVEL": "loud"}, profile_path=PROFILE)
    assert str(e.value) == (
        "LOG_LEVEL='loud' must be debug, info, warning (or warn), error or critical"
    )


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "Infinity"])
def test_a_number_setting_must_be_finite(raw: str) -> None:
    """API_ROUTER_DRAIN_SECS=nan was accepted (and cut every stream at SIGTERM)."""
    with pytest.raises(SettingsError, match=r"API_ROUTER_DRAIN_SECS=.* is not a finite number"):
        Settings.from_env({"API_ROUTER_DRAIN_SECS": raw}, profile_path=Path())


def test_a_profile_argument_wins_over_the_config_path_of_the_environment(tmp_path: Path) -> None:
    """configuration.md: arguments win over the environment. The chart sets
    API_ROUTER_CONFIG_PATH; `api-router openai` in such a pod served the mounted file."""
    from service.cli import resolve_settings
    from service.config.loader import SHIPPED_DIR

    live = tmp_path / "live.json"
    live.write_text('{"name": "live", "baseUrl": "http://h"}')
    env = {"API_ROUTER_CONFIG_PATH": str(live)}
    assert (
        resolve_settings(["openai"], env).profile_path == (SHIPPED_DIR / "openai.json").absolute()
    )
    assert resolve_settings([], env).profile_path == live.absolute()
    assert resolve_settings(["--config", str(live), "openai"], {}).profile_path == live.absolute()


def test_options_may_come_between_or_after_the_positional_arguments() -> None:
    """`api-router openai --workers 2 9000` was refused ("unrecognized arguments: 9000")."""
    from service.cli import resolve_settings

    for argv in (["openai", "--workers", "2", "9000"], ["--workers", "2", "openai", "9000"]):
        s = resolve_settings(argv, {})
        assert (s.profile_path.stem, s.port, s.workers) == ("openai", 9000, 2)


def test_temporary_metric_dirs_of_dead_routers_are_swept_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR each run makes a temporary directory, removed by its
    main process at its end: a router killed with SIGKILL left its own behind, one more per
    kill. It is named after its main process now, and the next start removes those whose
    process is gone (not a live router's, nor a directory of another name)."""
    import os
    import subprocess
    import sys
    import tempfile
    import time

    from service.cli import prepare_multiproc_dir

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, check=True)  # fmt: skip
    dead = int(done.stdout)
    stale = tmp_path / f"api-router-metrics-{dead}-k2j4"
    live = tmp_path / f"api-router-metrics-{os.getpid()}-a8f1"
    other = [tmp_path / "api-router-metrics-q1w2e3", tmp_path / "api-router-metrics-x-y"]
    for d in (stale, live, *other):
        d.mkdir()
        (d / "counter_1.db").write_bytes(b"")
    # a dead main process whose worker still drains (it has the directory in its environment)
    draining = tmp_path / f"api-router-metrics-{dead}-dr41"
    draining.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(draining)}
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        time.sleep(0.2)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        made = Path(prepare_multiproc_dir({}))
    finally:
        worker.kill()
        worker.wait()
    assert made.parent == tmp_path and made.name.startswith(f"api-router-metrics-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (made, live, draining, *other)
    )


def test_a_previous_run_s_metrics_exemplars_and_alarm_are_removed_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a fixed PROMETHEUS_MULTIPROC_DIR (the image's), a restart must not count a previous
    run's figures, nor alarm on its failures (the alarm's file was kept: 4 failures before a
    restart and 1 after made 5, and an alarm)."""
    from service.cli import prepare_multiproc_dir

    for name in ("counter_1.db", "exemplars.bin", "failure-alarm.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert prepare_multiproc_dir({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}) == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # not the router's


@pytest.mark.parametrize(
    ("cpu_max", "affinity", "expected"),
    [
        (None, 6, 6),  # no cgroup v2 file: the CPUs of the affinity mask
        ("max 100000\n", 6, 6),  # no quota
        ("200000 100000\n", 6, 2),  # a limit of 2 CPUs
        ("150000 100000\n", 6, 2),  # 1.5 CPUs: rounded up
        ("50000 100000\n", 6, 1),  # half a CPU: still one worker
        ("800000 100000\n", 3, 3),  # a quota above the CPUs it may run on
        ("garbage\n", 4, 4),  # a line not understood: ignored
    ],
)
def test_the_default_worker_count_is_the_cpus_this_process_may_use(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cpu_max: str | None,
    affinity: int,
    expected: int,
) -> None:
    """os.cpu_count() counts the machine's CPUs: in a container limited to 2 CPUs on a 64-CPU
    node, or under taskset, the router started one worker per CPU of the node."""
    import os

    from service.cli import default_workers

    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert default_workers(path) == expected


def test_without_workers_given_the_router_takes_the_default_worker_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import service.cli as cli

    monkeypatch.setattr(cli, "default_workers", lambda: 3)
    assert cli.resolve_settings(["openai"], {}).workers == 3
    assert cli.resolve_settings(["openai"], {"API_ROUTER_WORKERS": "5"}).workers == 5
