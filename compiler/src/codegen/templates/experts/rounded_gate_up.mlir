%{{o}}gu = llvm.inline_asm asm_dialect = att "cvt.rn.bf16x2.f32 $0, $1, $2;", "=r,f,f" {{u}}, {{g}} : (f32, f32) -> i32
%{{o}}s16 = arith.constant 16 : i32
%{{o}}glo = arith.shli %{{o}}gu, %{{o}}s16 : i32
%{{o}}gv = arith.bitcast %{{o}}glo : i32 to f32
%{{o}}hm = arith.constant -65536 : i32
%{{o}}uhi = arith.andi %{{o}}gu, %{{o}}hm : i32
%{{o}}uv = arith.bitcast %{{o}}uhi : i32 to f32
