        %mx = arith.maximumf {{mx}}, {{mx}} : f32
        %psum = scf.for %j = %lane to %e step %c32 iter_args(%a = %zero) -> (f32) {
          %o = arith.addi %base, %j : index
          %v = memref.load %a0[%o] : {{m_l}}
          %d = arith.subf %v, %mx : f32
          %dm = arith.mulf %d, %l2e : f32
          %x = llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f"(%dm) : (f32) -> f32
          %na = arith.addf %a, %x : f32
          scf.yield %na : f32
        }
