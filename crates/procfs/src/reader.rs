use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags, CWD};

/// An open `/proc/<pid>` directory.
///
/// Every file is opened relative to this directory, so all reads refer to the process
/// that held the pid when it was opened: once that process is reaped the reads fail
/// (`ESRCH`/`ENOENT`), even if the pid has been given to a new process in between.
/// This is how an event never mixes fields from two processes.
pub struct ProcDir {
    fd: OwnedFd,
}

/// The result of a bounded read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    Complete,
    /// The file held more than the limit; the buffer holds the first `limit` bytes.
    Truncated,
}

impl ProcDir {
    /// Opens `/proc/<pid>` (or `<root>/<pid>` for tests on a copied tree).
    ///
    /// # Errors
    /// `ENOENT` when the process is gone.
    pub fn open(root: &str, pid: u32) -> io::Result<Self> {
        let path = format!("{root}/{pid}");
        let fd = rustix::fs::openat(
            CWD,
            path.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(ProcDir { fd })
    }

    /// Reads the file `name` into `buf` (replacing its contents), at most `limit` bytes.
    ///
    /// # Errors
    /// When the file cannot be opened or read (the process is gone, or hides it).
    pub fn read(&self, name: &str, buf: &mut Vec<u8>, limit: usize) -> io::Result<ReadOutcome> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let file = File::from(fd);
        buf.clear();
        // One byte past the limit tells a full file from a truncated one.
        let n = file.take(limit as u64 + 1).read_to_end(buf)?;
        if n > limit {
            buf.truncate(limit);
            return Ok(ReadOutcome::Truncated);
        }
        Ok(ReadOutcome::Complete)
    }

    /// Reads the symbolic link `name` (`exe`, `cwd`, `ns/pid`).
    ///
    /// # Errors
    /// When the link cannot be read (the process is gone or a zombie, or access denied).
    pub fn read_link(&self, name: &str) -> io::Result<Vec<u8>> {
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new())?;
        Ok(target.into_bytes())
    }
}

/// Lists the numeric entries of a proc root: the pids of all processes.
///
/// # Errors
/// When the directory cannot be read.
pub fn list_pids(root: &str) -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_and_bounds_reads() {
        let me = ProcDir::open("/proc", std::process::id()).unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            me.read("stat", &mut buf, 4096).unwrap(),
            ReadOutcome::Complete
        );
        let stat = crate::parse_stat(&buf).unwrap();
        assert_eq!(stat.pid, std::process::id());
        assert_eq!(
            me.read("stat", &mut buf, 3).unwrap(),
            ReadOutcome::Truncated
        );
        assert_eq!(buf.len(), 3);
        assert!(!me.read_link("exe").unwrap().is_empty());
        assert!(list_pids("/proc").unwrap().contains(&std::process::id()));
    }

    #[test]
    fn a_reaped_process_cannot_be_read_through_its_old_dir() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let dir = ProcDir::open("/proc", child.id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let mut buf = Vec::new();
        assert!(dir.read("cmdline", &mut buf, 4096).is_err());
        assert!(dir.read_link("exe").is_err());
    }

    #[test]
    fn missing_process_is_an_error() {
        assert!(ProcDir::open("/proc", u32::MAX).is_err());
    }
}
