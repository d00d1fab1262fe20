//! Mutations of an input's bytes, AFL-like: bit flips, byte and integer overwrites with values
//! at the edges of their types, deletions, insertions, duplications, splices with another
//! input, and for text inputs numbers swapped for hostile ones.

/// xorshift64*: reproducible from a seed, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n (0 for n = 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const EDGES: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "65536",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "100000000000",
    "1e308",
    "-1e308",
    "NaN",
];

/// One to four mutations of `input`; `other` is another input of the corpus, for splices.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8], text: bool) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let n = v.len();
        match rng.below(if text { 9 } else { 7 }) {
            0 if n > 0 => {
                let i = rng.below(n);
                v[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                v[i] = rng.next() as u8;
            }
            2 if n > 0 => {
                let width = [1, 2, 4, 8][rng.below(4)];
                let at = rng.below(n);
                let bytes = EDGES[rng.below(EDGES.len())].to_le_bytes();
                for (k, b) in bytes.iter().take(width).enumerate() {
                    if let Some(x) = v.get_mut(at + k) {
                        *x = *b;
                    }
                }
            }
            3 if n > 1 => {
                let at = rng.below(n);
                let len = 1 + rng.below((n - at).min(64));
                v.drain(at..at + len);
            }
            4 => {
                let at = rng.below(n + 1);
                let len = 1 + rng.below(16);
                let fill: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                v.splice(at..at, fill);
            }
            5 if n > 1 => {
                let at = rng.below(n);
                let len = 1 + rng.below((n - at).min(256));
                let piece = v[at..at + len].to_vec();
                let to = rng.below(n + 1);
                v.splice(to..to, piece);
            }
            6 if !other.is_empty() && n > 0 => {
                let (cut, from) = (rng.below(n), rng.below(other.len()));
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            7 => replace_number(rng, &mut v),
            8 if n > 0 => {
                // A bracket or quote dropped or doubled: structure, not just values.
                let at = rng.below(n);
                let c = [b'[', b']', b'{', b'}', b'(', b')', b'"', b',', b'<', b'>'][rng.below(10)];
                v.insert(at, c);
            }
            _ => {}
        }
    }
    v
}

/// A run of decimal digits (with its sign) replaced by a number at an edge.
fn replace_number(rng: &mut Rng, v: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..v.len())
        .filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let s = starts[rng.below(starts.len())];
    let mut e = s;
    while e < v.len() && v[e].is_ascii_digit() {
        e += 1;
    }
    let s = if s > 0 && v[s - 1] == b'-' { s - 1 } else { s };
    let with = NUMBERS[rng.below(NUMBERS.len())].as_bytes().to_vec();
    v.splice(s..e, with);
}
