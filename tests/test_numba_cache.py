"""Where the compiled kernels are cached when Numba has no place of its own (fastvae.numba_cache): a read-only
install in a container whose home is read-only too (a fresh user's trial: `import fastvae` raised RuntimeError)."""
import grp
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastvae
from fastvae import numba_cache

PACKAGE = Path(fastvae.__file__).resolve().parent
# (unwritable for root too)
UNWRITABLE_HOME = {"HOME": "/proc", "XDG_CACHE_HOME": "/proc/no-cache"}
COMPILE_ONE = ("import numpy as np; from fastvae.backends import cpu_update as u; "
               "d = np.ones((3, 5), np.float32); db = np.empty(5, np.float32); u.column_sums(db, d); print(db.sum())")


def test_numba_has_a_place_here_and_none_for_a_file_in_an_unwritable_folder_without_a_home():
    """Numba's own locators decide: a checkout's module has one (its __pycache__); a file in /proc, with HOME and
    XDG_CACHE_HOME unwritable, has none (the same question in a subprocess, where those variables are read)."""
    assert not numba_cache.needs_fallback(PACKAGE / "barrier.py")
    code = "from fastvae import numba_cache as n; print(n.needs_fallback('/proc/version'))"
    env = {**os.environ, **UNWRITABLE_HOME}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("FASTVAE_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("where", ["FASTVAE_CACHE_DIR", "XDG_CACHE_HOME", "NUMBA_CACHE_DIR"])
def test_the_kernels_are_cached_in_fastvaes_own_folder_unless_numba_cache_dir_says_otherwise(tmp_path, where):
    """fastvae's folder (FASTVAE_CACHE_DIR, else XDG_CACHE_HOME/fastvae, else ~/.cache/fastvae), not the package's
    __pycache__: Numba's files there outlived `pip uninstall` and made `import fastvae` succeed afterwards, as a
    namespace package (test_packaging holds an installed package's folder to the wheel's files). NUMBA_CACHE_DIR, a
    user's choice for all of Numba, still wins."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "FASTVAE_CACHE_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env[where] = str(tmp_path / "chosen")
    code = COMPILE_ONE + "; print(u.column_sums._cache._cache_path)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    total, path = proc.stdout.split()
    base = {"FASTVAE_CACHE_DIR": tmp_path / "chosen" / "numba", "XDG_CACHE_HOME": tmp_path / "chosen" / "fastvae" /
            "numba", "NUMBA_CACHE_DIR": tmp_path / "chosen"}[where]
    assert total == "15.0" and Path(path).parent == base, path
    assert list(Path(path).glob("cpu_update.column_sums-*.nbi")), "nothing cached there"


def _read_only_mounts_work():
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {PACKAGE} {PACKAGE} && "
                            f"mount -o remount,bind,ro {PACKAGE}"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _read_only_mounts_work(), reason="needs `unshare -m` and mount (root with CAP_SYS_ADMIN) "
                    "to make the installed package read-only in a private mount namespace")
def test_a_read_only_install_without_a_writable_home_caches_its_kernels_in_the_temporary_folder(tmp_path):
    """The package folder mounted read-only (only for the subprocess: a private mount namespace), HOME unwritable,
    NUMBA_CACHE_DIR unset: importing fastvae and compiling a kernel works, and the kernel is cached under TMPDIR."""
    code = COMPILE_ONE
    env = {**os.environ, **UNWRITABLE_HOME, "TMPDIR": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("FASTVAE_CACHE_DIR", None)
    script = (f"mount --bind {PACKAGE} {PACKAGE} && mount -o remount,bind,ro {PACKAGE} && "
              f"exec {sys.executable} -c '{code}'")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "15.0", proc.stderr[-2000:]
    assert list((tmp_path / f"fastvae-{os.getuid()}" / "numba").rglob("*.nbi")), "nothing cached in TMPDIR"


@pytest.mark.skipif(not _read_only_mounts_work(), reason="needs `unshare -m` and mount (root with CAP_SYS_ADMIN) "
                    "to make the installed package and the temporary folders read-only in a private mount namespace")
@pytest.mark.parametrize("case", ["planted", "nowhere"])
def test_a_cache_folder_someone_else_could_write_is_never_loaded_from(tmp_path, case):
    """planted: TMPDIR/fastvae-<uid> made first by someone else, open to all, holding an index file that runs code
    when unpickled (a fresh user's trial did this and Numba ran it: the folder's name was guessable and never
    checked): it is left alone; the kernels are cached in a fresh private folder beside it. nowhere: no temporary
    folder can be written at all (`import fastvae` raised "No usable temporary directory"; with only the working
    directory writable, Python's tempfile left a cache there): the kernels compile in memory, nothing is written."""
    code = ("import argparse; from fastvae.cli import Notes; notes = Notes(argparse.Namespace(quiet=False)).held; "
            "import numpy as np, fastvae; from fastvae import numba_cache; "
            "from fastvae.backends import cpu_update as u; d = np.ones((3, 5), np.float32); "
            "db = np.empty(5, np.float32); u.column_sums(db, d); "
            "from numba.core import config; print(db.sum(), numba_cache.nowhere(), config.CACHE_DIR or None); "
            "print(*notes, sep=chr(10))")
    env = {**os.environ, **UNWRITABLE_HOME, "TMPDIR": str(tmp_path / "tmp")}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("FASTVAE_CACHE_DIR", None)
    env.pop("XDG_RUNTIME_DIR", None)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    read_only = [PACKAGE]
    if case == "planted":
        planted = tmp_path / "tmp" / f"fastvae-{os.getuid()}"
        (planted / "numba").mkdir(parents=True)
        for folder in (planted, planted / "numba"):
            folder.chmod(0o777)
        (planted / "numba" / "bait.nbi").write_bytes(b"")
    else:
        read_only += [tmp_path / "tmp", "/tmp", "/var/tmp", "/dev/shm"]
    mounts = " && ".join(f"mount --bind {p} {p} && mount -o remount,bind,ro {p}" for p in read_only if Path(p).is_dir())
    proc = subprocess.run(["unshare", "-m", "sh", "-c", f"{mounts} && exec {sys.executable} -c '{code}'"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path / "cwd")
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, *notes = proc.stdout.strip().split("\n")
    total, nowhere, cached_in = first.split()
    assert (total, nowhere) == ("15.0", str(case == "nowhere")), proc.stdout
    # the tools' notes say it, asked first thing in a process, as a tool asks (the note went missing so: a trial)
    assert len(notes) == 1 and ("is not this user's alone" if case == "planted" else "FASTVAE_CACHE_DIR") in notes[0]
    assert not list((tmp_path / "cwd").iterdir()), "a cache was left in the working directory"
    if case == "planted":
        assert [p.name for p in (planted / "numba").iterdir()] == ["bait.nbi"], "the planted folder was used"
        fresh = Path(cached_in).parent         # a fresh private folder beside it, removed at exit
        assert fresh.parent == tmp_path / "tmp" and fresh.name.startswith(f"fastvae-{os.getuid()}-"), cached_in
        assert list((tmp_path / "tmp").iterdir()) == [planted]
    else:
        assert cached_in == "None" and not list((tmp_path / "tmp").iterdir())


def fresh():
    """private_folder() asked anew (it answers once a process), not kept for the tests after."""
    numba_cache.private_folder.cache_clear()
    try:
        return numba_cache.private_folder()
    finally:
        numba_cache.private_folder.cache_clear()


def test_the_private_folder_is_made_for_this_user_only_and_refused_when_others_could_write_it(tmp_path, monkeypatch):
    """private_folder(): made with mode 0700 and found again (the same place in every process, so a cache made there
    is used again); a folder of that name open to others, a link, or (as root) another user's is not used: a fresh
    private one beside it serves instead; None where no temporary folder takes one."""
    monkeypatch.setattr(numba_cache, "_temporary_folders", lambda: [str(tmp_path)])
    monkeypatch.setattr(numba_cache, "_TAKEN", [])         # (what this test finds taken is its own)
    name = tmp_path / f"fastvae-{os.getuid()}"
    assert fresh() == name and name.stat().st_mode & 0o777 == 0o700 and fresh() == name
    bad = [lambda: name.chmod(0o777), lambda: name.chmod(0o770)]
    if os.getuid() == 0:
        bad.append(lambda: os.chown(name, 4242, 4242))
    for spoil in bad:
        spoil()
        other = fresh()
        assert other != name and other.parent == tmp_path and other.stat().st_mode & 0o777 == 0o700
        assert numba_cache.taken() == str(name)
        shutil.rmtree(name)
        name.mkdir(mode=0o700)
    shutil.rmtree(name)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    name.symlink_to(tmp_path / "elsewhere")
    assert fresh() not in (name, tmp_path / "elsewhere")
    monkeypatch.setattr(numba_cache, "_temporary_folders", lambda: ["/proc/no-such-folder", "/proc/version"])
    assert fresh() is None


def _others_in_group(gid: int) -> set[str] | None:
    """The accounts other than this user's that may write through group `gid` (those whose primary group it is, and
    its listed members), read from the system's databases; None where no group has that number."""
    try:
        listed = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return None
    me = pwd.getpwuid(os.getuid()).pw_name
    return ({user.pw_name for user in pwd.getpwall() if user.pw_gid == gid} | listed) - {me}


def _acl_granting_write(folder: Path, uid: int) -> bool:
    """Give user `uid` rwx on `folder` by a POSIX access ACL (the kernel's xattr format: what `setfacl -m
    u:UID:rwx` writes); False where the file system takes no ACL."""
    import struct
    whole = 0xFFFFFFFF
    entries = [(0x01, 7, whole), (0x02, 7, uid), (0x04, 0, whole), (0x10, 7, whole), (0x20, 0, whole)]
    try:
        os.setxattr(folder, "system.posix_acl_access",
                    struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))
    except (OSError, AttributeError):
        return False
    return True


def test_folders_above_writable_by_the_users_own_group_alone_serve(tmp_path, monkeypatch):
    """Umask 002 with user private groups (Debian's and Ubuntu's logins) leaves folders group-writable, ~/.cache
    included, for a group whose only member is the user: a cache folder below such folders was refused and the kernels
    went to the temporary folder, compiled again after every boot. Folders above fastvae's own that are writable by
    the user's private group alone (its name the user's, no other member) now serve; one writable by a group with any
    other member, of no member or with no entry, or group-writable through an ACL (a named user's write shows as
    0770: a review planted an index so), does not; fastvae's own folder never may be group-writable (it makes it
    0700). The groups and accounts are this system's own; the ACLs real ones, where the file system takes them."""
    monkeypatch.setattr(numba_cache, "_temporary_folders", lambda: [str(tmp_path / "umask-002")])
    monkeypatch.setattr(numba_cache, "_TAKEN", [])
    (tmp_path / "umask-002").mkdir()
    name = tmp_path / "umask-002" / f"fastvae-{os.getuid()}"
    assert fresh() == name
    me = pwd.getpwuid(os.getuid())
    private = (me.pw_gid == os.getgid() and grp.getgrgid(os.getgid()).gr_name == me.pw_name
               and _others_in_group(os.getgid()) == set())
    above = (tmp_path / "umask-002", tmp_path)
    for folder in above:
        folder.chmod(0o775)
        assert (fresh() == name) is private, folder
    name.chmod(0o770)                                       # fastvae's own folder: never group-writable
    assert fresh() != name and numba_cache.taken() == str(name)
    shutil.rmtree(name)
    for folder in above:
        folder.chmod(0o755)
    assert fresh() == name
    if _acl_granting_write(tmp_path / "umask-002", 65534):
        assert oct(os.stat(tmp_path / "umask-002").st_mode & 0o777) == "0o770"
        assert fresh() is None                              # (passed over: the only temporary folder here)
        os.removexattr(tmp_path / "umask-002", "system.posix_acl_access")
        (tmp_path / "umask-002").chmod(0o755)
        assert fresh() == name
    if not private or os.getuid() != 0:
        pytest.skip("the other groups need root to give a folder to them" if private else
                    f"this user's group {os.getgid()} is no private group of theirs alone")
    shared = {user.pw_gid for user in pwd.getpwall() if user.pw_uid != 0 and _others_in_group(user.pw_gid)}
    primary = {user.pw_gid for user in pwd.getpwall()}
    empty = {group.gr_gid for group in grp.getgrall() if not group.gr_mem and group.gr_gid not in primary}
    unknown = next(gid for gid in range(4242, 10**6) if _others_in_group(gid) is None)
    assert shared, "no account's primary group here"
    shutil.rmtree(name)
    for gid in (min(shared), *sorted(empty)[:1], unknown):
        for folder in above:                                # a folder above of that group: passed over, not taken
            os.chown(folder, 0, gid)
            folder.chmod(0o775)
            assert fresh() is None, (gid, folder)
            os.chown(folder, 0, os.getgid())
            folder.chmod(0o755)
    assert fresh() == name


def test_a_temporary_folder_another_user_could_rename_things_in_is_passed_over(tmp_path, monkeypatch):
    """A folder checked as this user's is then used by its path: in a world-writable TMPDIR without the sticky bit,
    another user renamed it away and planted one at its name (a fresh user's trial ran code so). Such a TMPDIR, or one
    below such a folder, or (as root) one another user owns, is passed over for the next place; a sticky one serves."""
    scratch, good = tmp_path / "scratch", tmp_path / "good"
    for folder in (scratch, good):
        folder.mkdir()
    monkeypatch.setattr(numba_cache, "_temporary_folders", lambda: [str(scratch), str(good)])
    monkeypatch.setattr(numba_cache, "_TAKEN", [])
    scratch.chmod(0o777)
    assert fresh() == good / f"fastvae-{os.getuid()}" and not list(scratch.iterdir())
    (scratch / "below").mkdir(mode=0o700)
    monkeypatch.setattr(numba_cache, "_temporary_folders", lambda: [str(scratch / "below"), str(good)])
    assert fresh().parent == good
    scratch.chmod(0o1777)                                   # sticky, as /tmp: only an entry's owner may rename it
    assert fresh() == scratch / "below" / f"fastvae-{os.getuid()}"
    if os.getuid() == 0:
        os.chown(scratch, 4242, 4242)
        assert fresh().parent == good
    assert numba_cache.taken() is None                      # (passed over, not taken)


def test_the_kernels_of_installs_removed_a_week_ago_are_pruned(tmp_path):
    """Each install location's kernels (3-20 MB) stayed in ~/.cache/fastvae/numba after the install was removed (a
    developer's had 150 MB over 20 of them). A subfolder whose recorded source folder is gone and which no process
    has used for a week is removed as the kernels are next placed, and so is one without a record (made before
    fastvae kept track) unchanged for a month; one still used (or used within the week: a container sharing the
    cache may not see the other's folders), one of an existing install, a recent one without a record and a link are
    kept. Real folders; a real process places its kernels and records their source."""
    numba = tmp_path / "cache" / "numba"
    old = time.time() - (numba_cache.UNUSED_DAYS + 1) * 86400
    ancient = time.time() - (numba_cache.UNRECORDED_DAYS + 1) * 86400
    made = {}
    for name, source, when in [("gone", str(tmp_path / "deleted-venv" / "fastvae"), old),
                               ("gone-recently", str(tmp_path / "deleted-venv" / "fastvae"), time.time() - 3600),
                               ("installed", str(tmp_path), old), ("relative", "deleted/fastvae", old),
                               ("unrecorded", None, old), ("unrecorded-old", None, ancient)]:
        made[name] = numba / name
        made[name].mkdir(parents=True)
        (made[name] / "kernel.nbi").write_bytes(b"")
        if source is not None:
            (made[name] / numba_cache.ORIGIN).write_text(source)
            os.utime(made[name] / numba_cache.ORIGIN, (when, when))
        elif when == ancient:                               # (made before fastvae kept track, unchanged since)
            for path in (made[name] / "kernel.nbi", made[name]):
                os.utime(path, (when, when))
    made["garbage"] = numba / "garbage"                     # (a record that is no path: kept, and no error)
    made["garbage"].mkdir()
    (made["garbage"] / numba_cache.ORIGIN).write_bytes(b"/\xff\x00\x80")
    os.utime(made["garbage"] / numba_cache.ORIGIN, (old, old))
    (tmp_path / "elsewhere").mkdir()
    shutil.copytree(made["gone"], tmp_path / "elsewhere" / "linked")
    (numba / "link").symlink_to(tmp_path / "elsewhere" / "linked")
    os.chmod(tmp_path / "cache", 0o700)
    os.chmod(numba, 0o700)
    env = {**os.environ, "FASTVAE_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", COMPILE_ONE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["15.0"], done.stderr[-2000:]
    left = {p.name for p in numba.iterdir()}
    assert not {"gone", "unrecorded-old"} & left
    assert {"gone-recently", "installed", "relative", "unrecorded", "garbage", "link"} <= left, left
    assert (tmp_path / "elsewhere" / "linked" / "kernel.nbi").exists()
    sources = {(p / numba_cache.ORIGIN).read_text() for p in numba.iterdir() if p.name not in made and p.name != "link"}
    assert str(PACKAGE / "backends") in sources, sources     # the package's own, recorded as it placed them
    used = (numba / next(p.name for p in numba.iterdir() if p.name.startswith("backends_")) / numba_cache.ORIGIN)
    assert time.time() - used.stat().st_mtime < 600
    assert numba_cache.prune_removed_installs(numba) == [] and numba_cache.prune_removed_installs(tmp_path / "no") == []


def test_an_edit_of_a_called_module_recompiles_its_callers(tmp_path):
    """Numba checks a cached function against its own file only: a kernel calling another module's jitted function
    kept the old callee after that module's edit (cpu_bf16 calling cpu's pass: a contributor's trial). With the
    package's caches keyed by all its Numba sources, the caller sees the edit. A real package of two modules, a real
    cache folder, fresh processes."""
    import subprocess
    import sys
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "callee.py").write_text("from numba import njit\n\n@njit(cache=True)\ndef f():\n    return 1\n")
    (package / "caller.py").write_text("from numba import njit\nfrom pkg.callee import f\n\n"
                                       "@njit(cache=True)\ndef g():\n    return f() + 10\n")
    code = ("from fastvae import numba_cache\nassert numba_cache.key_caches_by_package(%r)\n"
            "from pkg.caller import g\nprint(g())\n" % str(package))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def run():
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()[-1]
    assert run() == "11"
    assert any((tmp_path / "cache").rglob("*.nbi"))                 # g was cached
    callee = package / "callee.py"
    callee.write_text(callee.read_text().replace("return 1", "return 2"))
    later = callee.stat().st_mtime + 10
    os.utime(callee, (later, later))
    assert run() == "12"


def test_the_tools_say_when_the_kernels_are_compiled_in_every_run(monkeypatch):
    """Where no folder can be written (test above), a run pays the first call's 20-40 s every time: the tools' notes
    say so and name the way out; --quiet keeps them silent; where a cache exists, nothing is said."""
    import argparse
    from fastvae.cli import Notes
    assert Notes(argparse.Namespace(quiet=False)).held == []
    monkeypatch.setattr(numba_cache, "_NOWHERE", [True])
    (line,) = Notes(argparse.Namespace(quiet=False)).held
    assert "compiled again in every run" in line and "FASTVAE_CACHE_DIR" in line
    assert Notes(argparse.Namespace(quiet=True)).held == []
    monkeypatch.setattr(numba_cache, "_NOWHERE", [])
    monkeypatch.setattr(numba_cache, "_TAKEN", ["/tmp/fastvae-5000"])
    (line,) = Notes(argparse.Namespace(quiet=False)).held
    assert line.startswith("fastvae: /tmp/fastvae-5000 is not this user's alone") and "NUMBA_CACHE_DIR" in line


@pytest.mark.parametrize("how", ["open to all", "another user's", "under an open folder"])
def test_a_cache_folder_others_could_write_is_not_used(tmp_path, monkeypatch, how):
    """FASTVAE_CACHE_DIR in a folder others could write: Numba unpickles its index files there and fastvae imports
    the replays it generates there, so another user could run code as this one (a security review planted an index
    that ran `id`). Such a folder is passed over (the private folder serves the replays); a private one is used."""
    from fastvae.backends import capture
    chosen = tmp_path / "shared" / "cache"
    chosen.mkdir(parents=True)
    if how == "open to all":
        (chosen / "replays").mkdir(mode=0o777)
        os.chmod(chosen / "replays", 0o777)
    elif how == "another user's":
        if os.getuid() != 0:
            pytest.skip("needs root to give a folder to another user")
        (chosen / "numba").mkdir()
        os.chown(chosen / "numba", 65534, 65534)
    else:
        os.chmod(tmp_path / "shared", 0o777)            # anyone may rename `cache` away and put theirs there
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(chosen))
    numba_cache.checked_folder.cache_clear()
    try:
        sub = "numba" if how == "another user's" else "replays"
        assert numba_cache.own_folder(sub) is None
        if sub == "replays":
            assert capture.cache_dir() != chosen / "replays"
        os.chmod(tmp_path / "shared", 0o755)
        private = tmp_path / "mine"
        monkeypatch.setenv("FASTVAE_CACHE_DIR", str(private))
        assert numba_cache.own_folder("replays") == private / "replays"
        assert os.stat(private / "replays").st_mode & 0o777 == 0o700
        # reached through a link: used as resolved (the typed path's link could be swapped after the check)
        (tmp_path / "link").symlink_to(private)
        monkeypatch.setenv("FASTVAE_CACHE_DIR", str(tmp_path / "link"))
        assert numba_cache.own_folder("replays") == private / "replays"
    finally:
        numba_cache.checked_folder.cache_clear()


@pytest.mark.skipif(not _read_only_mounts_work(), reason="needs `unshare -m` and mount (root with CAP_SYS_ADMIN) "
                    "to make the installed package read-only in a private mount namespace")
def test_a_read_only_install_caches_its_kernels_in_a_writable_fastvae_cache_dir(tmp_path):
    """A read-only install, HOME unwritable, FASTVAE_CACHE_DIR writable: the kernels went to the private temporary
    folder (recompiled after every boot), not the folder the user named (a review's catch): Numba's own places were
    asked before fastvae's folder was."""
    code = COMPILE_ONE + "; print(u.column_sums._cache._cache_path)"
    env = {**os.environ, **UNWRITABLE_HOME, "TMPDIR": str(tmp_path / "tmp"),
           "FASTVAE_CACHE_DIR": str(tmp_path / "chosen")}
    env.pop("NUMBA_CACHE_DIR", None)
    (tmp_path / "tmp").mkdir()
    script = (f"mount --bind {PACKAGE} {PACKAGE} && mount -o remount,bind,ro {PACKAGE} && "
              f"exec {sys.executable} -c '{code}'")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    total, path = proc.stdout.split()
    assert total == "15.0" and Path(path).parent == tmp_path / "chosen" / "numba", path


def test_without_fastvaes_folder_the_kernels_never_go_into_the_package(tmp_path):
    """FASTVAE_CACHE_DIR (or HOME) unusable: Numba's locator of the module's own __pycache__ placed fastvae's kernels
    in the installed package, so `pip uninstall` left them and `import fastvae` succeeded afterwards as a namespace
    package (a new user's trial). They go to Numba's user cache, else the private temporary folder; the tools say
    that FASTVAE_CACHE_DIR was passed over."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "FASTVAE_CACHE_DIR")}
    code = COMPILE_ONE + ("; from fastvae import numba_cache as n; print(u.column_sums._cache._cache_path); "
                          "print(n.passed_over())")
    for extra, where in (({"FASTVAE_CACHE_DIR": "/proc/nope", "HOME": str(tmp_path / "home"),
                           "XDG_CACHE_HOME": str(tmp_path / "xdg")}, tmp_path / "xdg" / "numba"),
                         ({**UNWRITABLE_HOME, "FASTVAE_CACHE_DIR": "/proc/no-cache/fastvae",
                           "TMPDIR": str(tmp_path / "tmp")}, tmp_path / "tmp")):
        (tmp_path / "tmp").mkdir(exist_ok=True)
        proc = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        total, path, said = proc.stdout.split()
        assert total == "15.0" and Path(path).is_relative_to(where) and not Path(path).is_relative_to(PACKAGE), path
        assert said == extra["FASTVAE_CACHE_DIR"]
