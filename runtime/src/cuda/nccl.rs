//! NCCL, loaded at run time. cudarc's loader looks for `libnccl.so` and CUDA-versioned names, but
//! NCCL's runtime package installs `libnccl.so.2` (the unversioned name comes only with the -dev
//! package), so the dozen entry points the runtime uses are bound here, by hand, from whichever of
//! the two is found. A missing library or entry point is an error naming what was looked for.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::sync::OnceLock;

pub type CommHandle = *mut c_void;
type Result_ = c_int;
type Stream = *mut c_void;

/// ncclUniqueId: 128 opaque bytes rank 0 makes and every rank needs (a C struct, passed by value).
pub const UNIQUE_ID_BYTES: usize = 128;
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [u8; UNIQUE_ID_BYTES],
}
const NCCL_SUCCESS: c_int = 0;
/// ncclDataType_t values.
pub const NCCL_UINT8: c_int = 1;
pub const NCCL_INT64: c_int = 4;
pub const NCCL_FLOAT32: c_int = 7;
pub const NCCL_BFLOAT16: c_int = 9;
const NCCL_SUM: c_int = 0;
/// The color that leaves a rank out of a split.
const NCCL_SPLIT_NOCOLOR: c_int = -1;

/// The library names tried, in order.
const NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

pub struct Nccl {
    _lib: libloading::Library,
    pub path: String,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> Result_,
    comm_init_rank: unsafe extern "C" fn(*mut CommHandle, c_int, UniqueId, c_int) -> Result_,
    comm_split:
        unsafe extern "C" fn(CommHandle, c_int, c_int, *mut CommHandle, *mut c_void) -> Result_,
    comm_destroy: unsafe extern "C" fn(CommHandle) -> Result_,
    comm_abort: unsafe extern "C" fn(CommHandle) -> Result_,
    get_error_string: unsafe extern "C" fn(Result_) -> *const c_char,
    get_version: unsafe extern "C" fn(*mut c_int) -> Result_,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        CommHandle,
        Stream,
    ) -> Result_,
    all_gather: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        CommHandle,
        Stream,
    ) -> Result_,
    send: unsafe extern "C" fn(*const c_void, usize, c_int, c_int, CommHandle, Stream) -> Result_,
    recv: unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, CommHandle, Stream) -> Result_,
    group_start: unsafe extern "C" fn() -> Result_,
    group_end: unsafe extern "C" fn() -> Result_,
}

// SAFETY: the function pointers are plain C entry points; NCCL's own rules (one thread drives a
// communicator at a time) are kept by the runtime, which drives each communicator from one thread.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

/// Where the library is looked for: the dynamic loader's own search (LD_LIBRARY_PATH, the cache),
/// then the usual install folders, by full path.
fn candidates() -> Vec<String> {
    let mut c: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/nccl/lib",
    ] {
        for n in NAMES {
            c.push(PathBuf::from(dir).join(n).display().to_string());
        }
    }
    c
}

/// NCCL, loaded once per process.
pub fn nccl() -> Result<&'static Nccl, String> {
    static LOADED: OnceLock<Result<Nccl, String>> = OnceLock::new();
    LOADED.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> Result<Nccl, String> {
    let tried = candidates();
    let (lib, path) = tried
        .iter()
        // SAFETY: loading NCCL runs its initialisers, which have no preconditions.
        .find_map(|p| unsafe { libloading::Library::new(p) }.ok().map(|l| (l, p.clone())))
        .ok_or_else(|| format!("libnccl (NCCL's runtime library) was not found; looked for {} on LD_LIBRARY_PATH and in the system folders ({})", NAMES.join(" and "), tried.join(", ")))?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol's type is NCCL's documented C signature for that name.
            *unsafe { lib.get($name.as_bytes()) }.map_err(|e| {
                format!(
                    "{path}: has no {} ({e}); NCCL 2.18 or newer is needed",
                    $name
                )
            })?
        };
    }
    Ok(Nccl {
        get_unique_id: sym!("ncclGetUniqueId"),
        comm_init_rank: sym!("ncclCommInitRank"),
        comm_split: sym!("ncclCommSplit"),
        comm_destroy: sym!("ncclCommDestroy"),
        comm_abort: sym!("ncclCommAbort"),
        get_error_string: sym!("ncclGetErrorString"),
        get_version: sym!("ncclGetVersion"),
        all_reduce: sym!("ncclAllReduce"),
        all_gather: sym!("ncclAllGather"),
        send: sym!("ncclSend"),
        recv: sym!("ncclRecv"),
        group_start: sym!("ncclGroupStart"),
        group_end: sym!("ncclGroupEnd"),
        _lib: lib,
        path,
    })
}

impl Nccl {
    fn check(&self, what: &str, r: Result_) -> Result<(), String> {
        if r == NCCL_SUCCESS {
            return Ok(());
        }
        // SAFETY: NCCL returns a static string for every result code.
        let msg = unsafe { CStr::from_ptr((self.get_error_string)(r)) }
            .to_string_lossy()
            .into_owned();
        Err(format!("{what}: NCCL error {r}: {msg}"))
    }

    /// NCCL's version as major.minor.patch.
    pub fn version(&self) -> Result<String, String> {
        let mut v = 0;
        // SAFETY: writes one int.
        self.check("ncclGetVersion", unsafe { (self.get_version)(&mut v) })?;
        Ok(format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100))
    }

    pub fn unique_id(&self) -> Result<[u8; UNIQUE_ID_BYTES], String> {
        let mut id = UniqueId {
            internal: [0; UNIQUE_ID_BYTES],
        };
        // SAFETY: writes the 128-byte struct.
        self.check("ncclGetUniqueId", unsafe { (self.get_unique_id)(&mut id) })?;
        Ok(id.internal)
    }

    /// The world communicator; every rank calls this with the same id (the current CUDA context
    /// decides the GPU).
    pub fn init_rank(
        &self,
        world: usize,
        id: [u8; UNIQUE_ID_BYTES],
        rank: usize,
    ) -> Result<CommHandle, String> {
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` receives the handle.
        self.check("ncclCommInitRank", unsafe {
            (self.comm_init_rank)(
                &mut comm,
                world as c_int,
                UniqueId { internal: id },
                rank as c_int,
            )
        })?;
        Ok(comm)
    }

    /// A sub-communicator: collective over `parent`; ranks with `key = None` stay out of it.
    ///
    /// # Safety
    /// `parent` must be a live communicator made by this library.
    pub unsafe fn split(
        &self,
        parent: CommHandle,
        member_key: Option<usize>,
    ) -> Result<Option<CommHandle>, String> {
        let mut comm = std::ptr::null_mut();
        let (color, key) = match member_key {
            Some(k) => (0, k as c_int),
            None => (NCCL_SPLIT_NOCOLOR, 0),
        };
        // SAFETY: `comm` receives the handle (or null for NOCOLOR); a null config means defaults.
        self.check("ncclCommSplit", unsafe {
            (self.comm_split)(parent, color, key, &mut comm, std::ptr::null_mut())
        })?;
        Ok(member_key.map(|_| comm))
    }

    /// # Safety
    /// `comm` must be a live communicator made by this library, destroyed only here, once.
    pub unsafe fn destroy(&self, comm: CommHandle) {
        // SAFETY: each handle is destroyed once, by its owner.
        let _ = unsafe { (self.comm_destroy)(comm) };
    }

    /// Ends a communicator without waiting for its outstanding work (which a failed or lost
    /// peer may never complete): the path out of a failed run, where `destroy` could wait.
    ///
    /// # Safety
    /// As `destroy`.
    pub unsafe fn abort(&self, comm: CommHandle) {
        // SAFETY: each handle is ended once, by its owner.
        let _ = unsafe { (self.comm_abort)(comm) };
    }

    /// Sums `count` elements of `dtype` over the communicator, `send` into `recv` (device
    /// pointers).
    ///
    /// # Safety
    /// Both pointers are device buffers of at least `count` elements, valid until `stream` passes.
    pub unsafe fn all_reduce_sum(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        dtype: c_int,
        comm: CommHandle,
        stream: Stream,
    ) -> Result<(), String> {
        self.check(
            "ncclAllReduce",
            (self.all_reduce)(send as _, recv as _, count, dtype, NCCL_SUM, comm, stream),
        )
    }

    /// # Safety
    /// `send` holds `count` elements, `recv` `count` × the communicator's size.
    pub unsafe fn all_gather(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        dtype: c_int,
        comm: CommHandle,
        stream: Stream,
    ) -> Result<(), String> {
        self.check(
            "ncclAllGather",
            (self.all_gather)(send as _, recv as _, count, dtype, comm, stream),
        )
    }

    /// # Safety
    /// `buf` holds `count` elements.
    pub unsafe fn send(
        &self,
        buf: u64,
        count: usize,
        dtype: c_int,
        peer: usize,
        comm: CommHandle,
        stream: Stream,
    ) -> Result<(), String> {
        self.check(
            "ncclSend",
            (self.send)(buf as _, count, dtype, peer as c_int, comm, stream),
        )
    }

    /// # Safety
    /// `buf` holds `count` elements.
    pub unsafe fn recv(
        &self,
        buf: u64,
        count: usize,
        dtype: c_int,
        peer: usize,
        comm: CommHandle,
        stream: Stream,
    ) -> Result<(), String> {
        self.check(
            "ncclRecv",
            (self.recv)(buf as _, count, dtype, peer as c_int, comm, stream),
        )
    }

    pub fn group_start(&self) -> Result<(), String> {
        // SAFETY: no arguments.
        self.check("ncclGroupStart", unsafe { (self.group_start)() })
    }

    pub fn group_end(&self) -> Result<(), String> {
        // SAFETY: no arguments.
        self.check("ncclGroupEnd", unsafe { (self.group_end)() })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nccl_loads_or_says_which_library_it_looked_for() {
        match super::nccl() {
            // A machine with NCCL: the entry points bound, and a version it reports.
            Ok(n) => assert!(n.version().unwrap().starts_with("2."), "{}", n.path),
            // One without: the library named, and where it was looked for.
            Err(e) => {
                assert!(
                    e.contains("libnccl.so.2") && e.contains("LD_LIBRARY_PATH"),
                    "{e}"
                );
                assert!(e.contains("/usr/lib/x86_64-linux-gnu/libnccl.so.2"), "{e}");
            }
        }
    }
}
