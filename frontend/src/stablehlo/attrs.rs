//! StableHLO's and Shardy's attributes, decoded from the text MLIR prints for them (the dialects
//! are not registered, so MLIR keeps them opaque): `array<i64: ...>`, `#stablehlo.dot<...>`,
//! `#stablehlo<comparison_direction ...>`, `#sdy.sharding_per_value<...>`, `#sdy.mesh<...>`.

/// `array<i64: 1, 0>` or `array<i64>` -> [1, 0] / [].
pub fn i64_array(s: &str) -> Result<Vec<i64>, String> {
    let body = s
        .trim()
        .strip_prefix("array<i64")
        .and_then(|r| r.strip_suffix('>'))
        .ok_or_else(|| format!("'{s}': expected array<i64: ...>"))?;
    let body = body.trim_start_matches(':').trim();
    if body.is_empty() {
        return Ok(vec![]);
    }
    body.split(',')
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| format!("'{s}': '{}' is not an integer", v.trim()))
        })
        .collect()
}

/// `4 : i64` -> 4.
pub fn integer(s: &str) -> Result<i64, String> {
    let v = s.split(':').next().unwrap_or("").trim();
    v.parse::<i64>()
        .map_err(|_| format!("'{s}': expected an integer attribute"))
}

/// `[1, 2]` inside a larger text -> [1, 2].
fn int_list(s: &str) -> Result<Vec<i64>, String> {
    let body = s
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| format!("'{s}': expected [..]"))?;
    if body.trim().is_empty() {
        return Ok(vec![]);
    }
    body.split(',')
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| format!("'{s}': '{}' is not an integer", v.trim()))
        })
        .collect()
}

/// The fields `name = [..]` of a `#dialect.kind<...>` attribute.
fn fields(s: &str, prefix: &str) -> Result<Vec<(String, String)>, String> {
    let body = s
        .trim()
        .strip_prefix(prefix)
        .and_then(|r| r.strip_suffix('>'))
        .ok_or_else(|| format!("'{s}': expected {prefix}...>"))?;
    let mut out = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("'{s}': expected name = value"))?;
        let after = after.trim_start();
        // A value runs to its closing bracket, or to the next comma.
        let end = if after.starts_with('[') {
            after.find(']').map(|i| i + 1)
        } else {
            after.find(',').or(Some(after.len()))
        }
        .ok_or_else(|| format!("'{s}': unclosed ["))?;
        out.push((name.trim().to_string(), after[..end].trim().to_string()));
        rest = after[end..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Ok(out)
}

/// dot_general's dimension numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DotDims {
    pub lhs_batch: Vec<i64>,
    pub rhs_batch: Vec<i64>,
    pub lhs_contract: Vec<i64>,
    pub rhs_contract: Vec<i64>,
}

/// `#stablehlo.dot<lhs_batching_dimensions = [0], ..., rhs_contracting_dimensions = [1]>`.
pub fn dot_dims(s: &str) -> Result<DotDims, String> {
    let mut d = DotDims::default();
    for (name, value) in fields(s, "#stablehlo.dot<")? {
        let v = int_list(&value)?;
        match name.as_str() {
            "lhs_batching_dimensions" => d.lhs_batch = v,
            "rhs_batching_dimensions" => d.rhs_batch = v,
            "lhs_contracting_dimensions" => d.lhs_contract = v,
            "rhs_contracting_dimensions" => d.rhs_contract = v,
            other => return Err(format!("'{s}': unknown dot dimension field {other}")),
        }
    }
    if d.lhs_batch.len() != d.rhs_batch.len() || d.lhs_contract.len() != d.rhs_contract.len() {
        return Err(format!(
            "'{s}': lhs and rhs list different numbers of dimensions"
        ));
    }
    Ok(d)
}

/// scatter's dimension numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScatterDims {
    pub update_window: Vec<i64>,
    pub inserted_window: Vec<i64>,
    pub to_operand: Vec<i64>,
    pub index_vector_dim: i64,
    /// Batching dimensions (newer StableHLO); ppmoe reads none.
    pub batching: bool,
}

/// `#stablehlo.scatter<update_window_dims = [1], inserted_window_dims = [0],
/// scatter_dims_to_operand_dims = [0], index_vector_dim = 1>`.
pub fn scatter_dims(s: &str) -> Result<ScatterDims, String> {
    let mut d = ScatterDims::default();
    for (name, value) in fields(s, "#stablehlo.scatter<")? {
        match name.as_str() {
            "update_window_dims" => d.update_window = int_list(&value)?,
            "inserted_window_dims" => d.inserted_window = int_list(&value)?,
            "scatter_dims_to_operand_dims" => d.to_operand = int_list(&value)?,
            "index_vector_dim" => {
                d.index_vector_dim = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("'{s}': index_vector_dim '{value}' is not an integer"))?
            }
            "input_batching_dims" | "scatter_indices_batching_dims" => {
                d.batching |= !int_list(&value)?.is_empty()
            }
            other => return Err(format!("'{s}': unknown scatter dimension field {other}")),
        }
    }
    Ok(d)
}

/// `#stablehlo<comparison_direction NE>` -> "NE" (and likewise for other enum attributes).
pub fn enum_value(s: &str, kind: &str) -> Result<String, String> {
    let prefix = format!("#stablehlo<{kind} ");
    s.trim()
        .strip_prefix(prefix.as_str())
        .and_then(|r| r.strip_suffix('>'))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("'{s}': expected {prefix}...>"))
}

/// `#sdy.mesh<["x"=4, "y"=2]>` -> [("x", 4), ("y", 2)].
pub fn mesh(s: &str) -> Result<Vec<(String, i64)>, String> {
    let body = s
        .trim()
        .strip_prefix("#sdy.mesh<[")
        .and_then(|r| r.strip_suffix("]>"))
        .ok_or_else(|| format!("'{s}': expected #sdy.mesh<[...]>"))?;
    body.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (n, size) = p
                .split_once('=')
                .ok_or_else(|| format!("'{s}': expected \"axis\"=size"))?;
            let size = size
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("'{s}': axis size '{}' is not an integer", size.trim()))?;
            Ok((n.trim().trim_matches('"').to_string(), size))
        })
        .collect()
}

/// One value's sharding: the mesh it names and, per dimension, the mesh axes it is split over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharding {
    pub mesh: String,
    pub dims: Vec<Vec<String>>,
}

/// `#sdy.sharding_per_value<[<@mesh, [{"x"}, {}]>, <@mesh, []>]>`.
pub fn shardings(s: &str) -> Result<Vec<Sharding>, String> {
    let body = s
        .trim()
        .strip_prefix("#sdy.sharding_per_value<[")
        .and_then(|r| r.strip_suffix("]>"))
        .ok_or_else(|| format!("'{s}': expected #sdy.sharding_per_value<[...]>"))?;
    let mut out = Vec::new();
    let mut rest = body.trim();
    while let Some(r) = rest.strip_prefix('<') {
        let end = r
            .find("]>")
            .ok_or_else(|| format!("'{s}': unclosed sharding"))?;
        let one = &r[..end + 1];
        let (mesh, dims) = one
            .split_once(',')
            .ok_or_else(|| format!("'{s}': expected <@mesh, [...]>"))?;
        let dims = dims
            .trim()
            .strip_prefix('[')
            .and_then(|d| d.strip_suffix(']'))
            .ok_or_else(|| format!("'{s}': expected a list of dimensions"))?;
        let mut per_dim = Vec::new();
        let mut d = dims.trim();
        while let Some(r2) = d.strip_prefix('{') {
            let close = r2.find('}').ok_or_else(|| format!("'{s}': unclosed {{"))?;
            // `{"x", ?}` is open: only the named axes matter here.
            let axes: Vec<String> = r2[..close]
                .split(',')
                .map(|a| a.trim().trim_matches('"').to_string())
                .filter(|a| !a.is_empty() && a != "?")
                .collect();
            per_dim.push(axes);
            d = r2[close + 1..]
                .trim_start()
                .trim_start_matches(',')
                .trim_start();
        }
        out.push(Sharding {
            mesh: mesh.trim().trim_start_matches('@').to_string(),
            dims: per_dim,
        });
        rest = r[end + 2..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Ok(out)
}

/// `#sdy<manual_axes{"x", "y"}>` -> ["x", "y"].
pub fn manual_axes(s: &str) -> Result<Vec<String>, String> {
    let body = s
        .trim()
        .strip_prefix("#sdy<manual_axes{")
        .and_then(|r| r.strip_suffix("}>"))
        .ok_or_else(|| format!("'{s}': expected #sdy<manual_axes{{...}}>"))?;
    Ok(body
        .split(',')
        .map(|a| a.trim().trim_matches('"').to_string())
        .filter(|a| !a.is_empty())
        .collect())
}

/// `@mesh_0` or `"mesh_0"` -> "mesh_0".
pub fn symbol(s: &str) -> String {
    s.trim()
        .trim_start_matches('@')
        .trim_matches('"')
        .to_string()
}

/// The mesh axes of `#stablehlo.replica_group_mesh_axes<mesh = @m, axes = [#stablehlo.axis_ref<name = "x">]>`.
pub fn replica_mesh_axes(s: &str) -> Result<(String, Vec<String>), String> {
    let body = s
        .trim()
        .strip_prefix("#stablehlo.replica_group_mesh_axes<")
        .and_then(|r| r.strip_suffix('>'))
        .ok_or_else(|| format!("'{s}': expected #stablehlo.replica_group_mesh_axes<...>"))?;
    let mesh = body
        .split("mesh =")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .map(symbol)
        .ok_or_else(|| format!("'{s}': no mesh"))?;
    let axes = body
        .split("name =")
        .skip(1)
        .map(|p| p.trim().split('"').nth(1).unwrap_or("").to_string())
        .collect();
    Ok((mesh, axes))
}

/// `#stablehlo.channel_handle<handle = 1, type = 1>` -> (1, 1).
pub fn channel_handle(s: &str) -> Result<(i64, i64), String> {
    let mut h = (None, None);
    for (name, value) in fields(s, "#stablehlo.channel_handle<")? {
        let v = value
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("'{s}': {name} '{value}' is not an integer"))?;
        match name.as_str() {
            "handle" => h.0 = Some(v),
            "type" => h.1 = Some(v),
            other => return Err(format!("'{s}': unknown channel_handle field {other}")),
        }
    }
    match h {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(format!("'{s}': expected handle and type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_jax_prints() {
        assert_eq!(i64_array("array<i64: 1, 0>").unwrap(), vec![1, 0]);
        assert_eq!(i64_array("array<i64>").unwrap(), Vec::<i64>::new());
        assert_eq!(integer("4 : i64").unwrap(), 4);
        let d = dot_dims("#stablehlo.dot<lhs_batching_dimensions = [0], rhs_batching_dimensions = [0], lhs_contracting_dimensions = [2], rhs_contracting_dimensions = [1]>").unwrap();
        assert_eq!(
            d,
            DotDims {
                lhs_batch: vec![0],
                rhs_batch: vec![0],
                lhs_contract: vec![2],
                rhs_contract: vec![1]
            }
        );
        let d = dot_dims("#stablehlo.dot<lhs_contracting_dimensions = [2, 1], rhs_contracting_dimensions = [1, 0]>").unwrap();
        assert_eq!((d.lhs_contract, d.rhs_contract), (vec![2, 1], vec![1, 0]));
        assert_eq!(
            enum_value(
                "#stablehlo<comparison_direction NE>",
                "comparison_direction"
            )
            .unwrap(),
            "NE"
        );
        assert_eq!(
            mesh("#sdy.mesh<[\"x\"=4]>").unwrap(),
            vec![("x".to_string(), 4)]
        );
        let sh = shardings("#sdy.sharding_per_value<[<@mesh, [{\"x\"}, {}]>, <@mesh, [{}, {}]>, <@mesh, [{\"x\"}, {}, {}]>]>").unwrap();
        assert_eq!(sh.len(), 3);
        assert_eq!(
            sh[0],
            Sharding {
                mesh: "mesh".into(),
                dims: vec![vec!["x".into()], vec![]]
            }
        );
        assert_eq!(sh[2].dims.len(), 3);
        assert_eq!(manual_axes("#sdy<manual_axes{\"x\"}>").unwrap(), vec!["x"]);
        assert_eq!(
            channel_handle("#stablehlo.channel_handle<handle = 1, type = 1>").unwrap(),
            (1, 1)
        );
        assert!(channel_handle("#stablehlo.channel_handle<handle = one, type = 1>").is_err());
        let sc = scatter_dims("#stablehlo.scatter<update_window_dims = [1], inserted_window_dims = [0], scatter_dims_to_operand_dims = [0], index_vector_dim = 1>").unwrap();
        assert_eq!(
            (
                sc.update_window,
                sc.inserted_window,
                sc.to_operand,
                sc.index_vector_dim,
                sc.batching
            ),
            (vec![1], vec![0], vec![0], 1, false)
        );
        let (m, axes) = replica_mesh_axes("#stablehlo.replica_group_mesh_axes<mesh = @mesh_0, axes = [#stablehlo.axis_ref<name = \"x\">]>").unwrap();
        assert_eq!((m.as_str(), axes), ("mesh_0", vec!["x".to_string()]));
    }

    #[test]
    fn malformed_attributes_are_refused_with_their_text() {
        assert!(dot_dims("#stablehlo.dot<lhs_contracting_dimensions = [1]>")
            .unwrap_err()
            .contains("different numbers"));
        assert!(dot_dims(
            "#stablehlo.dot<lhs_contracting_dimensions = [x], rhs_contracting_dimensions = [0]>"
        )
        .unwrap_err()
        .contains("'x' is not an integer"));
        assert!(i64_array("dense<1>")
            .unwrap_err()
            .contains("expected array<i64"));
        assert!(mesh("#sdy.mesh<[\"x\"=four]>")
            .unwrap_err()
            .contains("not an integer"));
        assert!(enum_value("#stablehlo<comparison_type FLOAT>", "comparison_direction").is_err());
    }
}
