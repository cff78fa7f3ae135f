#!/usr/bin/env python3
"""Checks the command forms shown in every doc against the real CLIs (issue 9, item 5).

scripts/doc-commands.sh *runs* the step-by-step docs. The other docs show command templates
(placeholders such as `$KEY`, `…`, `[--interval 5s]`) that cannot run as written; this checks
that each `auditledger …` / `auditledger-verify …` / `auditledger-gateway-sim …` invocation in a
```sh block of README.md and docs/*.md names a subcommand that exists and only flags that
subcommand accepts (from its `--help`), so a renamed flag or command fails CI instead of
leaving a stale doc.

Usage: scripts/doc-flags.py BIN_DIR
"""

import glob
import re
import shlex
import subprocess
import sys

BINARIES = ("auditledger", "auditledger-verify", "auditledger-gateway-sim")


def blocks(path):
    """(line number, text) of each ```sh block, continuation lines joined."""
    out, inside, start, buf = [], False, 0, []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            stripped = line.rstrip("\n")
            if not inside and re.match(r"^```sh( |$)", stripped):
                inside, start, buf = True, n, []
            elif inside and stripped == "```":
                inside = False
                out.append((start, "\n".join(buf).replace("\\\n", " ")))
            elif inside:
                buf.append(stripped)
    return out


def strip_substitutions(text):
    """Replaces each `$( … )` (nested ones included) by a placeholder word: an invocation inside
    one is found and checked on its own."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith("$(", i):
            if depth == 0:
                out.append("SUBST")
            depth += 1
            i += 2
            continue
        if depth and text[i] == "(":
            depth += 1
        elif depth and text[i] == ")":
            depth -= 1
            i += 1
            continue
        if depth == 0:
            out.append(text[i])
        i += 1
    return "".join(out)


def invocations(text):
    """Word lists starting at each binary name (also inside `$( … )` and after pipes)."""
    for line in text.splitlines():
        line = line.split(" #", 1)[0]
        for m in re.finditer(r"(?:^|[\s(|;&])((?:\S*/)?(%s))(?=\s|$)" % "|".join(map(re.escape, BINARIES)), line):
            rest = strip_substitutions(line[m.end(1):])
            rest = re.split(r"\)|\||;|&&|>", rest, maxsplit=1)[0]
            try:
                words = shlex.split(rest, posix=True)
            except ValueError:
                words = rest.split()
            yield m.group(2), words


HELP_CACHE = {}


def help_text(bin_dir, binary, path):
    key = (binary, tuple(path))
    if key not in HELP_CACHE:
        r = subprocess.run([f"{bin_dir}/{binary}", *path, "--help"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=30)
        HELP_CACHE[key] = r.stdout if r.returncode == 0 else None
    return HELP_CACHE[key]


def subcommands(help_out):
    names, section = set(), False
    for line in help_out.splitlines():
        if line.startswith("Commands:"):
            section = True
            continue
        if section:
            if not line.startswith("  "):
                section = False
                continue
            names.add(line.split()[0])
    return names


def check(bin_dir, doc, line, binary, words):
    path = []
    while words and not words[0].startswith("-") and words[0] != "[":
        h = help_text(bin_dir, binary, path)
        if h is None or words[0] not in subcommands(h):
            break
        path.append(words.pop(0))
    h = help_text(bin_dir, binary, path)
    if h is None:
        return [f"{doc}:{line}: `{binary} {' '.join(path)} --help` fails"]
    if subcommands(h):
        first = words[0] if words else ""
        if not re.fullmatch(r"[a-z][a-z-]*", first):
            return []  # a template such as `auditledger-verify … --server URL`: nothing to check
        return [f"{doc}:{line}: `{binary} {' '.join(path)}` has no subcommand {first!r}"]
    problems = []
    for w in words:
        flag = w.strip("[]").split("=", 1)[0]
        if re.fullmatch(r"--[a-z][a-z0-9-]*", flag) and not re.search(r"(^|[\s,])" + re.escape(flag) + r"([\s,<=]|$)", h, re.M):
            problems.append(f"{doc}:{line}: `{binary} {' '.join(path)}` has no flag {flag}")
    return problems


def main():
    bin_dir = sys.argv[1]
    docs = ["README.md", *sorted(glob.glob("docs/*.md"))]
    problems, checked = [], 0
    for doc in docs:
        for line, text in blocks(doc):
            for binary, words in invocations(text):
                problems += check(bin_dir, doc, line, binary, list(words))
                checked += 1
    for p in problems:
        print(p, file=sys.stderr)
    print(f"doc-flags: {checked} command invocations in {len(docs)} docs checked against the CLIs' --help; "
          f"{len(problems)} problem(s)", file=sys.stderr)
    sys.exit(1 if problems or checked == 0 else 0)


if __name__ == "__main__":
    main()
