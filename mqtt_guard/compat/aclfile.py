"""mosquitto's `acl_file`: the parser and the decision, as mosquitto 2.0 implements them.

Everything here was measured against the real mosquitto 2.0.11 binary with the differential harness
(`mosquitto-compat/diffharness`), which is the authority when this docstring and mosquitto disagree.

File format (one rule per line; a line is parsed like mosquitto's `aclfile__parse`):

* Trailing whitespace (incl. CR) is stripped. A line whose *first character* is ``#`` is a comment;
  ``  # x`` (indented) is an invalid line, exactly as in mosquitto.
* Words are separated by spaces only (a TAB is part of a word, so ``topic<TAB>read x`` is invalid).
* ``topic [read|write|readwrite|deny] FILTER`` and ``pattern [...] FILTER``: the access word is
  optional (default readwrite) and case-sensitive; FILTER is the rest of the line, trimmed, and may
  contain spaces. ``topic read`` is the filter ``read`` with readwrite access.
* ``user NAME``: NAME is the rest of the line, trimmed (it may contain spaces). ``topic`` lines
  before the first ``user`` line belong to anonymous clients (no username).
* Anything else, an unknown access word, a missing filter or username, or an invalid filter
  (``a/#/b``, ``a+``) is an error: mosquitto refuses to start. We raise :class:`AclFileError` with
  the file and line.

Decision (``mosquitto_acl_check`` + ``acl__check_dollar`` + the default ACL check):

1. PUBLISH (write) to ``$SYS/...`` is denied (except ``$SYS/broker/connection/+/state``, which is
   left to the rules); anything but SUBSCRIBE on ``$share/...`` is denied. This holds with or
   without an acl_file.
2. SUBSCRIBE is never checked by the acl_file: every subscription is granted and READ is checked
   for each message delivered (and for retained messages sent at SUBSCRIBE).
3. Without an acl_file everything else is allowed.
4. With one, the client's own block is consulted first (the ``user NAME`` block matching its
   username, or the anonymous block when it has none): a matching ``deny`` denies, else a matching
   rule with the access bit allows. Only when the block did not decide are the ``pattern`` rules
   consulted the same way. So a user's grant beats a pattern deny, while a deny in the user's own
   block beats the user's grants (``deny`` does not cross from patterns into user blocks).
5. Before the patterns: a username or client id containing ``+`` or ``#`` is denied (only when
   pattern rules exist). Patterns containing ``%u`` are skipped for clients without a username;
   ``%c``/``%u`` are replaced *textually*, anywhere in the filter (``x%u`` works, and a username
   ``a/b`` expands to two levels). Anonymous clients do get ``%c`` patterns.
6. Topics starting with ``$`` only match rules starting with ``$``. Nothing matched: denied.

Where mqtt-guard deliberately differs: a reload (SIGHUP) that finds an invalid acl_file keeps the
previous rules (mosquitto 2.0.11 logs the error and then allows everything).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..acl.topics import topic_matches, validate_filter
from .words import next_word

__all__ = [
    "AclFile",
    "AclFileError",
    "AclRule",
    "DENY",
    "READ",
    "SUBSCRIBE",
    "WRITE",
    "check_dollar",
    "mosquitto_matches",
    "parse_acl_text",
    "read_acl_file",
]

# mosquitto's MOSQ_ACL_* values; DENY is MOSQ_ACL_NONE.
DENY = 0
READ = 1
WRITE = 2
SUBSCRIBE = 4

_ACCESS_WORDS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": DENY}
ACCESS_NAMES = {READ: "read", WRITE: "write", READ | WRITE: "readwrite", DENY: "deny"}


class AclFileError(ValueError):
    """The acl_file cannot be used; the message names the file and line, like mosquitto's log."""


@dataclass(frozen=True, slots=True)
class AclRule:
    """One ``topic``/``pattern`` line: ``access`` is DENY (0), READ, WRITE or READ|WRITE."""

    topic: str
    access: int
    line: int = 0
    ucount: int = 0  # occurrences of "%u" (pattern rules only)
    ccount: int = 0  # occurrences of "%c"

    @property
    def access_name(self) -> str:
        return ACCESS_NAMES[self.access]


@dataclass
class AclFile:
    """A parsed acl_file. ``users[None]`` is the anonymous block (lines before the first ``user``)."""

    path: str = ""
    users: dict[str | None, list[AclRule]] = field(default_factory=dict)
    patterns: list[AclRule] = field(default_factory=list)
    user_lines: dict[str, int] = field(default_factory=dict)  # first `user NAME` line, for reports
    warnings: list[str] = field(default_factory=list)

    # compiled forms, built on first use (the file never changes after parsing; a reload builds a new AclFile)
    _blocks: dict[str | None, list[tuple[tuple[str, ...], int, bool]]] = field(default_factory=dict, repr=False)
    _client_patterns: dict[tuple[str | None, str], list[tuple[tuple[str, ...], int, bool]] | None] = field(
        default_factory=dict, repr=False
    )

    # -- the decision -----------------------------------------------------------------------
    def check(self, username: str | None, client_id: str, access: int, topic: str) -> bool:
        """mosquitto's default ACL check for READ or WRITE (SUBSCRIBE is always allowed)."""
        if access & SUBSCRIBE:
            return True
        levels = topic.split("/")
        dollar = topic.startswith("$")
        block = self._blocks.get(username)
        if block is None and username in self.users:
            block = self._blocks[username] = [_compile(r.topic, r.access) for r in self.users[username]]
        if block:
            granted = False
            for f, rule_access, rule_dollar in block:  # denies first, as mosquitto keeps them
                if rule_dollar == dollar and _levels_match(f, levels):
                    if rule_access == DENY:
                        return False
                    if access & rule_access:
                        granted = True
                        break
            if granted:
                return True
        if not self.patterns:
            return False
        key = (username, client_id)
        try:
            patterns = self._client_patterns[key]
        except KeyError:  # None is a cached answer too, so no .get() default
            patterns = self._patterns_for(username, client_id)
            if len(self._client_patterns) > 100_000:
                self._client_patterns.clear()
            self._client_patterns[key] = patterns
        if patterns is None:  # a username or client id with '+' or '#'
            return False
        for f, rule_access, rule_dollar in patterns:
            if rule_dollar == dollar and _levels_match(f, levels):
                if rule_access == DENY:
                    return False
                if access & rule_access:
                    return True
        return False

    def _patterns_for(self, username: str | None, client_id: str) -> list[tuple[tuple[str, ...], int, bool]] | None:
        if (username is not None and ("+" in username or "#" in username)) or "+" in client_id or "#" in client_id:
            return None
        return [
            _compile(substitute(r.topic, client_id, username), r.access)
            for r in self.patterns
            if not (r.ucount and username is None)
        ]


def _compile(topic_filter: str, access: int) -> tuple[tuple[str, ...], int, bool]:
    return tuple(topic_filter.split("/")), access, topic_filter.startswith("$")


def _levels_match(f: tuple[str, ...], t: list[str]) -> bool:
    """MQTT matching on split levels (the `$` rule is checked by the caller); `a/#` matches `a`."""
    nt = len(t)
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= nt or (level != "+" and level != t[i]):
            return False
    return len(f) == nt


def _scan(rules: list[AclRule] | None, access: int, topic: str) -> bool | None:
    """A user's (or the anonymous) block: True/False when it decides, None to go on to patterns.
    (Reference version of the compiled loop in AclFile.check, kept for tests.)"""
    if not rules:
        return None
    dollar = topic.startswith("$")
    granted = False
    for rule in rules:
        if dollar and not rule.topic.startswith("$"):
            continue
        if mosquitto_matches(rule.topic, topic):
            if rule.access == DENY:
                return False  # mosquitto keeps deny rules at the front of the list
            if access & rule.access:
                granted = True
    return True if granted else None


def substitute(pattern: str, client_id: str, username: str | None) -> str:
    """mosquitto's textual ``%c``/``%u`` substitution (``%u`` stays literal without a username)."""
    if "%" not in pattern:
        return pattern
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "%" and i < n - 1:
            nxt = pattern[i + 1]
            if nxt == "c":
                out.append(client_id)
                i += 2
                continue
            if nxt == "u" and username is not None:
                out.append(username)
                i += 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def mosquitto_matches(sub: str, topic: str) -> bool:
    """``mosquitto_topic_matches_sub``: `$` topics only match `$` filters; ``a/#`` matches ``a``."""
    if not sub or not topic:
        return False
    if (sub[0] == "$") != (topic[0] == "$"):
        return False
    return topic_matches(sub, topic)


def check_dollar(topic: str, access: int) -> bool | None:
    """``acl__check_dollar``: False to deny outright, None to go on to the ACL."""
    if not topic.startswith("$"):
        return None
    if topic.startswith("$SYS"):
        if access == WRITE:
            return None if mosquitto_matches("$SYS/broker/connection/+/state", topic) else False
        return None
    if topic.startswith("$share"):
        return None if access == SUBSCRIBE else False
    return None


# -- parsing -------------------------------------------------------------------------------------


def _rest(line: str, start: int) -> str:
    return line[start:].strip(" \t\r\n\v\f")


def parse_acl_text(text: str, path: str = "acl_file") -> AclFile:
    """Parse acl_file content; raise AclFileError (naming file and line) where mosquitto refuses it."""
    acl = AclFile(path=path)
    user: str | None = None
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip(" \t\r\n\v\f")
        if not line or line[0] == "#":
            continue
        token, pos = next_word(line, 0)
        if token is None:
            continue
        where = f"{path}:{lineno}"
        if token in ("topic", "pattern"):
            access_word, pos2 = next_word(line, pos)
            if access_word is None:
                raise AclFileError(f"{where}: empty topic in acl_file (mosquitto refuses this line)")
            # strtok_r(NULL, "") returns the rest after the delimiter that ended the access word
            rest = line[pos2 + 1 :] if pos2 < len(line) else ""
            topic = _rest(rest, 0) if rest else ""
            if rest and topic:
                if access_word not in _ACCESS_WORDS:
                    raise AclFileError(
                        f"{where}: invalid topic access type {access_word!r} "
                        "(use read, write, readwrite or deny; they are case-sensitive)"
                    )
                access = _ACCESS_WORDS[access_word]
            elif rest:  # only blanks after the access word: mosquitto's topic is then empty
                raise AclFileError(f"{where}: invalid ACL topic '' in acl_file")
            else:
                topic, access = access_word, READ | WRITE
            bad = validate_filter(topic)
            if bad is not None:
                raise AclFileError(f"{where}: invalid ACL topic {topic!r}: {bad}")
            if token == "topic":
                rule = AclRule(topic, access, lineno)
                rules = acl.users.setdefault(user, [])
                if access == DENY:
                    rules.insert(0, rule)
                else:
                    rules.append(rule)
            else:
                rule = AclRule(topic, access, lineno, ucount=topic.count("%u"), ccount=topic.count("%c"))
                if not rule.ucount and not rule.ccount:
                    acl.warnings.append(
                        f"{where}: pattern {topic!r} has neither %c nor %u (it applies to every client as written)"
                    )
                if access == DENY:
                    acl.patterns.insert(0, rule)
                else:
                    acl.patterns.append(rule)
        elif token == "user":
            name = _rest(line, pos)
            if not name:
                raise AclFileError(f"{where}: missing username in acl_file")
            user = name
            acl.user_lines.setdefault(name, lineno)
        else:
            raise AclFileError(
                f"{where}: invalid line in acl_file: {token!r} (expected topic, pattern or user; "
                "only a '#' in the first column starts a comment)"
            )
    return acl


def read_acl_file(path: str | Path) -> AclFile:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AclFileError(f"cannot open acl_file {str(p)!r}: {exc.strerror}") from None
    return parse_acl_text(data.decode("utf-8", errors="surrogateescape"), str(p))


def rules_of(acl: AclFile) -> Iterable[tuple[str | None, AclRule]]:
    """Every rule with its block (None = anonymous, "%pattern" for patterns), in file order."""
    entries: list[tuple[int, str | None, AclRule]] = []
    for user, rules in acl.users.items():
        entries += [(r.line, user, r) for r in rules]
    entries += [(r.line, "%pattern", r) for r in acl.patterns]
    for _, who, rule in sorted(entries, key=lambda e: e[0]):
        yield who, rule
