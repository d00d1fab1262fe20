          %d = arith.subf %v, %mx : f32
          %dm = arith.mulf %d, %l2e : f32
          %x = llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f"(%dm) : (f32) -> f32
          %sc = arith.divf %x, %sum : f32
