#!/usr/bin/env python3
"""lazyfs: a FUSE file system that forgets what was never fsynced, for power-cut tests.

`kill -9` cannot tear a write or lose the page cache: the kernel keeps every byte a process
wrote. A power cut loses everything the disk was not told to keep. This file system models
that, in the spirit of LazyFS (the FUSE layer Jepsen used to find NATS losing acknowledged
writes): it passes every operation through to a backing directory, and remembers what a
power cut would undo.

    lazyfs.py --backing DIR --mount DIR --control SOCKET

It prints `MOUNTED` once the kernel connected (the mount is usable), serves until it is told
`exit` or gets SIGTERM, and unmounts then. Mount options: libfuse 3 through mfusepy (ctypes),
write-through (no `writeback_cache`), so every write(2) reaches this process before the call
returns; as root, libfuse mounts with mount(2) directly, no fusermount3 needed.

What a power cut loses (the model)
---------------------------------
- File data: per inode, the size at its last fsync/fdatasync (`synced size`) and, for every
  4 KiB page written or truncated since, the page's content as of that sync. fsync and
  fdatasync both make the file's data and size durable (fdatasync persists the size too, as it
  must when the size is needed to read the data). They do NOT make the file's directory entry
  durable (POSIX; ext4 happens to, in practice).
- Directory entries: every create, mkdir, unlink, rmdir and rename is journalled in order. An
  fsync of a directory makes durable every journalled change in that directory (a rename: when
  either of its directories is fsynced, as ext4 journals it atomically) and the mkdir of that
  directory and of its ancestors (its contents cannot outlive it). Unlinked files and removed
  directories are kept in a hidden grave (`.lazyfs-grave/` in the backing directory) until
  their removal is durable, so a cut can bring them back.
- `crash` (drop mode): every journalled change not durable is undone, newest first; every
  dirty file gets its synced pages back and is cut to its synced size. What is left is exactly
  what fsync covered. `crash torn SEED` instead keeps a random part of what was not synced, as
  a disk that wrote back some pages before the power went would: each file's size lands
  anywhere between its synced and its current size, and each 512-byte sector of a dirty page
  independently holds the new data, the old data (zeros past the old size) — torn writes and
  garbage tails, what the log's recovery cut exists for. Directory changes are dropped alike.
  After a crash every operation fails with EIO until the mount is gone: the box is off.
- Not modelled: the kernel's own ordering of write-back (ext4 data=ordered), reordering of
  fsyncs that completed, bit rot. mmap and O_DIRECT: the data path of Outpost uses neither
  (pwrite + fdatasync for the log; sled writes with pwrite); a shared writable mapping of a
  file here would bypass the page tracking and is not supported.

sync_file_range(2)
------------------
FUSE has no sync_file_range request. The kernel implements it for a FUSE file as for any
file: it starts and waits for write-back of the page cache range. Here the page cache is
write-through, so nothing is dirty and this process sees nothing at all: under this model
sync_file_range makes nothing durable. That matches what it promises on a real disk: it writes
data pages only, not the metadata that makes appended data reachable (size, extents), and it
does not flush the device's cache. sled's `Db::flush()` ends every buffer write with it; sled's
periodic flusher thread (every `flush_every_ms`) does call `sync_all()` (fsync) afterwards,
and Outpost's `StateStore::sync()` fsyncs every file and directory of the store. So sled's
newest writes are durable only as of its last flusher fsync or StateStore::sync.

Faults
------
`fail write|fsync GLOB EIO|ENOSPC [COUNT]` makes the next COUNT (default 1) writes or fsyncs
(fsync and fdatasync of files) of files whose path inside the mount (without the leading `/`)
matches the shell pattern GLOB fail with that error, without touching the data. A failed fsync
leaves the data not durable. `clear` disarms every fault.

Control protocol (the UNIX socket; one command per line, one answer line each)
-------------------------------------------------------------------------------
    crash [drop | torn SEED]   -> CRASHED files=N pages=N entries=N
    fail KIND GLOB ERRNO [N]   -> OK
    clear                      -> OK
    stats                      -> STATS writes=N fsyncs=N fsyncdirs=N dirty_files=N
                                        dirty_pages=N pending_entries=N faults_hit=N
    exit                       -> BYE (then unmounts and exits)
Anything else answers `ERR <reason>`.
"""

import argparse
import errno
import fnmatch
import os
import random
import shutil
import signal
import socket
import sys
import threading

import mfusepy as fuse

PAGE = 4096
SECTOR = 512
GRAVE = ".lazyfs-grave"


class Inode:
    """What a power cut would undo in one file's data."""

    def __init__(self, synced_size):
        self.synced_size = synced_size
        # page number -> the page's bytes as of the last sync (shorter than a page at the end
        # of the synced size; empty for pages wholly past it)
        self.dirty = {}


class Change:
    """One journalled directory change; `undo` puts the backing directory back."""

    def __init__(self, kind, dirs, undo, grave=None, made_dir=None):
        self.kind = kind
        self.dirs = dirs  # directories (paths inside the mount) this change lives in
        self.undo = undo
        self.grave = grave  # backing path kept for the undo, deleted once durable
        self.made_dir = made_dir  # for mkdir: the directory it created


class LazyFS(fuse.Operations):
    use_ns = True

    def __init__(self, backing):
        self.root = os.path.realpath(backing)
        self.grave_dir = os.path.join(self.root, GRAVE)
        os.makedirs(self.grave_dir, exist_ok=True)
        self.mutex = threading.RLock()
        self.inodes = {}  # backing st_ino -> Inode
        self.paths = {}  # backing st_ino -> path inside the mount (for fault globs)
        self.fds = {}  # file handle -> (fd, st_ino)
        self.journal = []  # Changes not yet durable, oldest first
        self.graves = 0
        self.crashed = False
        self.faults = []  # [kind, glob, errno, remaining]
        self.counts = {"writes": 0, "fsyncs": 0, "fsyncdirs": 0, "faults_hit": 0}

    # -- helpers ----------------------------------------------------------------------------

    def real(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def alive(self):
        if self.crashed:
            raise fuse.FuseOSError(errno.EIO)

    def inode(self, ino, size_now):
        """The tracking record of a file; a file first seen now is durable as it is."""
        node = self.inodes.get(ino)
        if node is None:
            node = self.inodes[ino] = Inode(size_now)
        return node

    def fault(self, kind, ino):
        path = self.paths.get(ino, "")
        for f in self.faults:
            if f[0] == kind and f[3] > 0 and fnmatch.fnmatch(path, f[1]):
                f[3] -= 1
                self.counts["faults_hit"] += 1
                raise fuse.FuseOSError(f[2])

    def save_pages(self, fd, node, first, last):
        """Keeps the synced content of pages first..=last before they change."""
        for page in range(first, last + 1):
            if page in node.dirty:
                continue
            start = page * PAGE
            if start >= node.synced_size:
                node.dirty[page] = b""
            else:
                length = min(PAGE, node.synced_size - start)
                node.dirty[page] = os.pread(fd, length, start)

    def bury(self, real):
        """Moves a removed file or directory to the grave; returns where it went."""
        self.graves += 1
        grave = os.path.join(self.grave_dir, str(self.graves))
        os.rename(real, grave)
        return grave

    def forget(self, grave):
        """Deletes a removal's grave for good once the removal is durable."""
        try:
            st = os.lstat(grave)
        except FileNotFoundError:
            return
        if os.path.isdir(grave):
            shutil.rmtree(grave, ignore_errors=True)
        else:
            self.inodes.pop(st.st_ino, None)
            self.paths.pop(st.st_ino, None)
            _remove(grave)

    def journal_change(self, change):
        self.journal.append(change)

    @staticmethod
    def parent(path):
        return os.path.dirname(path.rstrip("/")) or "/"

    # -- metadata ---------------------------------------------------------------------------

    def getattr(self, path, fh=None):
        self.alive()
        if path.lstrip("/") == GRAVE:
            raise fuse.FuseOSError(errno.ENOENT)
        try:
            st = os.fstat(self.fds[fh][0]) if fh in self.fds else os.lstat(self.real(path))
        except OSError as e:
            raise fuse.FuseOSError(e.errno)
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_blocks")
        attrs = {k: getattr(st, k) for k in keys}
        for k in ("st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            attrs[k[:-3]] = getattr(st, k)
        return attrs

    def readdir(self, path, fh):
        self.alive()
        names = os.listdir(self.real(path))
        if path == "/":
            names = [n for n in names if n != GRAVE]
        return [".", ".."] + names

    def opendir(self, path):
        self.alive()
        return 0

    def releasedir(self, path, fh):
        return 0

    def statfs(self, path):
        st = os.statvfs(self.root)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                "f_favail", "f_flag", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    def access(self, path, amode):
        self.alive()
        if not os.access(self.real(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path, mode):
        self.alive()
        os.chmod(self.real(path), mode)
        return 0

    def chown(self, path, uid, gid):
        self.alive()
        os.chown(self.real(path), uid, gid)
        return 0

    def utimens(self, path, times=None):
        self.alive()
        os.utime(self.real(path), ns=times)
        return 0

    def readlink(self, path):
        self.alive()
        return os.readlink(self.real(path))

    def link(self, target, source):
        raise fuse.FuseOSError(errno.EPERM)

    def symlink(self, target, source):
        raise fuse.FuseOSError(errno.EPERM)

    # -- directory entries ------------------------------------------------------------------

    def mkdir(self, path, mode):
        with self.mutex:
            self.alive()
            real = self.real(path)
            os.mkdir(real, mode)
            self.journal_change(Change("mkdir", [self.parent(path)],
                                       lambda: shutil.rmtree(real, ignore_errors=True),
                                       made_dir=path))
        return 0

    def rmdir(self, path):
        with self.mutex:
            self.alive()
            real = self.real(path)
            if os.listdir(real):
                raise fuse.FuseOSError(errno.ENOTEMPTY)
            grave = self.bury(real)
            self.journal_change(Change("rmdir", [self.parent(path)],
                                       lambda: os.rename(grave, real), grave=grave))
        return 0

    def unlink(self, path):
        with self.mutex:
            self.alive()
            real = self.real(path)
            grave = self.bury(real)
            self.journal_change(Change("unlink", [self.parent(path)],
                                       lambda: os.rename(grave, real), grave=grave))
        return 0

    def rename(self, old, new):
        with self.mutex:
            self.alive()
            real_old, real_new = self.real(old), self.real(new)
            if not os.path.lexists(real_old):
                raise fuse.FuseOSError(errno.ENOENT)
            replaced = None
            if os.path.lexists(real_new):
                if os.path.isdir(real_new) and os.listdir(real_new):
                    raise fuse.FuseOSError(errno.ENOTEMPTY)
                replaced = self.bury(real_new)
            os.rename(real_old, real_new)
            ino = os.lstat(real_new).st_ino
            if ino in self.paths:
                self.paths[ino] = new.lstrip("/")

            def undo():
                os.rename(real_new, real_old)
                if replaced is not None:
                    os.rename(replaced, real_new)

            self.journal_change(Change("rename", [self.parent(old), self.parent(new)], undo,
                                       grave=replaced))
        return 0

    def fsyncdir(self, path, datasync, fh):
        with self.mutex:
            self.alive()
            self.counts["fsyncdirs"] += 1
            path = "/" + path.strip("/") if path.strip("/") else "/"
            durable_dirs = {path}
            # The directory and its ancestors must exist for its entries to be reachable.
            chain = path
            made = set()
            while chain != "/":
                made.add(chain)
                chain = self.parent(chain)
            keep = []
            for change in self.journal:
                durable = any(d in durable_dirs for d in change.dirs) or (
                    change.made_dir is not None and change.made_dir in made)
                if durable:
                    if change.grave is not None:
                        self.forget(change.grave)
                else:
                    keep.append(change)
            self.journal = keep
        return 0

    # -- files ------------------------------------------------------------------------------

    def open_fd(self, path, flags, create_mode=None):
        real = self.real(path)
        bare = flags & ~(os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_WRONLY
                         | os.O_RDONLY | os.O_RDWR | getattr(os, "O_DIRECT", 0))
        if create_mode is not None:
            fd = os.open(real, os.O_RDWR | os.O_CREAT | os.O_EXCL | bare, create_mode)
        else:
            fd = os.open(real, os.O_RDWR | bare)
        st = os.fstat(fd)
        if create_mode is not None:
            # A new file: its inode number may be that of a file removed earlier.
            self.inodes[st.st_ino] = Inode(0)
        node = self.inode(st.st_ino, st.st_size)
        self.paths[st.st_ino] = path.lstrip("/")
        fh = fd  # the backing descriptor doubles as the handle
        self.fds[fh] = (fd, st.st_ino)
        if flags & os.O_TRUNC and create_mode is None:
            self.cut(fd, node, 0)
        return fh

    def create(self, path, mode, flags=0):
        with self.mutex:
            self.alive()
            try:
                fh = self.open_fd(path, flags, create_mode=mode)
            except OSError as e:
                raise fuse.FuseOSError(e.errno)
            real = self.real(path)
            self.journal_change(Change("create", [self.parent(path)], lambda: _remove(real)))
            return fh

    def open(self, path, flags):
        with self.mutex:
            self.alive()
            try:
                return self.open_fd(path, flags)
            except OSError as e:
                raise fuse.FuseOSError(e.errno)

    def read(self, path, size, offset, fh):
        self.alive()
        return os.pread(self.fds[fh][0], size, offset)

    def write(self, path, data, offset, fh):
        with self.mutex:
            self.alive()
            fd, ino = self.fds[fh]
            self.fault("write", ino)
            node = self.inode(ino, os.fstat(fd).st_size)
            if data:
                self.save_pages(fd, node, offset // PAGE, (offset + len(data) - 1) // PAGE)
            self.counts["writes"] += 1
            return os.pwrite(fd, data, offset)

    def cut(self, fd, node, length):
        size = os.fstat(fd).st_size
        if length < size:
            self.save_pages(fd, node, length // PAGE, (size - 1) // PAGE)
        os.ftruncate(fd, length)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            self.alive()
            if fh in self.fds:
                fd, ino = self.fds[fh]
                self.cut(fd, self.inode(ino, os.fstat(fd).st_size), length)
                return 0
            fd = os.open(self.real(path), os.O_RDWR)
            try:
                st = os.fstat(fd)
                self.cut(fd, self.inode(st.st_ino, st.st_size), length)
            finally:
                os.close(fd)
            return 0

    def fallocate(self, path, mode, offset, size, fh):
        # Only plain preallocation: it changes no content, only (maybe) the size.
        if mode != 0:
            raise fuse.FuseOSError(errno.EOPNOTSUPP)
        with self.mutex:
            self.alive()
            fd, ino = self.fds[fh]
            self.inode(ino, os.fstat(fd).st_size)
            os.posix_fallocate(fd, offset, size)
        return 0

    def fsync(self, path, datasync, fh):
        with self.mutex:
            self.alive()
            fd, ino = self.fds[fh]
            self.fault("fsync", ino)
            self.counts["fsyncs"] += 1
            node = self.inode(ino, 0)
            node.dirty.clear()
            node.synced_size = os.fstat(fd).st_size
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        with self.mutex:
            entry = self.fds.pop(fh, None)
            if entry is not None:
                os.close(entry[0])
        return 0

    # -- the power cut ----------------------------------------------------------------------

    def crash(self, torn_seed=None):
        """Undoes what was not durable; the file system is dead afterwards."""
        with self.mutex:
            rng = random.Random(torn_seed)
            self.crashed = True
            for fd, _ in list(self.fds.values()):
                os.close(fd)
            self.fds.clear()
            entries = len(self.journal)
            for change in reversed(self.journal):
                change.undo()
            self.journal.clear()
            shutil.rmtree(self.grave_dir, ignore_errors=True)
            by_ino = {}
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    real = os.path.join(dirpath, name)
                    by_ino[os.lstat(real).st_ino] = real
            files = pages = 0
            for ino, node in self.inodes.items():
                real = by_ino.get(ino)
                if real is None:
                    continue
                size = os.lstat(real).st_size
                if not node.dirty and size == node.synced_size:
                    continue
                files += 1
                pages += len(node.dirty)
                with open(real, "r+b") as f:
                    if torn_seed is None:
                        self.revert(f, node, node.synced_size, lambda: False)
                    else:
                        lo, hi = sorted((node.synced_size, size))
                        new_size = rng.randint(lo, hi)
                        self.revert(f, node, new_size, lambda: rng.random() < 0.5)
            self.inodes.clear()
            return files, pages, entries

    @staticmethod
    def revert(f, node, new_size, keep_new):
        """Sets the file's size to `new_size` and puts back the synced content of each dirty
        sector for which `keep_new()` is false (zeros where nothing was synced)."""
        fd = f.fileno()
        current = os.fstat(fd).st_size
        os.ftruncate(fd, new_size)
        for page, old in sorted(node.dirty.items()):
            start = page * PAGE
            for sector in range(start, start + PAGE, SECTOR):
                if sector >= new_size:
                    break
                if sector < current and keep_new():
                    continue
                end = min(sector + SECTOR, new_size)
                rel = sector - start
                before = old[rel:end - start]
                os.pwrite(fd, before + b"\0" * (end - sector - len(before)), sector)

    # -- control ----------------------------------------------------------------------------

    def command(self, line):
        words = line.split()
        if not words:
            return "ERR empty command"
        verb = words[0]
        if verb == "crash":
            seed = None
            if len(words) >= 2 and words[1] == "torn":
                seed = int(words[2]) if len(words) > 2 else 0
            elif len(words) >= 2 and words[1] != "drop":
                return f"ERR unknown crash mode {words[1]!r}"
            files, pages, entries = self.crash(seed)
            return f"CRASHED files={files} pages={pages} entries={entries}"
        if verb == "fail":
            if len(words) not in (4, 5) or words[1] not in ("write", "fsync"):
                return "ERR usage: fail write|fsync GLOB EIO|ENOSPC [COUNT]"
            code = {"EIO": errno.EIO, "ENOSPC": errno.ENOSPC}.get(words[3])
            if code is None:
                return f"ERR unknown errno {words[3]!r}"
            count = int(words[4]) if len(words) == 5 else 1
            with self.mutex:
                self.faults.append([words[1], words[2], code, count])
            return "OK"
        if verb == "clear":
            with self.mutex:
                self.faults.clear()
            return "OK"
        if verb == "stats":
            with self.mutex:
                dirty_files = sum(1 for n in self.inodes.values() if n.dirty)
                dirty_pages = sum(len(n.dirty) for n in self.inodes.values())
                c = self.counts
                return (f"STATS writes={c['writes']} fsyncs={c['fsyncs']} "
                        f"fsyncdirs={c['fsyncdirs']} dirty_files={dirty_files} "
                        f"dirty_pages={dirty_pages} pending_entries={len(self.journal)} "
                        f"faults_hit={c['faults_hit']}")
        return f"ERR unknown command {verb!r}"

    def init(self, path):
        print("MOUNTED", flush=True)


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def control_socket(sock_path):
    """Binds the control socket (before the mount, so it answers once `MOUNTED` is out)."""
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(4)
    return server


def serve_control(fs, server, unmount):
    """Answers control commands, one connection at a time, until `exit`."""
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rw") as stream:
            for line in stream:
                line = line.strip()
                if line == "exit":
                    stream.write("BYE\n")
                    stream.flush()
                    unmount()
                    return
                try:
                    answer = fs.command(line)
                except Exception as e:  # the answer carries it; the file system goes on
                    answer = f"ERR {type(e).__name__}: {e}"
                stream.write(answer + "\n")
                stream.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backing", required=True, help="the directory that holds the data")
    p.add_argument("--mount", required=True, help="where to mount (an empty directory)")
    p.add_argument("--control", required=True, help="path of the control UNIX socket")
    args = p.parse_args()

    fs = LazyFS(args.backing)
    mount = os.path.realpath(args.mount)

    def unmount():
        # fuse_exit from another thread does not wake the session loop; SIGTERM to ourselves
        # makes libfuse leave its loop and unmount.
        os.kill(os.getpid(), signal.SIGTERM)

    server = control_socket(args.control)
    threading.Thread(target=serve_control, args=(fs, server, unmount), daemon=True).start()
    # direct_io: no kernel page cache on this mount. Every read(2) is answered by this process
    # from the backing file, so a reader sees exactly what write(2) put there. With the page
    # cache, a log reader once saw a page of zeros where an acknowledged batch had been written
    # (a stale zero-filled page of the FUSE cache, never refreshed; the backing file was right).
    fuse.FUSE(fs, mount, foreground=True, fsname="lazyfs", subtype="lazyfs", direct_io=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
