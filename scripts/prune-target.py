#!/usr/bin/env python3
"""Deletes stale executables from the fixed cargo target dir (scripts/env.sh).

The target dir is kept between CI runs so that builds are incremental, and cargo never deletes
anything from it. Every change to a crate's dependencies or features gives its test and bench
executables new file names (the metadata hash), so the old ones (~400 MB each, RocksDB linked
in) stay behind: 76 of them, 30 GB, after one day of work on 2026-12-07, which filled the disk.
This keeps exactly the executables that `cargo test --workspace --all-targets --no-run` lists
as its artifacts and removes every other `name-<16 hex>` executable in `debug/deps`, and the
incremental-compilation caches of configurations no build uses any more (see below). Libraries
and build-script outputs are left alone (small, and shared across builds).

Reads the JSON messages of that cargo command on standard input.
"""
import json
import os
import re
import shutil
import sys

target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/auditledger-target")
deps = os.path.join(target, "debug", "deps")
keep = set()
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact":
        continue
    for path in [msg.get("executable")] + msg.get("filenames", []):
        if path and os.path.exists(path):
            # By inode: a binary target's executable is listed under `debug/`, a hard link
            # to its file in `debug/deps`, which cargo needs to stay fresh.
            st = os.stat(path)
            keep.add((st.st_dev, st.st_ino))
if not keep:
    sys.exit("prune-target: cargo listed no artifacts; nothing deleted")
removed = freed = 0
for name in os.listdir(deps):
    path = os.path.join(deps, name)
    if not re.fullmatch(r".+-[0-9a-f]{16}", name) or not os.path.isfile(path):
        continue
    st = os.stat(path)
    if os.access(path, os.X_OK) and (st.st_dev, st.st_ino) not in keep:
        freed += os.path.getsize(path)
        os.remove(path)
        removed += 1
print(f"prune-target: removed {removed} stale executables ({freed >> 20} MiB) from {deps}")

# Incremental-compilation caches: one directory per crate and metadata hash, so the same change
# of dependencies or features leaves the old ones behind too (8–18 GB of them on 2026-12-07).
# rustc keeps only the newest session inside each directory but never removes a directory.
# A crate's directories that a build still uses are written by the same builds, so they stay
# within minutes of each other; a directory last written more than an hour before the newest
# of its crate belongs to a configuration no build uses any more. Deleting a cache that was
# still wanted costs only a slower next build of that crate.
incremental = os.path.join(target, "debug", "incremental")
newest = {}
dirs = []
if os.path.isdir(incremental):
    for name in os.listdir(incremental):
        path = os.path.join(incremental, name)
        m = re.fullmatch(r"(.+)-[0-9a-z]{13}", name)
        if not m or not os.path.isdir(path):
            continue
        mtime = os.stat(path).st_mtime
        dirs.append((m.group(1), path, mtime))
        newest[m.group(1)] = max(newest.get(m.group(1), 0), mtime)
removed = freed = 0
for crate, path, mtime in dirs:
    if mtime < newest[crate] - 3600:
        for root, _, files in os.walk(path):
            freed += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        shutil.rmtree(path)
        removed += 1
print(f"prune-target: removed {removed} stale incremental caches ({freed >> 20} MiB) from {incremental}")
