        %inv = arith.constant {{inverse_two_pi}} : f32
        %half = arith.constant 0.5 : f32
        %q = arith.mulf %x, %inv : f32
        %qh = arith.addf %q, %half : f32
        %k = llvm.call_intrinsic "llvm.nvvm.floor.f"(%qh) : (f32) -> f32
