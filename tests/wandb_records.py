"""Read the records of an offline W&B run (``<dir>/offline-run-*/run-<id>.wandb``) in tests.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0) then
LevelDB-style 32 KiB blocks of records (checksum, length, type: full/first/middle/last), each a
serialised ``wandb_internal_pb2.Record``. wandb 0.31 ships the protobuf classes but no reader.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7


def _payloads(data: bytes):
    ident = struct.unpack("<4sHB", data[:_HEADER])[0]
    assert ident == b":W&B", f"not a W&B transaction log (header {ident!r})"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:
            break
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def _name(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_folder: Path) -> dict[str, Any]:
    """``{'id', 'group', 'job_type', 'name', 'config', 'summary', 'history_keys', 'exit_code'}`` of
    one offline run folder (config and summary values decoded from JSON)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = Path(run_folder).glob("run-*.wandb")
    out: dict[str, Any] = {"config": {}, "summary": {}, "history_keys": set(), "exit_code": None}
    for payload in _payloads(log.read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(id=run.run_id, group=run.run_group, job_type=run.job_type)
            out["name"] = run.display_name
            for item in run.config.update:
                out["config"][_name(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][_name(item)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][_name(item)] = json.loads(item.value_json)
        elif kind == "history":
            out["history_keys"].update(_name(item) for item in record.history.item)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def offline_runs(wandb_dir: Path) -> list[dict[str, Any]]:
    """Every offline run under ``wandb_dir`` (a run folder's ``wandb/``), oldest first."""
    return [read_run(p) for p in sorted(Path(wandb_dir).glob("offline-run-*"))]
