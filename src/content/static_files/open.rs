//! Opening a path under a static root without ever leaving it. On Linux 5.6 and later one
//! `openat2(RESOLVE_BENEATH)` from the root's directory descriptor does it: the kernel
//! refuses `..`, absolute symlinks and symlinks that lead out. Where that call is missing
//! (older kernels, seccomp filters) or refuses a symlink (an absolute one may still point
//! inside the root), the portable path decides: canonicalize, check the prefix, open,
//! and check the opened file's `/proc/self/fd` link again.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

/// Why a path under the root could not be opened.
#[derive(Debug, Error)]
pub(super) enum OpenError {
    /// The path resolves (through a symlink) outside the root.
    #[error("resolves outside the root")]
    Outside,
    /// The filesystem said no.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// `struct open_how` of linux/openat2.h.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_BENEATH: u64 = 0x08;

/// A static root, held open.
#[derive(Debug)]
pub(super) struct RootDir {
    root: PathBuf,
    /// `O_PATH` descriptor of the root (`None`: could not be opened; portable path only).
    dir: Option<OwnedFd>,
    /// `openat2` is not available here: use the portable path.
    no_openat2: AtomicBool,
}

impl RootDir {
    /// Holds `root` (canonical) open.
    pub(super) fn new(root: &Path) -> Self {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(root)
            .ok()
            .map(OwnedFd::from);
        RootDir {
            root: root.to_path_buf(),
            dir,
            no_openat2: AtomicBool::new(false),
        }
    }

    /// Opens `relative` (a path of plain segments below the root, no `..`) for reading,
    /// without blocking on a FIFO.
    pub(super) fn open(&self, relative: &Path) -> Result<File, OpenError> {
        if let (Some(dir), false) = (&self.dir, self.no_openat2.load(Ordering::Relaxed)) {
            match openat2_beneath(dir, relative) {
                Ok(file) => return Ok(file),
                // No openat2 here: stop trying.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                    self.no_openat2.store(true, Ordering::Relaxed);
                }
                // A symlink the kernel would not follow beneath the root: an absolute
                // one may still lead inside; the portable path decides.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::ELOOP)) => {}
                Err(e) => return Err(OpenError::Io(e)),
            }
        }
        open_checked(&self.root, &self.root.join(relative))
    }
}

fn openat2_beneath(dir: &OwnedFd, relative: &Path) -> io::Result<File> {
    let bytes = relative.as_os_str().as_bytes();
    let path = CString::new(if bytes.is_empty() { b"." } else { bytes })
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 reads `path` (NUL-terminated) and `how` (of the size passed) and
    // returns a new descriptor or -1; both outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat2 just returned, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// The portable path: canonicalize `target`, check it is under `root` (itself
/// canonical), open it, and check again on the opened file (Linux: its `/proc/self/fd`
/// link) so a symlink swapped in between cannot lead out.
pub(super) fn open_checked(root: &Path, target: &Path) -> Result<File, OpenError> {
    let canonical = target.canonicalize()?;
    if !canonical.starts_with(root) {
        return Err(OpenError::Outside);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&canonical)?;
    #[cfg(target_os = "linux")]
    {
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        if let Ok(actual) = std::fs::read_link(link) {
            if !actual.starts_with(root) {
                return Err(OpenError::Outside);
            }
        }
    }
    Ok(file)
}
