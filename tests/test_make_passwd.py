"""mosquitto/make-passwd.sh: three users, files only the owner can read, passwords never printed."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from uns.broker import MOSQUITTO_DIR


def test_make_passwd_writes_three_users_and_private_secrets(tmp_path: Path) -> None:
    env = {**os.environ, "UNS_MQTT_VIEWER_PASSWORD": "viewer-secret-1"}
    env.pop("UNS_MQTT_BRIDGE_PASSWORD", None)
    result = subprocess.run(
        [str(MOSQUITTO_DIR / "make-passwd.sh"), str(tmp_path / "passwd"), str(tmp_path / "secrets.env")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "viewer-secret-1" not in result.stdout + result.stderr
    users = [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()]
    assert users == ["bridge", "services", "viewer", "integration"]
    secrets = dict(line.split("=", 1) for line in (tmp_path / "secrets.env").read_text().splitlines())
    assert secrets["UNS_MQTT_VIEWER_PASSWORD"] == "viewer-secret-1"
    assert len(secrets["UNS_MQTT_BRIDGE_PASSWORD"]) >= 20  # generated
    for name in ("passwd", "secrets.env"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
