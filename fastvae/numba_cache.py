"""Where Numba keeps fastvae's compiled kernels (`cache=True`): fastvae's cache folder (user_folder()/numba), else
Numba's own choice, or a private folder of this user's in the temporary directory where Numba has none, or nowhere
(compiled in every process) where there is none either.

Numba caches a module's functions beside its source (__pycache__, when that folder is writable) or in the user's
cache folder (~/.cache/numba, when writable), or where NUMBA_CACHE_DIR says. fastvae's functions go to its own
folder first (after NUMBA_CACHE_DIR): files Numba wrote into an installed package outlived `pip uninstall`, and the
folder they kept let `import fastvae` succeed afterwards as a namespace package.

A read-only install in a container whose home is read-only too has none of them, and there every
`@njit(cache=True)` raised RuntimeError ("no locator available") at `import fastvae` (a fresh user's trial). There the
kernels are cached in private_folder() instead (per user; compiled once per boot, as after an install). Numba's cache
index keys every entry by the CPU's name and features, so a folder shared by machines never hands one CPU's code to
another.

That folder is made by this user, mode 0700, and used only while it is this user's and open to no one else: Numba
loads its index files with pickle, so a folder of a guessable name in a shared /tmp that another user made first let
that user run code as this one (a fresh user's trial planted an index that ran `id`; another user's folder of mode
0755 stopped `import fastvae` with RuntimeError). Where the folder is someone else's, a fresh private one serves the
process (removed at exit); where no temporary folder can be written at all (nor is the working directory taken, as
Python's tempfile would: the trial found a 3.4 MB cache left where the user stood), fastvae's functions are compiled
in memory in every process (`nowhere()`; the command line says so).

Numba checks a cached function against its own source file only: a kernel that calls another module's jitted
function (cpu_bf16's dense_forward calls cpu's bias-and-activation pass) kept running the old callee after that
module was edited (a contributor's trial: "max abs error nan" from a cache, not from the edit; the same after a
`git pull` into an editable install). key_caches_by_package adds to every fastvae function's stamp a digest of the
package's Numba sources, so an edit of any of them recompiles them all.

Each installed location's kernels are a subfolder of numba/ that records its source folder (ORIGIN); the subfolders
of installs removed and unused for UNUSED_DAYS are removed, and those without a record unchanged for UNRECORDED_DAYS
(prune_removed_installs).
"""
import atexit
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from . import numba_signals
from .tempfiles import new_temporary


def _probe():
    """(a function for Numba's locators to place, as they would any of this package's)"""


def _temporary_folders() -> list[str]:
    """Where a private folder may be made: $TMPDIR, $TEMP, $TMP, then the system's (tempfile's list without the
    working directory, where a cache would be left without a word), then $XDG_RUNTIME_DIR and /dev/shm."""
    named = [os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")]
    return [d for d in (*named, "/tmp", "/var/tmp", "/usr/tmp", os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm") if d]


def _yours(folder: Path) -> bool:
    """A real folder (not a link) of this user's that no one else may write to, and this user may. (Its group may
    not write it either, whatever the group: fastvae makes its own folders with mode 0700, and only the folders above
    them get the user-private-group rule of _held_by_trusted_hands.)"""
    st = os.lstat(folder)
    mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return stat.S_ISDIR(st.st_mode) and mine and not st.st_mode & 0o022 and os.access(folder, os.W_OK | os.X_OK)


def _open_to_others(st: os.stat_result, folder: Path) -> bool:
    """Whether someone other than the owner of `folder` (stat `st`) and root may write in it: it is world-writable,
    or writable by a group that is not its owner's private group, or group-writable with an ACL (whose mask the
    group bits then are: a named user's or group's write showed as 0770, and a review planted an index so). Umask
    002 with user private groups (the default of Debian's and Ubuntu's logins) makes folders group-writable,
    ~/.cache included, for a group whose only member is the user; refusing those sent such users' kernels to the
    temporary folder, compiled again after every boot. The rule is Debian OpenSSH's for ~/.ssh (its
    user-group-modes patch), with the user-private-group naming convention required too."""
    if st.st_mode & 0o002:
        return True
    return bool(st.st_mode & 0o020) and (not _private_group(st.st_uid, st.st_gid) or _may_have_acl(folder))


def _may_have_acl(folder: Path) -> bool:
    """Whether `folder` carries an access ACL (POSIX or NFSv4), or whether that cannot be told (no listxattr on this
    system, or it failed for another reason than a file system without extended attributes)."""
    if not hasattr(os, "listxattr"):
        return True
    try:
        names = os.listxattr(folder)
    except OSError as e:
        return e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP)
    return any(name in ("system.posix_acl_access", "system.nfs4_acl") for name in names)


@lru_cache(maxsize=None)
def _private_group(uid: int, gid: int) -> bool:
    """Whether group `gid` is user `uid`'s private group with no other member: the user's primary group, of the
    user's name, no other account's primary group, and listing no member but the user in any entry of that number
    (as Debian OpenSSH's secure_permissions, with the naming convention of user private groups required, since
    account databases that are not enumerated (LDAP, SSSD) may hide members). Read once a process; False where the
    system has no such databases (then a group-writable folder is refused, as before)."""
    try:
        import grp
        import pwd
        owner = pwd.getpwuid(uid)
        entries = [group for group in grp.getgrall() if group.gr_gid == gid] or [grp.getgrgid(gid)]
        primary = {user.pw_uid for user in pwd.getpwall() if user.pw_gid == gid}
    except (ImportError, KeyError, OSError):
        return False
    listed = {name for group in entries for name in group.gr_mem}
    return (owner.pw_gid == gid and all(group.gr_name == owner.pw_name for group in entries)
            and primary <= {uid} and listed <= {owner.pw_name})


def _held_by_trusted_hands(base: Path) -> bool:
    """Whether no other user can rename or replace a folder made in `base`: `base` and every folder above it belong
    to this user or root and are writable by no one else, or carry the sticky bit (/tmp: only a file's owner may
    rename it). A checked folder is used by its path: in a world-writable TMPDIR without the sticky bit, another user
    renamed the checked one away and put a planted one at its name before Numba read it (a fresh user's trial ran
    `id` so)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        real = Path(os.path.realpath(base))
        for folder in (real, *real.parents):
            st = os.stat(folder)
            if uid is not None and st.st_uid not in (0, uid):
                return False
            if _open_to_others(st, folder) and not st.st_mode & stat.S_ISVTX:
                return False
    except OSError:
        return False
    return True


# where private_folder() found the shared name taken (someone else's, or open to others): said by the tools' notes
_TAKEN: list[str] = []


@lru_cache(maxsize=None)
def private_folder() -> Path | None:
    """This user's folder for fastvae's caches where the usual places cannot be written: `fastvae-<uid>` in the
    first temporary folder that takes it and that only this user and root control (_held_by_trusted_hands; made with
    mode 0700; used only while _yours), or, where that name is taken by someone else's, a fresh private folder beside
    it for this process, removed at exit (taken() says so); None where no temporary folder serves. Once a process."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    for base in _temporary_folders():
        base = os.path.realpath(base)       # (used as resolved: a link on the way could be swapped after the check)
        if not _held_by_trusted_hands(Path(base)):
            continue
        folder = Path(base) / f"fastvae-{uid}"
        try:
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                pass
            if _yours(folder):
                return folder
            fresh = Path(tempfile.mkdtemp(prefix=f"fastvae-{uid}-", dir=base))     # (mode 0700)
        except OSError:
            continue                        # unwritable, gone, or not a folder: the next place
        _TAKEN.append(str(folder))
        atexit.register(shutil.rmtree, fresh, ignore_errors=True)
        return fresh
    return None


def passed_over() -> str | None:
    """FASTVAE_CACHE_DIR where it is set and its numba/ cannot be used (not writable, or others could write into it
    or above it): the tools say so (it was passed over without a word: a new user's trial); else None."""
    chosen = os.environ.get("FASTVAE_CACHE_DIR")
    return chosen if chosen and own_folder("numba") is None else None


def taken() -> str | None:
    """The shared folder name private_folder() found taken by someone else's (or a folder open to others), so that
    this process keeps its compiled kernels for itself only (compiled again in every run), or None."""
    return _TAKEN[0] if _TAKEN else None


def needs_fallback(source: str | Path = __file__) -> bool:
    """Whether Numba finds no place to cache functions defined in `source` (a .py file), with the environment as it
    is now; False where NUMBA_CACHE_DIR is set, and where Numba's internals are not as this reads them (then Numba
    decides, as it would without fastvae)."""
    try:
        from numba.core import caching, config
        if getattr(config, "CACHE_DIR"):        # (numba.core.config sets its names at run time)
            return False
        # fastvae's own folder places them (its locator is installed after this is asked: a writable
        # FASTVAE_CACHE_DIR was passed over for the private temporary folder, a review's catch)
        if os.path.abspath(source).startswith(str(Path(__file__).resolve().parent) + os.sep) and \
                own_folder("numba") is not None:
            return False
        impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
        return all(locator.from_function(_probe, str(source)) is None for locator in impl._locator_classes
                   if not _in_tree(locator))
    except Exception:  # noqa: BLE001  (another Numba: its own behaviour)
        return False


def ensure_a_place() -> Path | None:
    """Points Numba's cache at private_folder()/numba where it has no place of its own for this package (the folder
    returned); where there is no private folder either, fastvae's functions are compiled without a cache (None, and
    nowhere() is True); else changes nothing (None). Called by setup(), before any kernel is defined."""
    if not needs_fallback():
        return None
    folder = private_folder()
    if folder is None:
        _NOWHERE.append(_compile_without_a_cache())
        return None
    from numba.core import config
    setattr(config, "CACHE_DIR", str(folder / "numba"))
    return folder / "numba"


_NOWHERE: list[bool] = []


def nowhere() -> bool:
    """True where fastvae's compiled kernels are kept nowhere (ensure_a_place found no folder): every process
    compiles them again (20-40 s before the first steps). Sets the cache up first (setup()), as the first kernel
    module would: asked before any was imported, it answered False (the command line's note went missing so)."""
    setup()
    return any(_NOWHERE)


def _compile_without_a_cache() -> bool:
    """fastvae's functions get Numba's NullCache (what a function without cache=True has) instead of a cache no
    locator can place (RuntimeError at their definition); others are left to Numba. False where Numba's internals
    are not as this reads them."""
    try:
        from numba.core import caching, ccallback, dispatcher
        root = str(Path(__file__).resolve().parent) + os.sep
        for cls, attribute in ((dispatcher.Dispatcher, "py_func"), (ccallback.CFunc, "_pyfunc")):
            def enable_caching(self, _enable=cls.enable_caching, _attribute=attribute):
                code = getattr(self, _attribute).__code__
                if os.path.abspath(code.co_filename).startswith(root):
                    self._cache = caching.NullCache()
                else:
                    _enable(self)
            setattr(cls, "enable_caching", enable_caching)
        return True
    except Exception:  # noqa: BLE001  (another Numba: its own behaviour)
        return False


_SET_UP: list[bool] = []


def setup() -> None:
    """ensure_a_place(), key_caches_by_package() and numba_signals.install(), once a process: called at the top of every fastvae module that
    defines cached Numba functions (backends/__init__.py, for all of backends/; barrier.py; tests/test_packaging.py
    holds every module to it), before the first one is defined, and not by `import fastvae`, which loads neither
    NumPy nor Numba (the tools' --help and --version, and a Ctrl-C in their first moments, need neither)."""
    if not _SET_UP:
        ensure_a_place()            # a read-only install without a cache folder
        key_caches_by_package()     # an edit of one kernel module recompiles the kernels that call it
        numba_signals.install()     # a signal handler's exception waits for Numba's compiler lock to be free
        _SET_UP.append(True)


@lru_cache(maxsize=None)
def package_stamp(root: str) -> str:
    """A digest of the path, size and modification time of every .py file under `root` that uses Numba or llvmlite
    (read once a process: an edit takes effect in the next one, as Numba's own stamps do)."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*.py")):
        try:
            text = path.read_text(errors="replace")
            st = path.stat()
        except OSError:
            continue
        if "numba" in text or "llvmlite" in text:
            digest.update(f"{path.relative_to(root)}:{st.st_mtime_ns}:{st.st_size};".encode())
    return digest.hexdigest()


def user_folder() -> Path:
    """fastvae's own cache folder: $FASTVAE_CACHE_DIR, else $XDG_CACHE_HOME/fastvae, else ~/.cache/fastvae (a leading ~
    expanded; read at each call). It holds the compiled kernels (numba/, one subfolder per installed location of the
    package) and the captured step's replays (replays/, backends/capture.py)."""
    return Path(os.path.expanduser(os.environ.get("FASTVAE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "fastvae")))


def own_folder(sub: str) -> Path | None:
    """user_folder()/sub (numba/: the kernels; replays/: the captured step's modules), made with mode 0700 where
    missing, where it may hold what fastvae loads from it: this user's, open to no one else, in folders only this
    user and root control (_yours, _held_by_trusted_hands); else None (then Numba's own places or the private
    folder serve). Numba unpickles its index files and fastvae imports the replays, so a FASTVAE_CACHE_DIR in a
    folder others could write let them run code as this user (a security review planted an index that ran `id`)."""
    return checked_folder(str(user_folder() / sub))


@lru_cache(maxsize=None)
def checked_folder(path: str) -> Path | None:
    """The folder at `path`, made with mode 0700 (its parents too) where missing, where it is this user's alone in
    folders only this user and root control; else None. Once a process per path."""
    folder = Path(path)
    try:
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        # the folder as resolved, checked and used so: the path as typed may pass through a link in a folder others
        # can write, which they could swap after the check (a re-review's catch)
        real = Path(os.path.realpath(folder))
        if _yours(real) and _held_by_trusted_hands(real):
            return real
    except OSError:
        pass
    return None


def _user_folder_init(self, py_func, py_file):
    """(a locator's __init__: Numba's user-wide locator, pointed at user_folder()/numba instead of ~/.cache/numba)"""
    self._py_file = py_file
    self._lineno = py_func.__code__.co_firstlineno
    folder = own_folder("numba") or user_folder() / "numba"
    self._cache_path = os.path.join(folder, self.get_suitable_cache_subpath(py_file))
    _keep_track(Path(folder), Path(self._cache_path), os.path.dirname(os.path.abspath(py_file)))


# Each subfolder of numba/ holds the kernels of one installed location of the package (Numba names it after a
# digest of the source folder's path: 3-20 MB each). A file in it names that folder, touched by every process that
# uses it, so the subfolders of installs since removed (pip uninstall, a deleted venv or clone) are removed too once
# unused for a week: they were never used again, and a developer's ~/.cache/fastvae/numba had grown to 150 MB over 20
# of them. (The week spares a cache shared with a container that sees another file system: what one of them cannot
# see, the other may still use.)
ORIGIN = "origin.txt"
UNUSED_DAYS = 7
# a subfolder without ORIGIN is one no process of this version has used (each use writes one): one whose files have
# not changed for this long is of an install removed, or of an older fastvae unused as long (it compiles again)
UNRECORDED_DAYS = 30
_TRACKED: set[Path] = set()


def _keep_track(numba: Path, sub: Path, source: str) -> None:
    """Once a process per subfolder: `sub` (made where missing) names its source folder in ORIGIN, and, the first
    time, the subfolders of `numba` whose source folder no longer exists are removed (prune_removed_installs)."""
    if sub in _TRACKED:
        return
    if not _TRACKED:
        prune_removed_installs(numba)
    _TRACKED.add(sub)
    try:
        sub.mkdir(mode=0o700, exist_ok=True)
        named = sub / ORIGIN
        if named.is_file() and _read_origin(named) == source:
            os.utime(named)                 # (used now: a week from now at the earliest it may go)
        else:
            fd, tmp = new_temporary(sub, ORIGIN)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(os.fsencode(source))
                os.replace(tmp, named)
            finally:
                Path(tmp).unlink(missing_ok=True)
    except (OSError, ValueError):
        pass                                # (a read-only cache: nothing to keep track of, nothing lost)


def _read_origin(named: Path) -> str:
    """The source folder an ORIGIN file names (the path's bytes as the file system's, whatever they are)."""
    return os.fsdecode(named.read_bytes())


def prune_removed_installs(numba: Path) -> list[Path]:
    """The subfolders of `numba` (fastvae's kernel cache) removed because the source folder their ORIGIN names no
    longer exists and no process has used them for UNUSED_DAYS, or because they have no ORIGIN (made before fastvae
    kept track: every use now writes one) and nothing in them changed for UNRECORDED_DAYS; links, and a record that
    is no path, are left alone."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(numba))
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            named = Path(entry.path) / ORIGIN
            if not os.path.lexists(named):
                if now - _newest(entry.path) > UNRECORDED_DAYS * 86400:
                    shutil.rmtree(entry.path)
                    removed.append(Path(entry.path))
                continue
            source, used = _read_origin(named), named.stat().st_mtime
            # (a record that is no path, with a NUL in it, is as none: isdir says False for it)
            gone = os.path.isabs(source) and "\0" not in source and not os.path.isdir(source)
            if gone and now - used > UNUSED_DAYS * 86400:
                shutil.rmtree(entry.path)
                removed.append(Path(entry.path))
        except (OSError, ValueError):       # (a record of garbage: left alone, as one of none)
            continue
    return removed


def _newest(folder: str) -> float:
    """The latest modification time of `folder` and the files in it (Numba keeps a cache flat: index and code files)."""
    with os.scandir(folder) as entries:
        return max([os.stat(folder).st_mtime, *(e.stat(follow_symlinks=False).st_mtime for e in entries)])


def _from_own_folder(cls, py_func, py_file):
    """(the locator of fastvae's folder) None where own_folder refuses it: the next locator places the function."""
    if own_folder("numba") is None:
        return None
    return _from_function(cls, py_func, py_file)


def _in_tree(locator) -> bool:
    """Numba's locator of a module's own __pycache__ (or a copy of it): never for fastvae's functions, whose files
    there are none of the installed package's, so `pip uninstall` left them and the folder they kept let `import
    fastvae` succeed afterwards (a namespace package without VAE); where fastvae's folder could not be used they
    went there (a new user's trial)."""
    base = getattr(locator, "numba_locator", locator)
    return base.__name__.lstrip("_").startswith("InTreeCacheLocator")


def _from_function(cls, py_func, py_file):
    if not os.path.abspath(py_file).startswith(cls.package_root + os.sep):
        return None                         # another package's function: the locators after this one place it
    return cls.numba_locator.from_function.__func__(cls, py_func, py_file)


def _get_source_stamp(self):
    return type(self).numba_locator.get_source_stamp(self), package_stamp(type(self).package_root)


def key_caches_by_package(root: str | Path = Path(__file__).resolve().parent) -> bool:
    """Numba's cache locators, each with a copy in front of it for the functions defined under `root` (fastvae's
    package by default) whose stamp is the source file's and package_stamp(root): any edit of the package's Numba
    sources invalidates every one of its cached functions. Called by `import fastvae`, before any kernel is
    defined; True once installed, False where Numba's internals are not as this reads them (Numba decides then)."""
    try:
        from numba.core import caching
        impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
        root = str(Path(root).resolve())
        if any(getattr(c, "package_root", None) == root for c in impl._locator_classes):
            return True
        # copies of Numba's own locators only (not of another package's copies), each calling its own original
        keyed = [type(f"Package{base.__name__}", (base,), {
            "package_root": root, "numba_locator": base, "from_function": classmethod(_from_function),
            "get_source_stamp": _get_source_stamp})
            for base in impl._locator_classes
            if hasattr(base, "get_source_stamp") and not hasattr(base, "package_root") and not _in_tree(base)]
        # fastvae's own folder first (after NUMBA_CACHE_DIR), and the package's __pycache__ never (_in_tree): for
        # fastvae's functions the copies place them, or the private folder does through NUMBA_CACHE_DIR
        # (ensure_a_place), so Numba's own in-tree locator after them is never reached
        names = [getattr(c, "numba_locator").__name__.lstrip("_") for c in keyed]     # Numba's, without its _
        if "UserWideCacheLocator" in names:
            own = type("PackageFolderCacheLocator", (keyed[names.index("UserWideCacheLocator")],),
                       {"__init__": _user_folder_init, "from_function": classmethod(_from_own_folder)})
            # after NUMBA_CACHE_DIR's, which still wins
            keyed.insert(names.index("UserProvidedCacheLocator") + 1 if "UserProvidedCacheLocator" in names else 0,
                         own)
        impl._locator_classes[:0] = keyed
        return True
    except Exception:  # noqa: BLE001  (another Numba: its own behaviour)
        return False
