        %tm = memref.load %a1[%obase] : {{m_k}}
        %ts = scf.for %s = %c0 to %k step %c1 iter_args(%a = %zero) -> (f32) {
          %so = arith.addi %obase, %s : index
          %v = memref.load %a1[%so] : {{m_k}}
          %d = arith.subf %v, %tm : f32
          %dm = arith.mulf %d, %l2e : f32
          %x = llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f"(%dm) : (f32) -> f32
          memref.store %x, %a1[%so] : {{m_k}}
          %na = arith.addf %a, %x : f32
          scf.yield %na : f32
        }
