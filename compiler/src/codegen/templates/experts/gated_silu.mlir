        %one = arith.constant 1.0 : f32
        %den = arith.addf %one, %ee : f32
        %rden = llvm.call_intrinsic "llvm.nvvm.rcp.approx.ftz.f"(%den) : (f32) -> f32
        %gate = arith.mulf {{gl}}, %rden : f32
