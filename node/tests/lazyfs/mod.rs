//! A FUSE filesystem for power-loss tests, after Jepsen's LazyFS: a passthrough of a backing
//! directory that keeps every file's writes in memory until the file is synced (`fsync` or
//! `fdatasync` apply them to the backing file and sync it). [`LazyFs::power_cut`] drops what
//! was not synced, as a machine losing power would with a drive that honours flushes.
//! Directory operations (create, rename, unlink, mkdir) reach the backing directory at once,
//! as on a filesystem with synchronous metadata. Files are opened with direct I/O, so the
//! kernel's page cache holds nothing: every read and write comes here, and `sync_file_range`
//! (which never asks the filesystem to sync) makes nothing durable. Needs root (mount).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Nothing is cached by the kernel: sizes change here, not in the backing files.
const TTL: Duration = Duration::ZERO;

/// A write or a truncation not yet synced.
#[derive(Clone, Debug)]
enum Op {
    Write(u64, Vec<u8>),
    Truncate(u64),
}

#[derive(Default)]
struct State {
    root: PathBuf,
    /// Inode -> path relative to the root ("" is the root).
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next: u64,
    /// Unsynced changes per file (relative path), in order.
    pending: HashMap<PathBuf, Vec<Op>>,
}

impl State {
    fn ino(&mut self, rel: &Path) -> u64 {
        if let Some(i) = self.inos.get(rel) {
            return *i;
        }
        self.next += 1;
        let i = self.next;
        self.inos.insert(rel.to_path_buf(), i);
        self.paths.insert(i, rel.to_path_buf());
        i
    }

    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    /// The file's size with its unsynced changes.
    fn size(&self, rel: &Path, backing: u64) -> u64 {
        let ops = self.pending.get(rel).map(Vec::as_slice).unwrap_or(&[]);
        ops.iter().fold(backing, |len, op| match op {
            Op::Write(off, d) => len.max(off + d.len() as u64),
            Op::Truncate(l) => *l,
        })
    }

    fn attr(&mut self, rel: &Path) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(self.root.join(rel)).map_err(Errno::from)?;
        let kind = if m.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        };
        let size = self.size(rel, m.len());
        let time = |s: i64| UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
        Ok(FileAttr {
            ino: INodeNo(self.ino(rel)),
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime()),
            mtime: time(m.mtime()),
            ctime: time(m.ctime()),
            crtime: time(m.ctime()),
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Makes the entry `name` in `parent` with `make` and permissions `mode`: its attributes.
    fn make(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        make: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<FileAttr, Errno> {
        let rel = self.child(parent, name)?;
        let path = self.root.join(&rel);
        make(&path).map_err(Errno::from)?;
        chmod(&path, mode)?;
        self.attr(&rel)
    }

    /// Applies the unsynced changes of `rel` to its backing file and syncs it.
    fn sync(&mut self, rel: &Path) -> std::io::Result<()> {
        let Some(ops) = self.pending.remove(rel) else {
            return Ok(());
        };
        let f = OpenOptions::new().write(true).open(self.root.join(rel))?;
        for op in ops {
            match op {
                Op::Write(off, d) => f.write_all_at(&d, off)?,
                Op::Truncate(l) => f.set_len(l)?,
            }
        }
        f.sync_all()
    }

    /// `size` bytes from `off`, with the unsynced changes applied.
    fn read(&self, rel: &Path, off: u64, size: usize) -> std::io::Result<Vec<u8>> {
        let f = File::open(self.root.join(rel))?;
        let backing = f.metadata()?.len();
        let mut buf = vec![0u8; size];
        let n = f.read_at(&mut buf, off).unwrap_or(0);
        buf[n..].fill(0);
        let end = off + size as u64;
        for op in self.pending.get(rel).map(Vec::as_slice).unwrap_or(&[]) {
            match op {
                Op::Write(at, d) => {
                    let (from, to) = ((*at).max(off), (at + d.len() as u64).min(end));
                    if from < to {
                        buf[(from - off) as usize..(to - off) as usize]
                            .copy_from_slice(&d[(from - at) as usize..(to - at) as usize]);
                    }
                }
                Op::Truncate(l) if *l < end => {
                    buf[(l.max(&off) - off) as usize..].fill(0);
                }
                Op::Truncate(_) => {}
            }
        }
        let len = self.size(rel, backing);
        buf.truncate(len.saturating_sub(off).min(size as u64) as usize);
        Ok(buf)
    }
}

fn chmod(path: &Path, mode: u32) -> Result<(), Errno> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(Errno::from)
}

struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        match s.child(parent, name).and_then(|rel| s.attr(&rel)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut s = self.state();
        match s.rel(ino).and_then(|rel| s.attr(&rel)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let result = s.rel(ino).and_then(|rel| {
            if let Some(mode) = mode {
                chmod(&s.root.join(&rel), mode)?;
            }
            if let Some(len) = size {
                s.pending
                    .entry(rel.clone())
                    .or_default()
                    .push(Op::Truncate(len));
            }
            s.attr(&rel)
        });
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self
            .state()
            .make(parent, name, mode, |p| std::fs::create_dir(p))
        {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let result = s.child(parent, name).and_then(|rel| {
            std::fs::remove_file(s.root.join(&rel)).map_err(Errno::from)?;
            s.pending.remove(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let s = self.state();
        match s
            .child(parent, name)
            .and_then(|rel| std::fs::remove_dir(s.root.join(rel)).map_err(Errno::from))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let result = s.child(parent, name).and_then(|from| {
            let to = s.child(newparent, newname)?;
            std::fs::rename(s.root.join(&from), s.root.join(&to)).map_err(Errno::from)?;
            // The replaced file's unsynced changes go with it; the moved file keeps its own.
            s.pending.remove(&to);
            if let Some(ops) = s.pending.remove(&from) {
                s.pending.insert(to.clone(), ops);
            }
            if let Some(i) = s.inos.remove(&from) {
                s.inos.remove(&to);
                s.inos.insert(to.clone(), i);
                s.paths.insert(i, to);
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().rel(ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .state()
            .make(parent, name, mode, |p| File::create(p).map(drop))
        {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        match s
            .rel(ino)
            .and_then(|rel| s.read(&rel, offset, size as usize).map_err(Errno::from))
        {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        match s.rel(ino) {
            Ok(rel) => {
                s.pending
                    .entry(rel)
                    .or_default()
                    .push(Op::Write(offset, data.to_vec()));
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        match s.rel(ino).and_then(|rel| s.sync(&rel).map_err(Errno::from)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.state();
        let listed = s.rel(ino).and_then(|rel| {
            let mut names: Vec<(String, bool)> = std::fs::read_dir(s.root.join(&rel))
                .map_err(Errno::from)?
                .filter_map(|e| e.ok())
                .map(|e| {
                    let dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                    (e.file_name().to_string_lossy().into_owned(), dir)
                })
                .collect();
            names.sort();
            Ok((rel, names))
        });
        let (rel, names) = match listed {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let mut entries = vec![(ino.0, FileType::Directory, ".".to_string())];
        entries.push((ino.0, FileType::Directory, "..".to_string()));
        for (name, dir) in names {
            let kind = if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            entries.push((s.ino(&rel.join(&name)), kind, name));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory operations are applied to the backing directory at once.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = self.state().root.clone();
        match nix::sys::statvfs::statvfs(&root) {
            Ok(st) => reply.statfs(
                st.blocks(),
                st.blocks_free(),
                st.blocks_available(),
                st.files(),
                st.files_free(),
                st.block_size() as u32,
                st.name_max() as u32,
                st.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }
}

/// A mounted [`LazyFs`]; unmounted when dropped (unsynced writes are then lost too).
pub struct LazyFs {
    session: Option<BackgroundSession>,
    state: Arc<Mutex<State>>,
    at: PathBuf,
}

impl LazyFs {
    /// Mounts a lazy view of `backing` at `at`.
    pub fn mount(backing: &Path, at: &Path) -> std::io::Result<LazyFs> {
        ensure_fuse_device();
        std::fs::create_dir_all(backing)?;
        std::fs::create_dir_all(at)?;
        let mut state = State {
            root: backing.to_path_buf(),
            next: 1,
            ..State::default()
        };
        state.inos.insert(PathBuf::new(), 1);
        state.paths.insert(1, PathBuf::new());
        let state = Arc::new(Mutex::new(state));
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("lazyfs".into())];
        let session = fuser::spawn_mount2(Fs(state.clone()), at, &config)?;
        Ok(LazyFs {
            session: Some(session),
            state,
            at: at.to_path_buf(),
        })
    }

    /// Bytes written and not synced, over all files.
    pub fn unsynced_bytes(&self) -> usize {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.pending
            .values()
            .flatten()
            .map(|op| match op {
                Op::Write(_, d) => d.len(),
                Op::Truncate(_) => 0,
            })
            .sum()
    }

    /// The power goes: every write not yet synced is lost, and the filesystem goes away.
    pub fn power_cut(mut self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .clear();
        self.unmount();
    }

    fn unmount(&mut self) {
        if let Some(session) = self.session.take() {
            drop(session);
            // Still mounted when a process kept a file open (a failed test leaves its
            // members running): detach it, so the test's directory can be removed.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.at)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Loads the kernel's FUSE module and makes `/dev/fuse` (character device 10:229) where a
/// machine has neither yet; mounting then fails with its own message if FUSE is not there.
fn ensure_fuse_device() {
    if Path::new("/dev/fuse").exists() {
        return;
    }
    let quiet = |cmd: &mut std::process::Command| {
        let _ = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    };
    quiet(std::process::Command::new("modprobe").arg("fuse"));
    if !Path::new("/dev/fuse").exists() {
        quiet(std::process::Command::new("mknod").args([
            "-m",
            "666",
            "/dev/fuse",
            "c",
            "10",
            "229",
        ]));
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.unmount();
    }
}
