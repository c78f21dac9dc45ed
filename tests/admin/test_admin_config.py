"""The `admin:` section of the configuration file and the `admin` command's use of it."""

from __future__ import annotations

import pytest

from mqtt_guard.config import ConfigError, load_config


def test_admin_section(tmp_path, cli):
    f = tmp_path / "c.yaml"
    f.write_text("admin:\n  bind: 127.0.0.1:9999\n  certfile: /x.crt\n  keyfile: /x.key\n")
    config = load_config(f)
    assert (config.admin.bind, config.admin.certfile, config.admin.keyfile) == ("127.0.0.1:9999", "/x.crt", "/x.key")
    assert load_config(None).admin.bind == "127.0.0.1:9884"  # local only by default
    f.write_text("admin:\n  bind: 127.0.0.1:9999\n  certfile: /x.crt\n")
    with pytest.raises(ConfigError, match="certfile and keyfile go together"):
        load_config(f).admin.check()
    f.write_text("admin:\n  bind: nowhere\n")
    with pytest.raises(ConfigError, match="admin.bind"):
        load_config(f).admin.check()
    f.write_text("admin:\n  port: 1\n")
    result = cli("admin", "-c", str(f))
    assert result.returncode == 1 and "unknown key 'admin.port'" in result.stderr
