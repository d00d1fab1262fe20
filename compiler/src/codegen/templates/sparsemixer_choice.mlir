        %{{p}}best:2 = scf.for %j = %c0 to %e step %c1 iter_args(%bv = %ninf, %bi = %c0) -> (f32, index) {
          %o = arith.addi %base, %j : index
          %v = memref.load %a0[%o] : {{m_l}}
          %other = arith.cmpi ne, %j, {{skip}} : index
          %over = arith.cmpf ogt, %v, %bv : f32
          %take = arith.andi %other, %over : i1
          %nbv = arith.select %take, %v, %bv : f32
          %nbi = arith.select %take, %j, %bi : index
          scf.yield %nbv, %nbi : f32, index
        }
        %{{p}}m = arith.addf %{{p}}best#0, %zero : f32
        %{{p}}i = arith.addi %{{p}}best#1, %c0 : index
        %{{p}}sum = scf.for %j = %c0 to %e step %c1 iter_args(%a = %zero) -> (f32) {
          %o = arith.addi %base, %j : index
          %v = memref.load %a0[%o] : {{m_l}}
          %other = arith.cmpi ne, %j, {{skip}} : index
          %nv = arith.negf %v : f32
          %av = arith.maximumf %v, %nv : f32
          %den = arith.maximumf %av, %{{p}}m : f32
          %gap = arith.subf %{{p}}m, %v : f32
          %rel = arith.divf %gap, %den : f32
          %far = arith.cmpf ogt, %rel, %thr : f32
          %near = arith.xori %far, %true : i1
          %keep = arith.andi %other, %near : i1
          %d = arith.subf %v, %{{p}}m : f32
          %dm = arith.mulf %d, %l2e : f32
          %x = llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f"(%dm) : (f32) -> f32
          %xk = arith.select %keep, %x, %zero : f32
          %na = arith.addf %a, %xk : f32
          scf.yield %na : f32
        }
