//! A tensor's elements: owned, or a read-only run of a memory-mapped file. Weights read from
//! a model's external data stay in their file as mapped runs: the kernel pages them in when
//! they are read and drops them under pressure, so compiling a model never needs its weights
//! in memory at once (and a model larger than memory compiles). Views of a mapped run (a rank's
//! block of experts) are views again; anything that writes takes an owned copy.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

pub enum Buf<T> {
    Owned(Vec<T>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        /// Byte offset of the first element (a multiple of its size).
        offset: usize,
        len: usize,
        elem: PhantomData<T>,
    },
}

/// A read-only map of a whole file, shared by every tensor read from it.
///
/// # Safety
/// The file must not be changed while the map lives (a model being compiled is only read).
pub unsafe fn map_file(file: &std::fs::File) -> std::io::Result<Arc<memmap2::Mmap>> {
    memmap2::Mmap::map(file).map(Arc::new)
}

/// The map of the file at `path`, shared with every live tensor already read from it (one map
/// per external-data file, released with the last tensor that reads it).
///
/// # Safety
/// As `map_file`: the file is not changed while any tensor read from it lives.
pub unsafe fn map_path(path: &std::path::Path) -> std::io::Result<Arc<memmap2::Mmap>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, Weak};
    static MAPS: Mutex<Option<HashMap<std::path::PathBuf, Weak<memmap2::Mmap>>>> = Mutex::new(None);
    let mut maps = MAPS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let maps = maps.get_or_insert_with(HashMap::new);
    if let Some(live) = maps.get(path).and_then(Weak::upgrade) {
        return Ok(live);
    }
    let map = map_file(&std::fs::File::open(path)?)?;
    maps.retain(|_, w| w.strong_count() > 0);
    maps.insert(path.to_owned(), Arc::downgrade(&map));
    Ok(map)
}

impl<T: bytemuck::Pod> Buf<T> {
    /// `len` elements at byte `offset` of `map`; None when the run is out of the file or not
    /// aligned for `T` (the caller reads it instead).
    pub fn mapped(map: &Arc<memmap2::Mmap>, offset: usize, len: usize) -> Option<Buf<T>> {
        let size = std::mem::size_of::<T>();
        let end = len.checked_mul(size)?.checked_add(offset)?;
        let aligned = (map.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<T>());
        (end <= map.len() && aligned).then(|| Buf::Mapped {
            map: Arc::clone(map),
            offset,
            len,
            elem: PhantomData,
        })
    }

    /// The elements as an owned vector (a copy of a mapped run).
    pub fn into_vec(self) -> Vec<T> {
        match self {
            Buf::Owned(v) => v,
            m => m.to_vec(),
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Buf::Mapped { .. })
    }

    /// `parts` runs of `per` elements: views of a mapped run; an owned vector is split by
    /// moving the later parts out, the first keeping (shrinking) the allocation.
    pub fn split(self, parts: usize, per: usize) -> Vec<Buf<T>> {
        match self {
            Buf::Owned(mut v) => {
                let mut blocks: Vec<Buf<T>> = (1..parts)
                    .rev()
                    .map(|p| Buf::Owned(v.split_off(p * per)))
                    .collect();
                v.shrink_to_fit();
                blocks.push(Buf::Owned(v));
                blocks.reverse();
                blocks
            }
            Buf::Mapped { map, offset, .. } => (0..parts)
                .map(|p| Buf::Mapped {
                    map: Arc::clone(&map),
                    offset: offset + p * per * std::mem::size_of::<T>(),
                    len: per,
                    elem: PhantomData,
                })
                .collect(),
        }
    }
}

impl<T: bytemuck::Pod> Deref for Buf<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Buf::Owned(v) => v,
            Buf::Mapped {
                map, offset, len, ..
            } => {
                let bytes = &map[*offset..*offset + len * std::mem::size_of::<T>()];
                // Alignment and bounds were checked when the run was made.
                bytemuck::cast_slice(bytes)
            }
        }
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for Buf<T> {
    /// Copy on write: a mapped run becomes owned before it is changed (the file never is).
    fn deref_mut(&mut self) -> &mut [T] {
        if let Buf::Mapped { .. } = self {
            *self = Buf::Owned(self.to_vec());
        }
        match self {
            Buf::Owned(v) => v,
            Buf::Mapped { .. } => unreachable!("made owned above"),
        }
    }
}

impl<T> FromIterator<T> for Buf<T> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Buf<T> {
        Buf::Owned(it.into_iter().collect())
    }
}

impl<T> From<Vec<T>> for Buf<T> {
    fn from(v: Vec<T>) -> Buf<T> {
        Buf::Owned(v)
    }
}

impl<T: Clone> Clone for Buf<T> {
    fn clone(&self) -> Buf<T> {
        match self {
            Buf::Owned(v) => Buf::Owned(v.clone()),
            Buf::Mapped {
                map, offset, len, ..
            } => Buf::Mapped {
                map: Arc::clone(map),
                offset: *offset,
                len: *len,
                elem: PhantomData,
            },
        }
    }
}

impl<T: bytemuck::Pod + PartialEq> PartialEq for Buf<T> {
    fn eq(&self, other: &Buf<T>) -> bool {
        **self == **other
    }
}

impl<T: bytemuck::Pod + fmt::Debug> fmt::Debug for Buf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_mapped_run_reads_its_file_and_splits_into_views() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
        f.write_all(&[0u8; 8]).unwrap();
        f.write_all(bytemuck::cast_slice(&v)).unwrap();
        f.flush().unwrap();
        // SAFETY: the test's own file, unchanged while mapped.
        let map = unsafe { map_file(f.as_file()) }.unwrap();
        let b = Buf::<f32>::mapped(&map, 8, 12).unwrap();
        assert_eq!(&b[..], &v[..]);
        let parts = b.split(3, 4);
        assert!(parts.iter().all(Buf::is_mapped));
        assert_eq!(&parts[2][..], &v[8..]);
        assert!(Buf::<f32>::mapped(&map, 8, 13).is_none(), "past the end");
        assert!(Buf::<f32>::mapped(&map, 2, 1).is_none(), "unaligned");
        let owned = Buf::from(v.clone()).split(2, 6);
        assert_eq!(&owned[1][..], &v[6..]);
    }
}
