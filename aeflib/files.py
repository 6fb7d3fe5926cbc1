"""Small file and network helpers every aeflib module shares: atomic writes, plain-JSON values, the hub probe.

``atomic_file(path)``      -> temporary path next to ``path``; renamed onto it when the block succeeds
``atomic_folder(target)``  -> temporary folder next to ``target``; renamed (or swapped) into place on success
``write_text(path, text)`` -> ``path``, written atomically
``jsonable(value, name)``  -> ``value`` as plain JSON (``to_dict`` objects, tensors, paths converted)
``hub_unreachable_reason()`` -> why the Hugging Face hub cannot be reached now, or ``None``

A reader never sees a half-written file or folder: everything is written to a hidden temporary sibling and
renamed (``os.replace`` is atomic within one file system; known failures 1 and 4). A temporary folder's name records
its writer (``.<target>.tmp-<host>-<pid>-<random>``), so a folder left by a killed process (a notebook kernel killed
during a save leaves hundreds of MB) is removed by the next ``atomic_folder`` for the same target once that process
is gone, and a concurrent writer's folder is never touched. This module imports nothing from aeflib, so every module
can use it.

Source: [ours].
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["atomic_file", "atomic_folder", "hub_unreachable_reason", "jsonable", "umask", "write_text"]

log = logging.getLogger(__name__)


def umask() -> int:
    """The process umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``, on any exception it is removed.

    The folder is created if missing; the file gets the permissions of an ordinary new file (not mkstemp's 0600).

    Example: ``with atomic_file("a.json") as tmp: tmp.write_text("{}")``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _host_tag() -> str:
    """This machine's name as letters and digits only (a temporary name's ``<host>`` part)."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a process of another user counts as alive)."""
    if pid <= 0:
        return True  # not a real owner: never treat it as gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _remove_stale(target: Path) -> None:
    """Remove temporary folders that a killed ``atomic_folder(target)`` of this machine left next to ``target``.

    Only names of the exact form ``.<target name>.tmp-<host>-<pid>-<random>`` (or ``.old-``, the previous folder
    of an interrupted swap) whose ``<host>`` is this machine and whose process ``<pid>`` no longer exists are
    touched. A stale ``.old-`` folder is the previous checkpoint: it is removed only when ``target`` exists, and
    renamed back to ``target`` when the swap was interrupted before the new folder took its place.
    """
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-{_host_tag()}-(\d+)-[0-9a-z_]+")
    try:
        siblings = sorted(target.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        m = pattern.fullmatch(path.name)
        if m is None or not path.is_dir() or path.is_symlink() or _pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not (target.exists() or target.is_symlink()):
            log.warning("restoring %s from %s, left by an interrupted replace (process %s)", target, path.name,
                        m.group(2))
            os.replace(path, target)
            continue
        log.info("removing %s, left by a killed save (process %s is gone)", path, m.group(2))
        shutil.rmtree(path, ignore_errors=True)


def _temp_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{_host_tag()}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, overwrite: bool = False,
                  replaceable: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``target``; on success rename it to ``target`` (swap if replacing).

    On any exception the temporary folder is removed and ``target`` is left as it was. Temporary folders that an
    earlier, killed writer of the same ``target`` on this machine left behind are removed first (see the module
    docstring); those of a writer that still runs are left alone.

    Args:
        target: The folder to create.
        overwrite: Replace an existing ``target`` (write new, swap, delete old).
        replaceable: When given, only an empty folder or one holding one of these file names is replaced (so that
            a typo cannot delete an unrelated folder).

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is false, or it is not a folder ``replaceable``
            allows replacing. Also (an ``OSError``) when another process created ``target`` meanwhile.

    Source: [ours]; stale-folder removal [field] (a kernel killed during a save).
    """
    target = Path(target)
    if target.parent.is_dir():
        _remove_stale(target)
    replacing = target.exists() or target.is_symlink()
    if replacing:
        if not overwrite:
            raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
        if not target.is_dir() or target.is_symlink() or (
                replaceable and any(target.iterdir()) and not any((target / f).is_file() for f in replaceable)):
            raise FileExistsError(f"refusing to replace {target}: it is not a checkpoint folder (no "
                                  f"{' or '.join(replaceable)}); remove it yourself or choose another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target, "tmp"), dir=target.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; the final folder should look like any other
    try:
        yield tmp
        if not replacing:
            os.replace(tmp, target)
            return
        old = target.with_name(f"{_temp_prefix(target, 'old')}{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def jsonable(value: Any, name: str = "value") -> Any:
    """``value`` as plain JSON, with dict keys as strings.

    Objects with ``to_dict`` (results, plans), tensors and numpy values (``tolist``), tuples and paths are converted.

    Raises:
        TypeError: A value JSON cannot hold, naming where it sits (``name.key[index]``).
    """
    value = value.to_dict() if hasattr(value, "to_dict") else value
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # torch / numpy tensors and scalars
        return value.tolist()
    try:
        json.dumps(value)
    except TypeError as err:
        raise TypeError(f"{name} is not JSON-serialisable ({err}); pass plain numbers, strings, lists and dicts") \
            from err
    return value


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")


def hub_unreachable_reason(offline_vars: Sequence[str] = ("HF_HUB_OFFLINE",), endpoint: str | None = None,
                           timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached now, or ``None``; fails within ``timeout`` seconds.

    Checks, in order: an offline switch among ``offline_vars`` that is set (``"HF_HUB_OFFLINE=1"``); a proxy
    (``HTTPS_PROXY``/``ALL_PROXY``: the proxy decides, ``None``); a TCP connection to the hub host on port 443.

    Args:
        offline_vars: Environment variables that mean "offline" for the caller (datasets: ``HF_DATASETS_OFFLINE``).
        endpoint: Hub URL; default ``HF_ENDPOINT`` or ``https://huggingface.co``.
        timeout: Seconds the TCP probe may take.
    """
    for var in offline_vars:
        if _truthy(var):
            return f"{var}={os.environ[var]}"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    try:
        socket.create_connection((host, url.port or 443), timeout=timeout).close()
    except OSError as err:
        return f"cannot connect to {host}: {err}"
    return None
