"""The word splitting mosquitto's configuration and ACL file parsers share."""

from __future__ import annotations


def next_word(line: str, pos: int) -> tuple[str | None, int]:
    """strtok_r(..., " ") from `pos`, as mosquitto splits mosquitto.conf and acl_file lines: the next
    space-separated word and the index after it; (None, end) when only spaces are left. Tabs are part
    of a word, as in mosquitto."""
    n = len(line)
    while pos < n and line[pos] == " ":
        pos += 1
    if pos >= n:
        return None, pos
    end = line.find(" ", pos)
    if end < 0:
        end = n
    return line[pos:end], end
