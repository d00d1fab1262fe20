//! The local launcher's rendezvous port, held from the moment it is chosen until rank 0 listens
//! on it. Asking the kernel for a free port and releasing it for rank 0 to bind again leaves a
//! window in which another process (another job's launcher, NCCL's own bootstrap sockets) may
//! take it: rank 0 then fails with "Address already in use". Instead the launcher keeps the
//! bound listener open and rank 0 inherits it (as systemd's socket activation hands sockets),
//! named by `PPMOE_RENDEZVOUS_FD`.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

const FD_VAR: &str = "PPMOE_RENDEZVOUS_FD";

/// A listener on a free port of `host`, asked of the kernel.
pub fn bind_free(host: &str) -> Result<TcpListener, String> {
    TcpListener::bind((host, 0))
        .map_err(|e| format!("cannot find a free port on {host} for the rendezvous: {e}"))
}

/// Makes `listener` survive into the process `cmd` starts and tells it where to find it.
pub fn hand_to(cmd: &mut Command, listener: &TcpListener) {
    let fd = listener.as_raw_fd();
    cmd.env(FD_VAR, fd.to_string());
    // SAFETY: between fork and exec only fcntl, which is async-signal-safe, runs.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The listener the launcher handed this process, if it names one bound to `addr`; anything
/// else under that variable (a stale value, another socket) is left alone.
pub fn inherited(addr: SocketAddr) -> Option<TcpListener> {
    named_listener(&std::env::var(FD_VAR).ok()?, addr)
}

/// The listener on descriptor `fd_text` if it is a socket bound to `addr`'s port.
fn named_listener(fd_text: &str, addr: SocketAddr) -> Option<TcpListener> {
    let fd: RawFd = fd_text.trim().parse().ok()?;
    if !is_socket(fd) {
        return None;
    }
    // SAFETY: `fd` is an open socket of this process (checked above) that nothing else owns:
    // the launcher's copy stayed in the launcher.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    match listener.local_addr() {
        Ok(a) if a.port() == addr.port() => Some(listener),
        _ => {
            // Not ours to close.
            let _ = listener.into_raw_fd();
            None
        }
    }
}

fn is_socket(fd: RawFd) -> bool {
    // SAFETY: fstat writes only into the zeroed struct it is given.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_that_is_not_the_one_named_is_left_open() {
        let l = bind_free("127.0.0.1").unwrap();
        let other = bind_free("127.0.0.1").unwrap();
        let wrong_port = other.local_addr().unwrap();
        assert!(named_listener(&l.as_raw_fd().to_string(), wrong_port).is_none());
        assert!(named_listener("not a number", wrong_port).is_none());
        // Still open: its address can be read.
        assert!(l.local_addr().is_ok());
    }

    #[test]
    fn the_named_listener_is_taken_and_accepts() {
        let l = bind_free("127.0.0.1").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = l.into_raw_fd();
        let taken = named_listener(&fd.to_string(), addr).expect("the listener on the named port");
        let _client = std::net::TcpStream::connect(addr).unwrap();
        assert!(taken.accept().is_ok());
    }
}
