          %nv = arith.negf %v : f32
          %nm = arith.mulf %nv, %l2e : f32
          %x = llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f"(%nm) : (f32) -> f32
          %dd = arith.addf %one, %x : f32
          %sc = arith.divf %one, %dd : f32
