"""Run folders on a local disk or in cloud storage (``gs://bucket/runs/...``). Every file of a
run (checkpoints, experiment.json, metrics.jsonl, evaluations, the best checkpoint) goes
through ``etils.epath``, the path type orbax uses, so one code path serves both."""

from __future__ import annotations

import importlib.util
import os
import pathlib

from etils import epath


def run_path(workdir: str | os.PathLike) -> epath.Path:
    """``workdir`` as an ``epath.Path``: a URL (``gs://...``) as given, a local path made
    absolute (orbax refuses relative checkpoint paths)."""
    text = os.fspath(workdir)
    if is_remote(text):
        _check_client(text)
        return epath.Path(text)
    return epath.Path(pathlib.Path(text).expanduser().absolute())


def _check_client(url: str) -> None:
    """A gs:// folder needs a client behind epath: gcsfs (or TensorFlow's gfile, which epath
    prefers when it is installed). Said up front, rather than as an import error mid-run."""
    if url.startswith("gs://") and not any(importlib.util.find_spec(name)
                                           for name in ("gcsfs", "tensorflow")):
        raise ValueError(f"{url}: a gs:// run folder needs gcsfs (pip install gcsfs; "
                         "experiments/tpu/setup.sh installs it on TPU VMs)")


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` names cloud storage (``gs://``, ``s3://``...) rather than a local
    disk. Object stores cannot append to a file or rename one atomically."""
    return "://" in os.fspath(path)


def write_text(path: epath.Path, text: str) -> None:
    """Replace ``path``'s contents as a whole: a reader, or a process killed midway, sees
    the old file or the new one, never a part. On a disk: a temporary file renamed over it;
    in an object store: one upload (an object appears only once its upload completes)."""
    path = epath.Path(path)
    if is_remote(path):
        path.write_text(text)
        return
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def read_text(path: epath.Path) -> str | None:
    """``path``'s text, or None if there is no such file."""
    path = epath.Path(path)
    return path.read_text() if path.is_file() else None


def upload_folder(source: pathlib.Path, destination: epath.Path) -> None:
    """Copy the local folder ``source`` (nested files too) to ``destination`` in cloud
    storage, replacing what was there. An object store cannot rename a folder atomically:
    a run killed midway leaves a partial folder, which the run's next start replaces (a
    file written after the upload, such as eval.json, marks it complete)."""
    destination = epath.Path(destination)
    if destination.exists():
        destination.rmtree()
    for file in sorted(path for path in pathlib.Path(source).rglob("*") if path.is_file()):
        target = destination / file.relative_to(source).as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.read_bytes())
