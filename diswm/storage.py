"""A run's storage: where its files persist so that every node of the cluster reaches them.

    name = storage_name(run_dir, cfg.runtime.storage)   # the run's folder in the storage
    storage = RunStorage.for_run(cfg.runtime.storage, name)   # None: runtime.storage is unset
    storage.push(work_dir)                           # changed files up (each atomically)
    storage.pull(work_dir)                           # the run's files down (resume, reports)

``runtime.storage`` is a path that every node mounts (NFS, a cluster filesystem) or an fsspec
URI (``file:///shared/runs``, ``s3://bucket/runs`` with s3fs installed, ``memory://`` in one
process), as Ray Train's ``storage_path``. A run keeps its files under ``<storage>/<name>``, the
name made once from the run folder's (``<folder>-<8 hex digits>``) and kept in the run folder's
``storage.json``: the same run folder resumes from the same files, another never sees them.

With a storage set, the learner works in node-local scratch (``$DISWM_SCRATCH``, default
``<tmp>/diswm-scratch``; ``<scratch>/<name>``): it pulls the run's files there when it
starts (a learner that Ray restarts on another node finds its checkpoint) and pushes what changed
after every checkpoint and evaluation. The driver pushes the files it writes (config.yaml,
random.json) before the learner starts and pulls the learner's into the run folder when a
command looks (`cluster status`), at `cluster down` and at the end of `diswm run`. Without a
storage, every role writes the run folder directly: one machine, or a run folder every node
mounts at the same path.

Only run outputs travel: the Redis password, the Ray token and the cluster's state file stay in
the driver's run folder. Nothing read back is unpickled (checkpoints load with weights_only).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path

from diswm.atomic import atomic_write

#: What the driver writes for the learner (pushed before it starts).
DRIVER_FILES = ("config.yaml", "random.json")
#: Never pushed: secrets and the driver's own state.
STORAGE_FILE = "storage.json"
PRIVATE = ("cluster.json", "redis.password", "ray.token", "redis", "prometheus", "pretrain",
           STORAGE_FILE)


def scratch_dir(name: str) -> Path:
    """This node's scratch folder for a run (``$DISWM_SCRATCH/<name>``)."""
    root = os.environ.get("DISWM_SCRATCH") or str(Path(tempfile.gettempdir()) / "diswm-scratch")
    return Path(root) / name


def storage_name(run_dir: str | Path, uri: str) -> str:
    """The run's folder name in the storage `uri`: read from the run folder's storage.json,
    or made (``<folder>-<8 hex digits>``) and recorded there; "" without a storage."""
    if not uri:
        return ""
    path = Path(run_dir) / STORAGE_FILE
    if path.exists():
        record = json.loads(path.read_text())
        if record.get("uri") == uri and record.get("name"):
            return str(record["name"])
    name = f"{Path(run_dir).resolve().name or 'run'}-{secrets.token_hex(4)}"
    atomic_write(path, json.dumps({"uri": uri, "name": name}, indent=2) + "\n")
    return name


class RunStorage:
    """One run's folder in the storage: files by their path relative to the run folder."""

    def __init__(self, uri: str, name: str):
        import fsspec

        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"runtime.storage: bad run name {name!r}")
        try:
            self.fs, root = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as err:  # an unknown protocol, its package missing
            raise ValueError(f"runtime.storage={uri!r}: {err}") from None
        self.uri, self.name = uri, name
        self.root = f"{root.rstrip('/')}/{name}"
        self._pushed: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns)

    @classmethod
    def for_run(cls, uri: str, name: str) -> RunStorage | None:
        return cls(uri, name) if uri else None

    def __repr__(self) -> str:
        return f"RunStorage({self.uri!r} -> {self.root!r})"

    def check(self) -> RunStorage:
        """Create the run's folder in the storage; ValueError naming the URI if that fails (a
        run would otherwise find out at its first checkpoint)."""
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except Exception as err:  # noqa: BLE001 - any backend's failure is one line
            raise ValueError(f"runtime.storage={self.uri!r}: cannot create {self.root} "
                             f"({type(err).__name__}: {err})"[:300]) from None
        return self

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    # -- up ------------------------------------------------------------------------------------
    def put(self, local: Path, rel: str) -> None:
        """Upload one file; readers see the old file or the new one, never a part."""
        target = self._path(rel)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        part = f"{target}.part-{os.getpid()}"
        self.fs.put_file(str(local), part)
        self.fs.mv(part, target)

    def push(self, work_dir: str | Path, names: Iterable[str] | None = None) -> list[str]:
        """Upload the files of `work_dir` (or only `names`, relative paths) that changed since
        this object last pushed them; returns the relative paths uploaded."""
        work_dir = Path(work_dir)
        files = ([work_dir / n for n in names] if names is not None
                 else sorted(p for p in work_dir.rglob("*") if p.is_file()))
        sent = []
        for path in files:
            rel = path.relative_to(work_dir).as_posix()
            if not path.is_file() or rel.split("/", 1)[0] in PRIVATE or ".part-" in rel \
                    or rel.endswith(".tmp"):
                continue
            st = path.stat()
            if self._pushed.get(rel) == (st.st_size, st.st_mtime_ns):
                continue
            self.put(path, rel)
            self._pushed[rel] = (st.st_size, st.st_mtime_ns)
            sent.append(rel)
        return sent

    # -- down ----------------------------------------------------------------------------------
    def files(self) -> dict[str, int]:
        """The run's files in the storage: relative path -> size."""
        if not self.fs.exists(self.root):
            return {}
        prefix = self.root.rstrip("/") + "/"
        return {path[len(prefix):]: int(info.get("size") or 0)
                for path, info in self.fs.find(self.root, detail=True).items()
                if path.startswith(prefix) and ".part-" not in path}

    def pull(self, work_dir: str | Path, *, skip: tuple[str, ...] = ()) -> list[str]:
        """Download the run's files into `work_dir` where they are missing or differ in size
        (each atomically: written beside, then renamed); `skip` leaves out relative paths that
        start with one of its prefixes. Returns the relative paths downloaded."""
        work_dir = Path(work_dir)
        got = []
        for rel, size in sorted(self.files().items()):
            if rel.startswith(skip) or rel.split("/", 1)[0] in PRIVATE:
                continue
            local = work_dir / rel
            if local.is_file() and local.stat().st_size == size and _append_only(rel):
                continue  # the rest may be rewritten at the same size: always fetched
            local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            part = local.with_name(f"{local.name}.part-{os.getpid()}")
            self.fs.get_file(self._path(rel), str(part))
            os.replace(part, local)
            st = local.stat()
            self._pushed[rel] = (st.st_size, st.st_mtime_ns)  # what we hold is what is stored
            got.append(rel)
        return got


def _append_only(rel: str) -> bool:
    """The run's CSVs only grow, so an equal size means the same file; a checkpoint or an
    image can be rewritten at the same size."""
    return rel.endswith(".csv")
