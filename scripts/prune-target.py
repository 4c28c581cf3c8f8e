#!/usr/bin/env python3
"""Prunes a shared cargo target directory of stale workspace artifacts.

Every CI run builds a fresh clone in a new directory, so the workspace's own crates, test
binaries and fuzz targets get new hashes (and new incremental-compilation directories) each
time, and the shared target directory grows by several GB a run. This keeps the newest two of
each workspace artifact (and incremental directory) and removes the rest; compiled
dependencies (which keep their hashes) are left alone.

    python3 scripts/prune-target.py "$CARGO_TARGET_DIR"
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import sys

# The workspace's crates and the names of its test, bench and fuzz binaries.
WORKSPACE = re.compile(
    r"^(lib)?(recall_\w+|deep_recall|it|graphql|ingest|rest_bodies|model_files|embed|"
    r"retrieval|store|llm|load|bindings|deep_memory|matmul|int8|encryption|hnsw_recall|"
    r"scan_recall|sgemm|grouped|attention|math)-[0-9a-f]{16}(\..*)?$"
)
KEEP = 2


def remove(path: str) -> int:
    """Deletes a file or directory; returns the bytes freed."""
    if os.path.isdir(path):
        size = sum(
            os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(path)
            for f in files
        )
        shutil.rmtree(path, ignore_errors=True)
        return size
    size = os.path.getsize(path)
    os.remove(path)
    return size


def prune(directory: str, key: re.Pattern[str] | None) -> int:
    """Keeps the newest KEEP entries of each group in `directory`; returns bytes freed."""
    if not os.path.isdir(directory):
        return 0
    groups: dict[tuple[str, ...], list[tuple[float, str]]] = collections.defaultdict(
        list
    )
    for name in os.listdir(directory):
        if key is None:
            group: tuple[str, ...] = (name.rsplit("-", 1)[0],)
        else:
            m = key.match(name)
            if m is None:
                continue
            group = (m.group(1) or "", m.group(2), m.group(3) or "")
        path = os.path.join(directory, name)
        groups[group].append((os.path.getmtime(path), path))
    freed = 0
    for entries in groups.values():
        entries.sort(reverse=True)
        for _, path in entries[KEEP:]:
            try:
                freed += remove(path)
            except OSError as e:
                print(f"prune-target: kept {path}: {e}", file=sys.stderr)
    return freed


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "target"
    freed = 0
    for root, dirs, _ in os.walk(target):
        if os.path.basename(root) == "deps":
            freed += prune(root, WORKSPACE)
            dirs.clear()
        elif os.path.basename(root) == "incremental":
            freed += prune(root, None)
            dirs.clear()
    print(f"prune-target: freed {freed / 1e9:.1f} GB in {target}")


if __name__ == "__main__":
    main()
