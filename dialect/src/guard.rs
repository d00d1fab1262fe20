//! Text MLIR's parser does not survive: refused before it is parsed, by name. IR given as input
//! is anyone's text, and a crash inside MLIR (C++) takes the process with it.

/// Refuses what would crash MLIR 22's parser.
pub fn check(text: &str) -> Result<(), String> {
    check_result_numbers(text)?;
    check_dense_clauses(text)?;
    check_concat_dims(text)
}

/// A use of result `%v#N` with N past any op's result count: MLIR's parser aborts the process
/// (out of memory) on a number near 2^31 instead of reporting it, so such text is refused here.
fn check_result_numbers(text: &str) -> Result<(), String> {
    const MAX_RESULT: u64 = 1 << 16;
    let b = text.as_bytes();
    for (at, _) in text.match_indices('#') {
        let after_name = at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let digits: String = text[at + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .take(21)
            .collect();
        let too_large = digits.parse::<u64>().map_or(true, |n| n > MAX_RESULT);
        if after_name && !digits.is_empty() && too_large {
            return Err(format!(
                "result number #{digits} at offset {at}: past any op's results (at most {MAX_RESULT})"
            ));
        }
    }
    Ok(())
}

/// linalg's custom clauses `permutation = [..]` (transpose) and `dimensions = [..]` (broadcast,
/// reduce): MLIR 22's parsers set a null attribute and crash when what follows `=` is not a
/// well-formed list of integers (`permutation =<1x1> [1, 0]`, `[1, 0`, `[1, x]`). A key of an
/// attribute dictionary (after `{` or `,`) goes through the generic parser, which reports.
fn check_dense_clauses(text: &str) -> Result<(), String> {
    for key in ["permutation", "dimensions"] {
        for (at, _) in text.match_indices(key) {
            let before = text[..at].trim_end();
            let whole_word = is_word_at(text, at, key.len());
            let dictionary_key = before.ends_with('{') || before.ends_with(',');
            let Some(value) = text[at + key.len()..].trim_start().strip_prefix('=') else {
                continue;
            };
            if whole_word && !dictionary_key && !integer_list(value.trim_start()) {
                return Err(format!(
                    "'{key} =' at offset {at}: expected a list of i64 integers in brackets"
                ));
            }
        }
    }
    Ok(())
}

/// `tensor.concat`'s `dim`, custom (`dim(1)`) or generic (`<{dim = 1 : i64}>`): MLIR 22's
/// verifier crashes on one that is negative as an i64 (`dim(-1)`,
/// `dim(18446744073709551615)`). The first `dim` after each `tensor.concat` must be a
/// decimal below 2^31.
fn check_concat_dims(text: &str) -> Result<(), String> {
    for (at, op) in text.match_indices("tensor.concat") {
        if !is_word_at(text, at, op.len()) {
            continue;
        }
        let after = &text[at + op.len()..];
        let Some(key) = find_word(after, "dim") else {
            continue;
        };
        let rest = after[key + 3..].trim_start();
        let Some(rest) = rest.strip_prefix('(').or_else(|| rest.strip_prefix('=')) else {
            continue;
        };
        let literal: String = (rest.trim_start().chars())
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '+')
            .collect();
        let small = literal.bytes().all(|b| b.is_ascii_digit())
            && literal.parse::<u32>().is_ok_and(|d| d < 1 << 31);
        if !small {
            return Err(format!(
                "tensor.concat at offset {at}: dim '{literal}' is not a dimension (a decimal below 2^31)"
            ));
        }
    }
    Ok(())
}

/// Where `word` first occurs in `text` as a whole word.
fn find_word(text: &str, word: &str) -> Option<usize> {
    (text.match_indices(word))
        .map(|(at, _)| at)
        .find(|&at| is_word_at(text, at, word.len()))
}

/// Whether the `len` bytes at `at` are a whole word: no identifier character either side.
fn is_word_at(text: &str, at: usize, len: usize) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    !text[..at].ends_with(ident) && !text[at + len..].starts_with(ident)
}

/// Whether `text` begins with `[`, integers separated by commas, `]`, each an i64 (MLIR 22's
/// parser crashes on one past i64, `[18446744073709551615, 2, 1, 3]`, where it reports one
/// that is merely out of the op's range).
fn integer_list(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('[') else {
        return false;
    };
    let Some(end) = rest.find(']') else {
        return false;
    };
    let inner = rest[..end].trim();
    inner.is_empty()
        || inner.split(',').all(|n| {
            let n = n.trim();
            let digits = n.strip_prefix('-').unwrap_or(n);
            !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && n.parse::<i64>().is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn clauses_mlir_crashes_on_are_refused_and_good_ones_pass() {
        let op = |clause: &str| format!("%t = linalg.transpose ins(%a : t) outs(%d : t) {clause}");
        for good in [
            "permutation = [1, 0]",
            "permutation = []",
            "dimensions = [0]",
            // Out of the op's range but an i64: MLIR's verifier reports it.
            "permutation = [-1, 2, 1, 3]",
            "permutation = [9223372036854775807, 0]",
        ] {
            assert!(check(&op(good)).is_ok(), "{good}");
        }
        for bad in [
            "permutation =<1x1> [1, 0]",
            "permutation = [1, 0",
            "permutation = [1, x]",
            "permutation = array<i64: 1, 0>",
            "dimensions = [,]",
            "permutation = [18446744073709551615, 2, 1, 3]",
            "permutation = [9223372036854775808, 0]",
            "dimensions = [-9223372036854775809]",
        ] {
            assert!(check(&op(bad)).is_err(), "{bad}");
        }
        // Dictionary entries (the generic form) and other words are the generic parser's.
        let generic = "\"linalg.transpose\"(%a, %d) <{permutation = array<i64: 1, 0>}>";
        assert!(check(generic).is_ok());
        assert!(check("{a = 1, dimensions = array<i64: 0>}").is_ok());
        assert!(check("%permutations = foo").is_ok());
    }

    #[test]
    fn a_concat_dim_mlir_crashes_on_is_refused() {
        let custom = |d: &str| format!("%c = tensor.concat dim({d}) %a, %b : (t, t) -> t");
        let generic = |d: &str| format!("%c = \"tensor.concat\"(%a, %b) <{{dim = {d} : i64}}>");
        for ok in ["0", "1", "7"] {
            assert!(check(&custom(ok)).is_ok(), "{ok}");
            assert!(check(&generic(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "-1",
            "18446744073709551615",
            "0xFFFFFFFFFFFFFFFF",
            "2147483648",
        ] {
            assert!(check(&custom(bad)).is_err(), "{bad}");
            assert!(check(&generic(bad)).is_err(), "{bad}");
        }
        // Another op's attribute named like it is not the concat's.
        assert!(check("%c = tensor.concat_like dim(-1)").is_ok());
    }

    #[test]
    fn result_numbers_past_any_ops_results_are_refused() {
        assert!(check("%v#2147483647").is_err());
        assert!(check("%v#1").is_ok());
    }
}
