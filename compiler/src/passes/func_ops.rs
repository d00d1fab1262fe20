//! What the passes over the module's ops share about its functions: the functions, each one's
//! body, the weight each argument binds (`core.weight`), its signature rewritten after its
//! arguments change, and new ops spliced in from their text.

use crate::core::read::{attribute_text, handle, op_name, result_name};
use melior::ir::attribute::{ArrayAttribute, Attribute, DictionaryAttribute, TypeAttribute};
use melior::ir::block::{BlockArgument, BlockLike, BlockRef};
use melior::ir::operation::{
    OperationLike, OperationMutLike, OperationRef, OperationRefMut, OperationResult,
};
use melior::ir::r#type::FunctionType;
use melior::ir::{RegionLike, RegionRef, Type, Value, ValueLike};
use melior::Context;

/// A block's ops, in order (collected first, so that the caller may move or erase them).
pub fn block_ops<'c, 'a>(block: BlockRef<'c, 'a>) -> Vec<OperationRef<'c, 'a>> {
    let mut out = Vec::new();
    let mut next = block.first_operation();
    while let Some(op) = next {
        next = op.next_in_block();
        out.push(op);
    }
    out
}

/// A region's blocks, in order.
pub fn region_blocks<'c, 'a>(region: RegionRef<'c, 'a>) -> Vec<BlockRef<'c, 'a>> {
    let mut out = Vec::new();
    let mut next = region.first_block();
    while let Some(block) = next {
        next = block.next_in_region();
        out.push(block);
    }
    out
}

/// The handles of every operand of `op` and of the ops in its regions.
pub fn operands_within<'a>(op: &'a OperationRef) -> Box<dyn Iterator<Item = usize> + 'a> {
    Box::new(operand_values_within(op).into_iter().map(handle))
}

/// Every operand of `op` and of the ops in its regions.
pub fn operand_values_within<'c, 'a>(op: &OperationRef<'c, 'a>) -> Vec<Value<'c, 'a>> {
    let mut values: Vec<Value> = op.operands().collect();
    for block in op.regions().flat_map(region_blocks) {
        for inner in block_ops(block) {
            values.extend(operand_values_within(&inner));
        }
    }
    values
}

/// The module operation's one block.
pub fn module_body<'c, 'a>(module: &OperationRef<'c, 'a>) -> Result<BlockRef<'c, 'a>, String> {
    module
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or_else(|| "the module has no body".to_string())
}

/// The module's own ops (its body's), in order.
pub fn module_ops<'c, 'a>(
    module: &OperationRef<'c, 'a>,
) -> Result<Vec<OperationRef<'c, 'a>>, String> {
    Ok(block_ops(module_body(module)?))
}

/// The module's own ops named `name`, in order.
pub fn top_level<'c, 'a>(
    module: &OperationRef<'c, 'a>,
    name: &str,
) -> Result<Vec<OperationRef<'c, 'a>>, String> {
    let mut ops = module_ops(module)?;
    ops.retain(|op| op_name(op) == name);
    Ok(ops)
}

/// The module's `func.func` ops, in order.
pub fn functions<'c, 'a>(
    module: &OperationRef<'c, 'a>,
) -> Result<Vec<OperationRef<'c, 'a>>, String> {
    top_level(module, "func.func")
}

/// A function's one block.
pub fn body<'c, 'a>(f: &OperationRef<'c, 'a>) -> Result<BlockRef<'c, 'a>, String> {
    f.region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or_else(|| "a func.func without a body".to_string())
}

/// The function's argument attributes, one per argument (none where it has none).
pub fn argument_attributes<'c>(f: &OperationRef<'c, '_>) -> Vec<Attribute<'c>> {
    dictionaries(f, "arg_attrs")
}

/// The name `v` reads back as: its op's location's, or its argument's input or weight name.
pub fn value_name(f: &OperationRef, v: Value) -> String {
    if OperationResult::try_from(v).is_ok() {
        return result_name(v).unwrap_or_default();
    }
    let Ok(arg) = BlockArgument::try_from(v) else {
        return String::new();
    };
    let attributes = argument_attributes(f);
    let dict = (attributes.get(arg.argument_number()))
        .and_then(|a| DictionaryAttribute::try_from(*a).ok());
    (["core.input", "core.weight"].iter())
        .find_map(|key| dict.and_then(|d| d.element_by_name(key)))
        .and_then(attribute_text)
        .unwrap_or_default()
}

/// The function's result attributes, one per result (none where it has none).
pub fn result_attributes<'c>(f: &OperationRef<'c, '_>) -> Vec<Attribute<'c>> {
    dictionaries(f, "res_attrs")
}

fn dictionaries<'c>(f: &OperationRef<'c, '_>, name: &str) -> Vec<Attribute<'c>> {
    f.attribute(name)
        .ok()
        .and_then(|a| ArrayAttribute::try_from(a).ok())
        .map(|a| (0..a.len()).filter_map(|k| a.element(k).ok()).collect())
        .unwrap_or_default()
}

/// The weight each argument binds (`core.weight = "name"`), none for the inputs.
pub fn weight_names(f: &OperationRef) -> Vec<Option<String>> {
    argument_attributes(f)
        .into_iter()
        .map(|a| {
            DictionaryAttribute::try_from(a)
                .ok()
                .and_then(|d| d.element_by_name("core.weight"))
                .and_then(crate::core::read::attribute_text)
        })
        .collect()
}

/// Sets the function's `function_type` to its block's argument types (as they now are) and its
/// results, and, where given, its argument attributes.
pub fn set_signature(
    context: &Context,
    f: &OperationRef,
    block: BlockRef,
    arg_attrs: Option<&[Attribute]>,
) -> Result<(), String> {
    let results: Vec<Type> = f
        .attribute("function_type")
        .ok()
        .and_then(|a| TypeAttribute::try_from(a).ok())
        .and_then(|t| FunctionType::try_from(t.value()).ok())
        .map(|t| {
            (0..t.result_count())
                .filter_map(|k| t.result(k).ok())
                .collect()
        })
        .ok_or("a func.func without its function_type")?;
    let inputs: Vec<Type> = (0..block.argument_count())
        .map(|k| block.argument(k).map(|a| a.r#type()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // SAFETY: the pass manager hands the pass this module; no other handle writes the op.
    let mut f = unsafe { OperationRefMut::from_raw(f.to_raw()) };
    let signature = FunctionType::new(context, &inputs, &results);
    f.set_attribute("function_type", TypeAttribute::new(signature.into()).into());
    if let Some(attrs) = arg_attrs {
        f.set_attribute("arg_attrs", ArrayAttribute::new(context, attrs).into());
    }
    Ok(())
}

/// Makes `f` return nothing: its return's operands, its results and their attributes dropped
/// (a pipeline stage before the last returns nothing; it sends).
pub fn drop_results(context: &Context, f: &OperationRef) -> Result<(), String> {
    let block = body(f)?;
    let ret = block.terminator().ok_or("a func.func without its return")?;
    // SAFETY: the caller owns the function; no other handle writes these ops.
    unsafe { OperationRefMut::from_raw(ret.to_raw()) }.set_operands(&[]);
    let inputs: Vec<Type> = (0..block.argument_count())
        .map(|k| block.argument(k).map(|a| a.r#type()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // SAFETY: as above.
    let mut f = unsafe { OperationRefMut::from_raw(f.to_raw()) };
    let signature = FunctionType::new(context, &inputs, &[]);
    f.set_attribute("function_type", TypeAttribute::new(signature.into()).into());
    let _ = f.remove_attribute("res_attrs");
    Ok(())
}

/// What `splice_function` moved in: the ops, in order, and the values its function returned.
pub struct Spliced<'c, 'a> {
    pub ops: Vec<OperationRef<'c, 'a>>,
    pub returned: Vec<Value<'c, 'a>>,
}

/// Parses `text`, a module whose first function is the new IR written over its arguments,
/// and moves that function's ops (but its return) before `before`, the uses of its arguments
/// replaced by `operands`. New ops are written as text because that is how MLIR's own tests
/// and tools write them, and the scratch module's verifier checks them before they move.
pub fn splice_function<'c, 'a>(
    context: &'c Context,
    text: &str,
    before: OperationRef<'c, 'a>,
    operands: &[Value<'c, 'a>],
) -> Result<Spliced<'c, 'a>, String> {
    let scratch = ppmoe_dialect::parse_verified(context, text)?;
    let scratch_op = scratch.as_operation();
    let f = (functions(&scratch_op)?.into_iter().next()).ok_or("the new IR has no function")?;
    let block = body(&f)?;
    if block.argument_count() != operands.len() {
        return Err(format!(
            "the new IR's function takes {} arguments, where {} operands are given",
            block.argument_count(),
            operands.len()
        ));
    }
    for (k, &operand) in operands.iter().enumerate() {
        let arg = block.argument(k).map_err(|e| e.to_string())?;
        if arg.r#type() != operand.r#type() {
            return Err(format!(
                "the new IR's argument {k} is {}, its operand {}",
                arg.r#type(),
                operand.r#type()
            ));
        }
        // SAFETY: both values are live; the scratch ops that used the argument move into
        // `before`'s block, where the operand is.
        unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(arg.to_raw(), operand.to_raw()) };
    }
    let mut moved = block_ops(block);
    let ret = (moved.pop())
        .filter(|r| op_name(r) == "func.return")
        .ok_or("the new IR's function does not end in its return")?;
    // SAFETY: each returned value is an operand or the result of an op moved below, so it
    // lives in `before`'s block.
    let returned = (ret.operands())
        .map(|v| unsafe { Value::from_raw(v.to_raw()) })
        .collect();
    let mut ops = Vec::with_capacity(moved.len());
    for op in moved {
        // SAFETY: the scratch module and `before`'s share the context; each op is moved once,
        // and used after only through the block it is moved to.
        let mut m = unsafe { OperationRefMut::from_raw(op.to_raw()) };
        m.move_before(before);
        // SAFETY: as above: the op now lives in `before`'s block.
        ops.push(unsafe { OperationRef::from_raw(op.to_raw()) });
    }
    Ok(Spliced { ops, returned })
}

/// Appends to `f` an argument of type `ty` that binds weight `name` (`core.weight`), after its
/// other arguments (ppmoe prints weights in the order they are made, so a weight a pass makes
/// comes last); `rank_piece`: marked as the rank's own piece of a dense TP split.
pub fn add_weight_argument<'c, 'a>(
    context: &'c Context,
    f: &OperationRef<'c, 'a>,
    block: BlockRef<'c, 'a>,
    ty: Type<'c>,
    (name, rank_piece): (&str, bool),
) -> Result<Value<'c, 'a>, String> {
    let arg = block.add_argument(ty, melior::ir::Location::unknown(context));
    let mut attrs = argument_attributes(f);
    let piece = if rank_piece {
        format!(", {}", crate::core::read::RANK_PIECE)
    } else {
        String::new()
    };
    let dict = format!(
        "{{core.weight = {}{piece}}}",
        ppmoe_frontend::onnx_stage::quote(name)
    );
    attrs.push(Attribute::parse(context, &dict).ok_or("the weight's attributes")?);
    set_signature(context, f, block, Some(&attrs))?;
    Ok(arg)
}

/// Replaces `op` by the ops of `text`'s function (see `splice_function`), written over
/// `operands`: `op`'s result is read from what the function returns, and `op` goes with what
/// only fed it (its destination, the destination's fill).
pub fn replace_op<'c, 'a>(
    context: &'c Context,
    op: OperationRef<'c, 'a>,
    text: &str,
    operands: &[Value<'c, 'a>],
) -> Result<(), String> {
    let spliced = splice_function(context, text, op, operands)?;
    let made = (spliced.returned.first()).ok_or("the new ops return nothing")?;
    let result = op.result(0).map_err(|e| e.to_string())?;
    // SAFETY: both values live in `op`'s function (the new one was just moved there).
    unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(result.to_raw(), made.to_raw()) };
    // SAFETY: the op has no uses left, and no handle to it or to an op it erases is used after.
    unsafe { super::dead_ops::erase_with_unused_producers(op.to_raw()) };
    Ok(())
}

/// A ranked tensor type of `dtype` and `shape`, as ppmoe prints it.
pub fn tensor_of<'c>(
    context: &'c Context,
    dtype: ppmoe_runtime::DType,
    shape: Vec<Option<usize>>,
) -> Result<Type<'c>, String> {
    let text = crate::core::print::tensor_type(&ppmoe_runtime::program::Buffer {
        name: String::new(),
        dtype,
        shape,
        kind: ppmoe_runtime::program::BufferKind::Weight,
    });
    Type::parse(context, &text).ok_or_else(|| format!("type {text} does not parse"))
}
