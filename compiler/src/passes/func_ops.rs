//! What the passes over the module's ops share about its functions: the functions, each one's
//! body, the weight each argument binds (`core.weight`), and its signature rewritten after its
//! arguments change.

use crate::core::read::op_name;
use melior::ir::attribute::{ArrayAttribute, Attribute, DictionaryAttribute, TypeAttribute};
use melior::ir::block::{BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRef, OperationRefMut};
use melior::ir::r#type::FunctionType;
use melior::ir::{RegionLike, Type, ValueLike};
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
    f.attribute("arg_attrs")
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
