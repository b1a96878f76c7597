"""Atomic writes, run folders, manifests and bundle files (``lorafit.json``).

Every file is written to a temporary name in the same folder and renamed, so a killed process leaves the
old file or the new one, never half of one. A run's ``lorafit.json`` is its manifest (sha256 of every file);
a loadable folder's ``lorafit.json`` (adapter/, merged/, export/) also says what it holds and how to load it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lorafit.errors import LorafitError

MANIFEST = "lorafit.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_beside(out: Path) -> Path:
    """A temporary folder next to ``out`` (same file system, so it can be renamed into place), with the
    permissions a normal folder gets (mkdtemp's are 0700)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; artefacts get the usual permissions
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set):
        return sorted(obj)
    return str(obj)


# ---- run folders -------------------------------------------------------------------------------------
def prepare_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing non-empty folder unless ``overwrite``; never delete a folder lorafit did not write."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise LorafitError("E301", path=p)
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            raise LorafitError("E301", path=p)
        if not ((p / MANIFEST).exists() or (p / "config.yaml").exists()):
            raise LorafitError("E302", path=p, reason="--overwrite only replaces lorafit run folders (no lorafit.json "
                               "or config.yaml there), so it was left untouched")
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def file_hashes(folder: str | Path, skip: Iterable[str] = (MANIFEST,)) -> dict[str, str]:
    from lorafit.modeling import sha256_file

    root = Path(folder)
    skipped = set(skip)
    out = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and rel not in skipped and not f.name.startswith(".") and not f.name.endswith(".tmp"):
            out[rel] = sha256_file(f)
    return out


def write_manifest(folder: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``lorafit.json`` with ``meta`` and the sha256 of every other file in the folder."""
    from lorafit import __version__

    data = dict(meta)
    data["lorafit_version"] = __version__
    data["files"] = file_hashes(folder)
    write_json(Path(folder) / MANIFEST, data)
    return data


def read_manifest(folder: str | Path) -> dict[str, Any]:
    p = Path(folder)
    if not p.is_dir():
        raise LorafitError("E302", path=p, reason="no such folder")
    m = p / MANIFEST
    if not m.is_file():
        raise LorafitError("E302", path=p, reason=f"it has no {MANIFEST}")
    try:
        data = read_json(m)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LorafitError("E302", path=p, reason=f"{MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or "kind" not in data:
        raise LorafitError("E302", path=p, reason=f"{MANIFEST} has no 'kind'")
    return data


def verify_manifest(folder: str | Path) -> list[str]:
    """Problems found: files missing, changed, or not in the manifest. Empty when the folder is intact."""
    root = Path(folder)
    manifest = read_manifest(root)
    recorded: dict[str, str] = manifest.get("files", {})
    actual = file_hashes(root)
    problems = []
    for rel, digest in recorded.items():
        if rel not in actual:
            problems.append(f"missing: {rel}")
        elif actual[rel] != digest:
            problems.append(f"changed: {rel} (sha256 {actual[rel][:12]}..., manifest {digest[:12]}...)")
    nested = {f.parent.relative_to(root).as_posix() + "/" for f in root.glob("*/" + MANIFEST)}
    for rel in actual:
        if rel not in recorded and not any(rel.startswith(n) for n in nested):
            problems.append(f"not in manifest: {rel}")  # bundles written later (merged/) are checked on their own
    return problems
