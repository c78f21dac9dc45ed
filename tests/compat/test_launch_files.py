"""`mqtt-guard broker -c mosquitto.conf` checks its pid_file and log files before creating any of them."""

from __future__ import annotations

from tests.helpers.servers import free_port


def test_an_unwritable_pid_file_fails_before_the_log_file_is_created(tmp_path, cli):
    log_file, other_log = tmp_path / "mosquitto.log", tmp_path / "logs" / "second.log"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {free_port()} 127.0.0.1\nallow_anonymous true\n"
        f"pid_file {tmp_path}/no-such-dir/mosquitto.pid\n"
        f"log_dest file {log_file}\nlog_dest file {other_log}\nlog_dest file {tmp_path}\n"
    )
    r = cli("broker", "-c", str(conf))
    assert r.returncode == 1
    message = r.stderr.strip().splitlines()[-1]
    assert message.startswith("mqtt-guard: error: ")
    assert f"pid_file {tmp_path}/no-such-dir/mosquitto.pid: cannot write: directory" in message
    assert f"log_dest file {other_log}: cannot write: directory {tmp_path}/logs does not exist" in message
    assert f"log_dest file {tmp_path}: cannot write: is a directory" in message
    assert not log_file.exists()  # nothing touched


def test_writable_files_pass(tmp_path):
    from mqtt_guard.compat.conf import parse_mosquitto_conf
    from mqtt_guard.compat.launch import check_files

    existing = tmp_path / "old.log"
    existing.write_text("")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"pid_file {tmp_path}/m.pid\nlog_dest file {existing}\nlog_dest file {tmp_path}/new.log\n")
    check_files(parse_mosquitto_conf(str(conf)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mosquitto.conf", "old.log"]
