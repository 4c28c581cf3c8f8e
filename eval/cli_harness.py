#!/usr/bin/env python3
"""LoCoMo retrieval measured from outside, the way another harness would: each conversation
written as a JSON Lines file, imported with `deep-recall ingest`, and every question of
categories 1-4 asked with `deep-recall --json search` (a new process each, default settings,
top 10). A turn's `dia_id` travels as the message's metadata and comes back on its hit.

Usage (the release binary; the data is not part of this repository):
    python3 eval/cli_harness.py ../shared/data/locomo-dev/locomo-dev.json \
        --bin "$CARGO_TARGET_DIR/release/deep-recall" --models-dir "$DEEP_RECALL_MODELS_DIR"
`--no-captions` leaves photo captions out of the turns, `--same-time` stamps every turn of a
session with the session's time (as a harness that keeps no order within a session would).
Prints one line per conversation and the overall recall@10 and hit@10, which should equal
`deep-recall eval`'s for the same data (eval/README.md): the questions are asked at the same
time (`search --now`, a day after the last turn) and the evidence is read the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

TOP_K = 10
TS = "%Y-%m-%dT%H:%M:%SZ"


def session_time(text: str | None) -> datetime | None:
    """LoCoMo's "1:56 pm on 8 May, 2023", or a day alone ("8 May, 2023", at noon); None when
    missing or unreadable (the turns are then stamped when stored, as `deep-recall eval` does)."""
    normalized = " ".join(
        (text or "").replace(" on ", " ").replace(",", "").upper().split()
    )
    for form, noon in (("%I:%M %p %d %B %Y", False), ("%d %B %Y", True)):
        try:
            at = datetime.strptime(normalized, form)
        except ValueError:
            continue
        return at.replace(hour=12) if noon else at
    return None


def conversation_lines(
    sample: dict[str, Any], captions: bool, same_time: bool
) -> list[dict[str, Any]]:
    conv = sample["conversation"]
    numbers = sorted(
        int(m.group(1)) for k in conv if (m := re.fullmatch(r"session_(\d+)", k))
    )
    lines = []
    for n in numbers:
        start = session_time(conv.get(f"session_{n}_date_time"))
        if start is None:
            print(f"warning: no readable date for session_{n}", file=sys.stderr)
        for j, turn in enumerate(conv[f"session_{n}"]):
            text = turn["text"]
            if captions and turn.get("blip_caption"):
                text += f" [shares a photo: {turn['blip_caption']}]"
            line: dict[str, Any] = {
                "session": f"session_{n}",
                "role": "user" if turn["speaker"] == conv["speaker_a"] else "assistant",
                "content": f"{turn['speaker']}: {text}",
                "metadata": {"dia_id": turn["dia_id"]},
            }
            if start is not None:
                at = start if same_time else start + timedelta(seconds=j)
                line["ts"] = at.strftime(TS)
            lines.append(line)
    return lines


def evidence(question: dict[str, Any], known: set[str]) -> set[str]:
    """The question's evidence turns that name a turn ("D8:6; D9:17" and "D8:6, D9:17" count
    both, as in `deep-recall eval`)."""
    out = set()
    for entry in question.get("evidence", []):
        for e in re.split(r"[;, ]", str(entry)):
            m = re.fullmatch(r"D(\d+):(\d+)", e.strip())
            if m and f"D{int(m[1])}:{int(m[2])}" in known:
                out.add(f"D{int(m[1])}:{int(m[2])}")
    return out


def run(cmd: list[str]) -> Any:
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])}…: exit {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="a LoCoMo-format JSON file")
    p.add_argument("--bin", default="deep-recall", help="the deep-recall binary")
    p.add_argument("--models-dir", help="passed to deep-recall")
    p.add_argument("--samples", nargs="*", help="only these sample ids")
    p.add_argument("--no-captions", action="store_true")
    p.add_argument("--same-time", action="store_true")
    a = p.parse_args()
    base = [a.bin, "--json"] + (["--models-dir", a.models_dir] if a.models_dir else [])
    hits = recall = asked = 0.0
    for sample in json.loads(a.data.read_text()):
        sid = sample["sample_id"]
        if a.samples and sid not in a.samples:
            continue
        lines = conversation_lines(sample, not a.no_captions, a.same_time)
        known = {line["metadata"]["dia_id"] for line in lines}
        # Questions are asked a day after the last turn, as `deep-recall eval` asks them.
        times = [line["ts"] for line in lines if "ts" in line]
        now = (
            [
                "--now",
                (datetime.strptime(max(times), TS) + timedelta(days=1)).strftime(TS),
            ]
            if times
            else []
        )
        with tempfile.TemporaryDirectory() as tmp:
            chat = Path(tmp) / "chat.jsonl"
            chat.write_text("".join(json.dumps(line) + "\n" for line in lines))
            store = base + ["--data-dir", str(Path(tmp) / "data")]
            run(store + ["ingest", "--user", "u", str(chat)])
            s_hits = s_recall = s_n = 0.0
            for q in sample["qa"]:
                ev = evidence(q, known)
                if q.get("category") not in (1, 2, 3, 4) or not ev:
                    continue
                cmd = ["search", "--user", "u", "-k", str(TOP_K), *now, q["question"]]
                found = {h["metadata"].get("dia_id") for h in run(store + cmd)["hits"]}
                s_n += 1
                s_hits += bool(ev & found)
                s_recall += len(ev & found) / len(ev)
        if not s_n:
            print(f"{sid}: no question of categories 1-4 with evidence", flush=True)
            continue
        print(
            f"{sid}: {int(s_n)} questions, recall@{TOP_K} {s_recall / s_n:.3f}, "
            f"hit@{TOP_K} {s_hits / s_n:.3f}",
            flush=True,
        )
        hits, recall, asked = hits + s_hits, recall + s_recall, asked + s_n
    if asked:
        print(
            f"overall: {int(asked)} questions, recall@{TOP_K} {recall / asked:.3f}, "
            f"hit@{TOP_K} {hits / asked:.3f}"
        )


if __name__ == "__main__":
    main()
