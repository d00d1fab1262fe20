        %hs{{m}}:2 = scf.execute_region -> (f32, f32) {
          %hm = arith.constant {{offset}} : index
          %j = arith.addi %lane, %hm : index
          %o = arith.addi %base, %j : index
          %v = memref.load %a0[%o] : {{m_l}}
{{score}}
          scf.yield %sc, %ch : f32, f32
        }
