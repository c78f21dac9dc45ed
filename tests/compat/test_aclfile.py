"""mosquitto acl_file parsing and decisions. Every expectation here was measured on mosquitto 2.0.11
(the differential test re-measures the decisions on random files at every run)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.compat.aclfile import (
    DENY,
    READ,
    SUBSCRIBE,
    WRITE,
    AclFileError,
    check_dollar,
    mosquitto_matches,
    parse_acl_text,
    read_acl_file,
    substitute,
)

ACL = """topic read anon/#
pattern read pc/%c
pattern read pu/%u
pattern read tx/x%u
pattern read sl/%u/end
pattern deny a/b
user admin
topic readwrite #
topic readwrite $foo/#
user alice
topic read a/#
topic write w/#
topic deny d/x
topic d/#
topic read %u/lit
user a/b
topic read nothing
user al+ce
topic read plus/#
"""


@pytest.fixture(scope="module")
def acl():
    return parse_acl_text(ACL, "acl")


@pytest.mark.parametrize(
    ("user", "cid", "access", "topic", "allowed"),
    [
        ("alice", "c", READ, "a/b", True),  # the user's own grant beats a pattern deny
        ("alice", "c", READ, "a/c", True),
        ("bob", "c", READ, "a/b", False),  # no block: the pattern deny applies
        ("alice", "c", READ, "d/x", False),  # a deny in the user's block beats its grant d/#
        ("alice", "c", WRITE, "d/y", True),  # access word omitted = readwrite
        (None, "can", READ, "pc/can", True),  # anonymous clients get %c patterns
        (None, "can", READ, "anon/1", True),  # lines before the first `user`
        (None, "can", WRITE, "anon/1", False),
        (None, "can", READ, "pu/%u", False),  # %u patterns are skipped without a username
        ("bob", "c", READ, "tx/xbob", True),  # substitution is textual, inside a level too
        ("a/b", "c", READ, "pu/a/b", True),  # a '/' in the username adds levels
        ("a/b", "c", READ, "sl/a/b/end", True),
        ("al+ce", "c", READ, "plus/1", True),  # '+' in the username: own block still applies...
        ("al+ce", "c", READ, "pc/c", False),  # ...but every pattern denies
        ("bob", "x+y", READ, "pc/x+y", False),  # same for a client id with '+'
        ("alice", "c", READ, "%u/lit", True),  # %u is literal in `topic` lines
        ("alice", "c", READ, "alice/lit", False),
        ("alice", "c", READ, "w/1", False),
        ("alice", "c", WRITE, "w/1", True),
        ("alice", "c", READ, "a", True),  # a/# matches a
        ("admin", "c", READ, "$SYS/x", False),  # '#' never matches a $ topic
        ("admin", "c", WRITE, "$foo/x", True),
        ("alice", "c", WRITE, "$foo/x", False),
        ("alice", "c", SUBSCRIBE, "anything/#", True),  # SUBSCRIBE is never checked
        ("nobody", "c", READ, "zz", False),
    ],
)
def test_decisions(acl, user, cid, access, topic, allowed):
    assert acl.check(user, cid, access, topic) is allowed


def test_no_rules_and_no_patterns_denies_everything():
    acl = parse_acl_text("user alice\ntopic read a\n")
    assert acl.check("bob", "c", READ, "a") is False
    assert acl.check(None, "c", READ, "a") is False


def test_a_second_block_for_a_user_merges_with_the_first():
    acl = parse_acl_text("user alice\ntopic read a\nuser bob\ntopic b\nuser alice\ntopic write c\n")
    assert acl.check("alice", "x", READ, "a") and acl.check("alice", "x", WRITE, "c")
    assert not acl.check("bob", "x", WRITE, "c")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("  topic read a\n", True),  # leading spaces before the keyword are skipped
        ("topic   read   a  \n", True),
        ("topic read a\r\nuser alice\r\ntopic read b\r\n", True),
        ("topic read a\t\n", True),
        ("pattern read a\n", True),
        ("user alice   \ntopic read b\n", True),
        ("user al ice\ntopic read b\n", True),
        ("topic read /a\n", True),
        ("topic read $SYS/#\n", True),
        ("topic read a b\n", True),  # the filter is the rest of the line
        ("topic read\n", True),  # the filter "read", readwrite
    ],
)
def test_lines_mosquitto_accepts(text, ok):
    parse_acl_text(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("  # comment\n", "invalid line"),  # only '#' in the first column is a comment
        ("topic\tread\ta\n", "invalid line"),  # words are separated by spaces only
        ("TOPIC read a\n", "invalid line"),
        ("topic READ a\n", "invalid topic access type 'READ'"),
        ("topic\n", "empty topic"),
        ("user\n", "missing username"),
        ("user \n", "missing username"),
        ("foo bar\n", "invalid line"),
        ("topic read a/#/b\n", "invalid ACL topic 'a/#/b'"),
        ("topic a b\n", "invalid topic access type 'a'"),
        ("topic read a # comment\n", "invalid ACL topic 'a # comment'"),
    ],
)
def test_lines_mosquitto_refuses(text, message):
    with pytest.raises(AclFileError) as err:
        parse_acl_text("# first line\n" + text, "/etc/acl")
    assert message in str(err.value)
    assert "/etc/acl:2:" in str(err.value)


def test_parsed_layout():
    acl = parse_acl_text("topic a\nuser alice\ntopic read b\ntopic deny c\npattern %u/x\n")
    assert [r.topic for r in acl.users[None]] == ["a"]
    assert [(r.topic, r.access) for r in acl.users["alice"]] == [("c", DENY), ("b", READ)]  # denies first
    assert acl.patterns[0].ucount == 1
    assert not acl.warnings
    assert parse_acl_text("pattern read a\n").warnings  # a pattern without %c/%u is worth a warning


def test_read_acl_file_names_missing_file(tmp_path):
    with pytest.raises(AclFileError, match="cannot open acl_file"):
        read_acl_file(tmp_path / "nope")


def test_substitute_and_match():
    assert substitute("a/%u/%c/x%u", "cid", "bob") == "a/bob/cid/xbob"
    assert substitute("a/%u", "cid", None) == "a/%u"
    assert substitute("100%", "c", "u") == "100%"
    assert mosquitto_matches("a/#", "a") and mosquitto_matches("+/+", "/a")
    assert not mosquitto_matches("#", "$SYS/x") and mosquitto_matches("$SYS/#", "$SYS/x")


def test_check_dollar():
    assert check_dollar("$SYS/x", WRITE) is False
    assert check_dollar("$SYS/broker/connection/c1/state", WRITE) is None
    assert check_dollar("$SYS/x", READ) is None
    assert check_dollar("$share/g/t", WRITE) is False and check_dollar("$share/g/t", SUBSCRIBE) is None
    assert check_dollar("$other/x", WRITE) is None and check_dollar("a", WRITE) is None


def _reference(acl, username, client_id, access, topic):
    """mosquitto_acl_check_default written out plainly (the compiled AclFile.check must agree)."""
    from mqtt_guard.compat.aclfile import _scan

    verdict = _scan(acl.users.get(username), access, topic)
    if verdict is not None:
        return verdict
    if not acl.patterns:
        return False
    if (username is not None and ("+" in username or "#" in username)) or "+" in client_id or "#" in client_id:
        return False
    for rule in acl.patterns:
        if rule.ucount and username is None:
            continue
        if mosquitto_matches(substitute(rule.topic, client_id, username), topic):
            if rule.access == DENY:
                return False
            if access & rule.access:
                return True
    return False


_LEVEL = st.sampled_from(["a", "b", "+", "%u", "%c", "x%u", "$SYS", "$x", ""])
_FILTER = st.lists(_LEVEL, min_size=1, max_size=3).map(lambda ls: "/".join(ls) or "a")
_RULE = st.tuples(
    st.sampled_from(["topic", "pattern"]),
    st.sampled_from(["", "read ", "write ", "readwrite ", "deny "]),
    _FILTER,
    st.booleans(),
)
_NAME = st.sampled_from([None, "a", "b", "u/x", "p+q", "$SYS", ""])
_TOPIC = st.lists(st.sampled_from(["a", "b", "x", "xa", "u", "$SYS", "$x", ""]), min_size=1, max_size=4).map(
    lambda ls: "/".join(ls) or "a"
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([None, "a", "b", "u/x", "p+q"]), st.lists(_RULE, max_size=4)), max_size=4),
    _NAME,
    st.sampled_from(["c", "a", "x+y", "d/1"]),
    st.sampled_from([READ, WRITE]),
    _TOPIC,
)
def test_compiled_check_agrees_with_the_plain_algorithm(blocks, username, client_id, access, topic):
    lines = []
    for user, rules in blocks:
        if user is not None:
            lines.append(f"user {user}")
        for kind, access_word, f, with_hash in rules:
            if with_hash and kind == "pattern":
                f = f + "/#"
            lines.append(f"{kind} {access_word}{f}")
    try:
        acl = parse_acl_text("\n".join(lines) + "\n")
    except AclFileError:
        return
    if username == "":
        username = None
    assert acl.check(username, client_id, access, topic) is _reference(acl, username, client_id, access, topic)
