"""The first hour's traps, as a user meets them (issue 12): `mm-assets --help` lists every
command, a failed command prints its cause once (no secret, the trace only when asked), the
sandbox's ports are settings, and the demo uses a running sandbox instead of wiping it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from mm_assets_tests.cli.first_hour import (
    PROJECT_ROOT,
    demo_sandbox_step,
    lines,
    mm_assets,
    sandbox_process,
    stop_process,
    user_env,
)

# Every command and an argument its `--help` must describe; a new command is one more row.
COMMANDS = {
    "build": "BATCH_DIR",
    "deliver": "BATCH",
    "attention": "--settle",
    "validate": "--max-violations",
    "sandbox": "--sftp-port",
    "status": "--all",
    "approve-snapshot": "--reason",
}


def test_help_lists_every_command_and_each_command_describes_its_arguments(
    tmp_path: Path,
) -> None:
    env = user_env(tmp_path)
    top = mm_assets("--help", env=env)
    assert top.returncode == 0
    listed = {line.split()[0] for line in top.stdout.splitlines() if line.startswith("    ")}
    assert set(COMMANDS) <= listed
    for command, argument in COMMANDS.items():
        shown = mm_assets(command, "--help", env=env)
        assert shown.returncode == 0, shown.stderr
        assert f"usage: mm-assets {command}" in shown.stdout
        assert argument in shown.stdout.split("\n\n")[0]  # the usage line names it
        assert _description(shown.stdout, argument), shown.stdout


def _description(help_text: str, argument: str) -> str:
    """The text argparse prints beside (or under) an argument in a command's --help."""
    rows = help_text.splitlines()
    for i, row in enumerate(rows):
        if row.strip().startswith(argument):
            beside = row.strip()[len(argument) :].split("  ", 1)
            if len(beside) > 1 and beside[1].strip():
                return beside[1].strip()
            following = rows[i + 1] if i + 1 < len(rows) else ""
            return following.strip() if following.startswith(" " * 8) else ""
    return ""


def test_deliver_without_a_running_sandbox_says_so_in_one_line(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    result = mm_assets("deliver", "batch_20261120", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert lines(result.stderr) == [
        f"mm-assets deliver: no sandbox is running (no state in {tmp_path / 'sandbox'}): "
        "start it with `mm-assets sandbox` (or `bash scripts/ui.sh`)"
    ]


def test_deliver_after_the_sandbox_was_killed_says_so_in_one_line(tmp_path: Path) -> None:
    """A sandbox killed with SIGKILL leaves its state file: it does not count as running."""
    env = user_env(tmp_path)
    with sandbox_process(env, tmp_path / "sandbox") as sandbox:
        sandbox.process.kill()
        sandbox.process.wait()
    assert (tmp_path / "sandbox" / "sandbox.json").exists()
    result = mm_assets("deliver", "batch_20261120", env=env)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = lines(result.stderr)
    assert "is not running (it was stopped or killed)" in line and "mm-assets sandbox" in line


def test_a_failed_command_prints_its_cause_once_without_secrets_and_the_trace_on_request(
    tmp_path: Path,
) -> None:
    secret = "Pw-9fK2xQ7mZr4Lb"
    # A setting whose bad value is quoted back by the error: the password, by mistake.
    env = user_env(
        tmp_path, MM_DELIVERY_TRANSPORT=secret, MM_SFTP_PASSWORD=secret, MM_SFTP_USERNAME="u"
    )
    plain = mm_assets("deliver", "batch_20261120", env=env)
    assert plain.returncode == 1 and plain.stdout == ""
    assert lines(plain.stderr) == [
        "mm-assets deliver: MM_DELIVERY_TRANSPORT must be one of sandbox, sftp, cft, not "
        "'<redacted>'  (the trace: --traceback)"
    ]
    traced = mm_assets("deliver", "--traceback", "batch_20261120", env=env)
    assert traced.returncode == 1
    assert "Traceback (most recent call last)" in traced.stderr
    assert lines(traced.stderr)[-1].startswith("mm-assets deliver: MM_DELIVERY_TRANSPORT")
    for output in (plain.stdout, plain.stderr, traced.stdout, traced.stderr):
        assert secret not in output


def test_the_sandbox_ports_are_settings_and_a_second_sandbox_runs_beside_the_first(
    tmp_path: Path,
) -> None:
    env = user_env(tmp_path)
    with sandbox_process(env, tmp_path / "first") as first:
        taken = first.state["sftp_port"]
        # The setting is what the second sandbox binds: the first's port is refused by name.
        clash = mm_assets(
            "sandbox",
            "--state-dir",
            str(tmp_path / "second"),
            env={**env, "MM_SANDBOX_SFTP_PORT": str(taken)},
        )
        assert clash.returncode == 2
        assert lines(clash.stderr) == [
            f"mm-assets sandbox: port {taken} is in use by another program (another "
            f"sandbox?): stop it, or set MM_SANDBOX_SFTP_PORT to another port (0 picks a free one)"
        ]
        # The same folder again: the running sandbox is named, not replaced.
        again = mm_assets("sandbox", "--state-dir", str(tmp_path / "first"), env=env)
        assert again.returncode == 2
        (line,) = lines(again.stderr)
        assert f"a sandbox is already running from {tmp_path / 'first'}" in line
        with sandbox_process(env, tmp_path / "second") as second:
            assert second.state["sftp_port"] != taken
            for sandbox in (first, second):
                status = mm_assets(
                    "sandbox", "--state-dir", str(sandbox.state_dir), "--status", env=env
                )
                assert status.returncode == 0
                assert f"sandbox running (pid {sandbox.process.pid})" in status.stdout
        assert first.process.poll() is None  # untouched by the refused starts


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            return True
    except OSError:
        return False


def test_the_demo_uses_a_running_sandbox_and_keeps_its_drop_and_receipts(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    state_dir = tmp_path / "sandbox"
    with sandbox_process(env, state_dir) as sandbox:
        # What the running sandbox holds: a delivered file and its receipts.
        (state_dir / "sftp_drop" / "Delivered_ExamplePartner_20261120000000.log.gz").write_bytes(
            b"x"
        )
        (state_dir / "ledger.sqlite").write_bytes(b"receipts")
        before = sandbox.state

        step = demo_sandbox_step(env, state_dir)

        assert step.returncode == 0, step.stderr
        out = lines(step.stdout)
        assert out[0].startswith(f"using the sandbox running (pid {sandbox.process.pid})")
        assert "kept as it is" in out[1]
        assert out[-1] == "started="  # it started nothing
        assert sandbox.process.poll() is None
        assert sandbox.state == before
        assert _answers(int(before["sftp_port"]))
        assert (state_dir / "sftp_drop" / "Delivered_ExamplePartner_20261120000000.log.gz").exists()
        assert (state_dir / "ledger.sqlite").read_bytes() == b"receipts"


def test_the_demo_says_when_it_resets_the_sandbox(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    state_dir = tmp_path / "sandbox"
    (state_dir / "sftp_drop").mkdir(parents=True)
    (state_dir / "sftp_drop" / "Old_ExamplePartner_20261120000000.log.gz").write_bytes(b"x")
    (state_dir / "ledger.sqlite").write_bytes(b"old receipts")

    step = demo_sandbox_step(env, state_dir)

    assert step.returncode == 0, step.stderr
    out = lines(step.stdout)
    assert out[0] == (
        f"no sandbox running from {state_dir}: starting a fresh one (its SFTP drop, receipts "
        "and quota use are reset)"
    )
    started = int(out[-1].removeprefix("started="))
    try:
        state = json.loads((state_dir / "sandbox.json").read_text())
        assert state["pid"] == started and _answers(state["sftp_port"])
        assert list((state_dir / "sftp_drop").iterdir()) == []
        assert not (state_dir / "ledger.sqlite").exists()
    finally:
        stop_process(started)


@pytest.mark.parametrize("value", ["http", "70000"])
def test_a_bad_port_setting_is_one_line(tmp_path: Path, value: str) -> None:
    env = user_env(tmp_path, MM_SANDBOX_CFT_PORT=value)
    result = mm_assets("sandbox", "--state-dir", str(tmp_path / "sandbox"), env=env)
    assert result.returncode == 2
    assert lines(result.stderr) == [
        f"mm-assets sandbox: MM_SANDBOX_CFT_PORT={value!r} is not a port (0-65535)"
    ]


def test_a_build_of_the_sample_batch_prints_nothing_on_stderr_to_its_exit(tmp_path: Path) -> None:
    # The command freezes Dagster's objects so its exit need not free them; nothing may print
    # while the interpreter shuts down (a library reporting objects of its own still alive).
    [sample] = sorted((PROJECT_ROOT / "data" / "export").iterdir())
    result = mm_assets("build", str(sample), env=user_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check files_conform_to_s2s_spec: passed" in result.stdout
    assert result.stderr == ""
