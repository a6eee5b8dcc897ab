"""OUT/manifest.jsonl of a sample run: one JSON record appended per output written. Read here only,
for the run that resumes from it and for the explorer page that shows it."""

import json

from .atomic import Folder

MANIFEST = "manifest.jsonl"


def read_manifest(folder: Folder) -> tuple[list[dict], int]:
    """The records of `folder`'s manifest in order, and the bytes of a torn last line cut off (see
    `Folder.read_lines`). Lines that are not records with an output name (cut by a full disk, glued
    together by an older version, edited by hand) are skipped: their outputs count as unrecorded."""
    lines, torn = folder.read_lines(MANIFEST)
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("output"), str):
            records.append(record)
    return records, torn
