"""`mqtt-guard ... --help` explains every argument and sub-command."""

from __future__ import annotations

import argparse

from mqtt_guard.cli.main import build_parser


def _walk(parser: argparse.ArgumentParser, path: list[str]):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            for name, sub in action.choices.items():
                yield [*path, name], "(the sub-command itself)", name in helped
                yield from _walk(sub, [*path, name])
        elif not isinstance(action, argparse._HelpAction):
            yield path, "/".join(action.option_strings) or action.dest, bool(action.help)


def test_every_argument_and_sub_command_has_help():
    missing = [f"{' '.join(path)}: {what}" for path, what, ok in _walk(build_parser(), ["mqtt-guard"]) if not ok]
    assert not missing, missing


def test_help_names_what_a_first_time_admin_asked_about(cli):
    acl_allow = cli("acl", "allow", "--help").stdout
    assert "rules of user U" in acl_allow and "topic filter" in acl_allow and "--strict" in acl_allow
    assert "subscribe alone delivers nothing" in " ".join(acl_allow.split())
    user_add = " ".join(cli("user", "add", "--help").stdout.split())
    assert "--superuser passes every ACL check" in user_add and "name the username" in user_add
    kick = " ".join(cli("kick", "--help").stdout.split())
    assert "client_id the client id to disconnect" in kick
    check = " ".join(cli("acl", "check", "--help").stdout.split())
    assert "client_id the client id" in check and "read = subscribe and receive" in check
