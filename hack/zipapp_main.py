"""kubectl-cedana as one file: run it with python3 >= 3.9; everything else is inside.

Python compiles every module it imports from a zip archive again at each run (zipimport keeps
no bytecode): about 0.25 s of every command. So the first run unpacks the archive into
$XDG_CACHE_HOME/kubectl-cedana/zipapp-BUILD (~/.cache when unset), a directory only this user
may change, and every run imports from there, where Python keeps the compiled modules.
Anything unusual (no home, a cache another user could write, a full disk,
KUBECTL_CEDANA_NO_CACHE=1) runs from the archive itself, as before.

This file is the zipapp's __main__.py: hack/dist.py fills MIN_PYTHON and BUILD (a digest of
every other entry). It must parse on old Pythons, to tell them what is needed.
"""
import sys

MIN_PYTHON = (3, 9)
BUILD = "dev"
KEEP_UNUSED_DAYS = 30  # an unpacked build no run used for this long is removed
STALE_UNPACK_S = 3600  # an unpack a killed run left half done

if sys.version_info < MIN_PYTHON:
    # %-formatting: any Python 3 parses it
    message = "error: kubectl-cedana needs python3 >= %d.%d (this is %d.%d)\n"
    sys.stderr.write(message % (MIN_PYTHON + tuple(sys.version_info[:2])))
    sys.exit(1)

import os  # noqa: E402 - after the version check, which must run on any Python
import stat  # noqa: E402


def _ours(path: str, allow_sticky: bool = False,
          allow_root: bool = False) -> "os.stat_result | None":
    """path's lstat when it is a real directory (not a link) owned by us that no one else may
    write; else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    if st.st_uid != os.geteuid() and not (allow_root and st.st_uid == 0):
        return None
    if st.st_mode & 0o022 and not (allow_sticky and st.st_mode & stat.S_ISVTX):
        return None
    return st


def _cache_root() -> "str | None":
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home) or not os.path.isdir(home):
            return None  # no home: nothing is created for it
        if os.stat(home).st_uid != os.geteuid():
            return None  # another user's home (sudo keeps HOME): leave it as it is
        base = os.path.join(home, ".cache")
    root = os.path.join(base, "kubectl-cedana")
    if not os.path.isdir(root):  # created once; every later run only looks
        try:
            os.makedirs(base, mode=0o700, exist_ok=True)
            os.makedirs(root, mode=0o700, exist_ok=True)
        except OSError:
            return None
    # another user who could rename or replace our directory could make us import their code
    if _ours(base, allow_sticky=True, allow_root=True) is None or _ours(root) is None:
        return None
    return root


def _forget_old(root: str, keep: str) -> None:
    import shutil
    import time
    now = time.time()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if path == keep:
            continue
        try:
            age = now - os.lstat(path).st_mtime
        except OSError:
            continue
        if (name.startswith("zipapp-") and age > KEEP_UNUSED_DAYS * 86400) or \
                (name.startswith(".unpack-") and age > STALE_UNPACK_S):
            shutil.rmtree(path, ignore_errors=True)


def _unpacked(archive: str) -> "str | None":
    """The directory this archive is unpacked in, unpacked now if need be; None: run from the
    archive."""
    import time
    if os.environ.get("KUBECTL_CEDANA_NO_CACHE") or BUILD == "dev":
        return None
    root = _cache_root()
    if root is None:
        return None
    target = os.path.join(root, "zipapp-" + BUILD)
    found = _ours(target)
    if found is not None:
        if time.time() - found.st_mtime > 86400:  # used: not removed as unused (a write a day)
            try:
                os.utime(target)
            except OSError:
                pass
        return target
    import shutil
    import tempfile
    import zipfile
    try:
        scratch = tempfile.mkdtemp(prefix=".unpack-", dir=root)
    except OSError:
        return None
    try:
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                if name != "__main__.py":
                    zipped.extract(name, scratch)
        try:  # complete, so it appears whole or not at all
            os.rename(scratch, target)
        except OSError:  # another run put its own there first: the same bytes
            shutil.rmtree(scratch, ignore_errors=True)
    except Exception:  # noqa: BLE001 - a full disk, a broken archive: the archive still runs
        shutil.rmtree(scratch, ignore_errors=True)
        return None
    _forget_old(root, target)
    return target if _ours(target) is not None else None


def _start() -> None:
    archive = os.path.dirname(os.path.abspath(__file__))
    unpacked = _unpacked(archive)
    if unpacked is not None:
        sys.path.insert(0, unpacked)
    from kubectl_cedana.cli import main
    main()


if __name__ == "__main__":
    _start()
