//! safetensors files written and read one tensor at a time: the writer hashes while it writes
//! and never holds more than one tensor's bytes; the reader parses the header, then reads each
//! tensor's range by itself. The files are ordinary safetensors (the `safetensors` crate reads
//! them): an 8-byte little-endian header length, a JSON header padded with spaces to a multiple
//! of 8, then the tensors' bytes back to back.

use crate::tensor::{numel, DType, Tensor};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A header larger than this is refused (a real one is kilobytes).
const MAX_HEADER_BYTES: u64 = 100 << 20;

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::I8 => "I8",
        DType::I16 => "I16",
        DType::I32 => "I32",
        DType::I64 => "I64",
        DType::U8 => "U8",
        DType::U16 => "U16",
        DType::U32 => "U32",
        DType::U64 => "U64",
        DType::Bool => "BOOL",
    }
}

fn dtype_of(name: &str) -> Option<DType> {
    [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
    ]
    .into_iter()
    .find(|&d| dtype_name(d) == name)
}

/// A tensor's bytes in its stored type; checked arithmetic on the count.
fn byte_len(t: &Tensor) -> Option<u64> {
    let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    u64::try_from(n.checked_mul(t.dtype.size())?).ok()
}

/// Writes `weights` to `path`, one tensor at a time, calling `progress` after each; returns the
/// file's sha256 (hex), computed while writing.
pub fn write_file(
    path: &Path,
    weights: &[(String, Tensor)],
    mut progress: impl FnMut(&str),
) -> Result<String, String> {
    let mut seen = std::collections::HashSet::new();
    if let Some((dup, _)) = weights.iter().find(|(n, _)| !seen.insert(n.as_str())) {
        return Err(format!("two weights are named '{dup}'"));
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, t) in weights {
        let len = byte_len(t)
            .ok_or_else(|| format!("weight '{name}' of shape {:?}: its size overflows", t.shape))?;
        let end = offset
            .checked_add(len)
            .ok_or("the weights' total size overflows")?;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype_name(t.dtype), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut out = std::io::BufWriter::with_capacity(8 << 20, file);
    let mut hash = Sha256::new();
    let mut put = |bytes: &[u8]| -> Result<(), String> {
        hash.update(bytes);
        out.write_all(bytes).map_err(|e| e.to_string())
    };
    put(&(head.len() as u64).to_le_bytes())?;
    put(&head)?;
    for (name, t) in weights {
        t.write_bytes(&mut put)?;
        progress(name);
    }
    out.flush().map_err(|e| e.to_string())?;
    out.into_inner()
        .map_err(|e| e.to_string())?
        .sync_all()
        .map_err(|e| e.to_string())?;
    Ok(crate::bundle::hex(&hash.finalize()))
}

/// One entry of a file's header.
pub struct Entry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

/// A safetensors file opened for reading tensor by tensor.
pub struct Reader {
    file: std::fs::File,
    entries: std::collections::HashMap<String, Entry>,
}

impl Reader {
    /// Reads and checks the header: every range inside the file and of the size its dtype and
    /// shape say.
    pub fn open(path: &Path) -> Result<Reader, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0)
            .map_err(|e| format!("not a safetensors file: {e}"))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES || n.saturating_add(8) > size {
            return Err(format!(
                "not a safetensors file: a header of {n} bytes in a file of {size}"
            ));
        }
        let mut head = vec![0u8; n as usize];
        file.read_exact_at(&mut head, 8)
            .map_err(|e| e.to_string())?;
        let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&head)
            .map_err(|e| format!("not a safetensors file: the header is not a JSON object: {e}"))?;
        let data_start = 8 + n;
        let mut entries = std::collections::HashMap::new();
        for (name, v) in json {
            if name == "__metadata__" {
                continue;
            }
            let bad = |what: &str| format!("tensor '{name}': {what}");
            let dtype = v
                .get("dtype")
                .and_then(|d| d.as_str())
                .and_then(dtype_of)
                .ok_or_else(|| bad("unknown or missing dtype"))?;
            let shape: Vec<usize> = v
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("a dimension is not a count"))?;
            let offs: Vec<u64> = v
                .get("data_offsets")
                .and_then(|s| s.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default();
            let [a, b] = offs[..] else {
                return Err(bad("data_offsets must be two numbers"));
            };
            let want = shape
                .iter()
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad("its size overflows"))?;
            let (start, end) = (data_start.saturating_add(a), data_start.saturating_add(b));
            if a > b || b - a != want as u64 || end > size {
                return Err(bad(&format!(
                    "bytes {a}..{b} do not hold {want} bytes inside the file"
                )));
            }
            entries.insert(
                name,
                Entry {
                    dtype,
                    shape,
                    start,
                    end,
                },
            );
        }
        Ok(Reader { file, entries })
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Reads one tensor (only its bytes are held, and only while it is converted).
    pub fn tensor(&self, name: &str) -> Result<Tensor, String> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| format!("weight '{name}' is missing"))?;
        let mut buf = vec![0u8; (e.end - e.start) as usize];
        self.file
            .read_exact_at(&mut buf, e.start)
            .map_err(|err| format!("weight '{name}': {err}"))?;
        debug_assert_eq!(buf.len(), numel(&e.shape) * e.dtype.size());
        Tensor::from_bytes(e.dtype, e.shape.clone(), &buf)
            .ok_or_else(|| format!("weight '{name}' has the wrong size"))
    }
}

/// The sha256 (hex) of a file, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    std::io::copy(&mut f, &mut hash)?;
    Ok(crate::bundle::hex(&hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_file_reads_back_with_the_safetensors_crate_and_its_hash_is_the_files() {
        let dir = std::env::temp_dir().join(format!("ppmoe-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.safetensors");
        let w = vec![
            (
                "a".to_string(),
                Tensor::f32(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 5.0, 6.25]),
            ),
            (
                "b".to_string(),
                Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]).with_dtype(DType::BF16),
            ),
            ("c".to_string(), Tensor::i64(vec![1], vec![-7])),
        ];
        let hash = write_file(&p, &w, |_| {}).unwrap();
        assert_eq!(hash, sha256_file(&p).unwrap());
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("a").unwrap().shape(), &[2, 3]);
        let r = Reader::open(&p).unwrap();
        for (n, t) in &w {
            let back = r.tensor(n).unwrap();
            assert_eq!(
                (back.dtype, &back.shape, back.to_f32()),
                (t.dtype, &t.shape, t.to_f32()),
                "{n}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_range_past_the_end_or_of_the_wrong_size_is_refused() {
        let dir = std::env::temp_dir().join(format!("ppmoe-st-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.safetensors");
        let head = br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(head);
        bytes.extend_from_slice(&[0u8; 8]);
        std::fs::write(&p, &bytes).unwrap();
        let err = Reader::open(&p).err().unwrap();
        assert!(err.contains("tensor 'a'"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
